"""The paper's batch at any scale: the global batch split over ranks and micro-batches (same
gradient), seeds that drive the pair stream, the M-heads λ_div default, the no-sigmoid init rule.
Real Caffe, tiny nets (M 2, embed 16, crop 32)."""
import json

import numpy as np
import pytest
from google.protobuf import text_format

from abe.errors import UserError
from abe.net import memory_plan, netgen
from abe.net.model_stats import read_net
from abe.train import batching, training
from test_training import TINY_NET, digits, run_tool  # noqa: F401  (digits is a fixture)

TINY = dict(M=2, embed_dim=16, crop=32)


@pytest.mark.parametrize("ranks, iter_size, rank_batch, pass_batch", [
    (1, 1, 64, 64), (1, 4, 64, 16), (2, 1, 32, 32), (4, 1, 16, 16), (4, 2, 16, 8),
    (8, 1, 8, 8), (8, 4, 8, 2)])
def test_global_batch_split_over_ranks_and_passes(ranks, iter_size, rank_batch, pass_batch):
    layout = batching.BatchLayout(64, ranks, iter_size)
    assert (layout.rank_batch, layout.pass_batch) == (rank_batch, pass_batch)
    positives = [layout.positive_pairs(r, k) for r in range(ranks) for k in range(iter_size)]
    assert sum(positives) == 16  # half of the iteration's 32 pairs, whatever the split
    assert max(positives) - min(positives) <= 1


def test_odd_pairs_per_pass_still_half_positive_overall():
    layout = batching.BatchLayout(48, 8)  # 6 images = 3 pairs per rank
    assert [layout.positive_pairs(r, 0) for r in range(8)] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert batching.pass_batches(24) == [24, 12, 8, 6, 4, 2]


@pytest.mark.parametrize("batch, ranks, iter_size", [(64, 3, 1), (64, 64, 1), (64, 4, 3),
                                                     (63, 1, 1)])
def test_batches_that_split_pairs_are_refused(batch, ranks, iter_size):
    with pytest.raises(UserError):
        batching.BatchLayout(batch, ranks, iter_size)


def test_stand_in_ranks_run_their_share_and_say_so(digits, tmp_path):  # noqa: F811
    """--gpus 0,1,2,3 --cpu with batch 64: 16 images per rank; with a device memory that holds
    8 images per pass but not 16, train.py picks 8 and iter_size 2."""
    cfg = netgen.NetConfig(**TINY, source=str(digits["train"]))
    memory = memory_plan.NetMemory(netgen.train_net(cfg), netgen.deploy_net(cfg), eval_batch=64)
    device = (memory.plan(8).total + memory.plan(16).total) // 2
    run = tmp_path / "run"
    at = TINY_NET.index("--batch")
    tiny = TINY_NET[:at] + TINY_NET[at + 2:]
    done = run_tool("train.py", "--run-dir", run, "--train-lmdb", digits["train"],
                    "--test-lmdb", digits["test"], "--max-iter", 1, "--eval-every", 1,
                    "--gpus", "0,1,2,3", "--cpu", "--batch", 64, "--device-mem", device, *tiny)
    assert done.returncode == 0, done.stderr
    assert "batch 64 per iteration (4 GPU ranks x 16 images)" in done.stderr
    assert "chose 8 images per forward pass (iter_size 2)" in done.stderr
    for rank in range(4):
        assert f"rank {rank}: 8 images per forward pass, iter_size 2: 16 images per " \
               f"iteration" in done.stderr
    config = json.loads((run / "config.json").read_text())
    assert (config["batch"], config["gpus"], config["pass_batch"], config["iter_size"]) == \
        (64, [0, 1, 2, 3], 8, 2)
    params = training.pair_layer_params(read_net(run / "train.prototxt"))
    assert params["batch_pairs"] == 4 and params["positive_schedule"] == [[2, 2]] * 4

    refused = run_tool("train.py", "--run-dir", tmp_path / "other", "--train-lmdb",
                       digits["train"], "--test-lmdb", digits["test"], "--gpus", "0,1,2",
                       "--cpu", "--batch", 64, *tiny)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "over 3 GPUs" in refused.stderr
    assert not (tmp_path / "other").exists()


def input_net_solver(tmp_path, caffe, batch, iter_size):
    """An SGDSolver over the tiny ABE-2 net with Input data at ``batch`` images per pass; the
    update is -lr_mult x gradient (lr 1, no momentum, no weight decay)."""
    cfg = netgen.NetConfig(**TINY, batch=batch, data="input")
    net_path = tmp_path / f"train_{batch}.prototxt"
    net_path.write_text(text_format.MessageToString(netgen.train_net(cfg)))
    solver_path = tmp_path / f"solver_{batch}.prototxt"
    solver_path.write_text(f'net: "{net_path}"\nbase_lr: 1\nlr_policy: "fixed"\nmomentum: 0\n'
                           f'weight_decay: 0\niter_size: {iter_size}\nmax_iter: 1\n'
                           f'random_seed: 5\nsolver_mode: CPU\n')
    return caffe.SGDSolver(str(solver_path))


def test_micro_batches_give_the_whole_batch_gradient(caffe, tmp_path):
    """One iteration of batch 64 equals one of 4 passes of 16 (the same pairs), in real Caffe."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((64, 3, 32, 32)).astype(np.float32) * 50
    sim = (np.arange(32) < 16).astype(np.float32)

    whole = input_net_solver(tmp_path, caffe, 64, 1)
    parts = input_net_solver(tmp_path, caffe, 16, 4)
    before = {n: [b.data.copy() for b in blobs] for n, blobs in whole.net.params.items()}
    for name, blobs in parts.net.params.items():  # both start from the same weights
        for mine, theirs in zip(blobs, before[name]):
            mine.data[...] = theirs
    whole.net.blobs["data"].data[...] = images
    whole.net.blobs["sim"].data[...] = sim

    passes = []

    def next_micro_batch(layer):
        if layer != 0:
            return
        k = len(passes)
        pairs = slice(8 * k, 8 * k + 8)
        parts.net.blobs["data"].data[...] = np.concatenate([images[:32][pairs],
                                                            images[32:][pairs]])
        parts.net.blobs["sim"].data[...] = sim[pairs]
        passes.append(k)

    parts.net.before_forward(next_micro_batch)
    whole.step(1)
    parts.step(1)
    assert passes == [0, 1, 2, 3]
    assert whole.net.blobs["divergence_loss"].data != 0  # the divergence loss is in play
    compared = 0
    for name, blobs in whole.net.params.items():
        for index, (a, b) in enumerate(zip(blobs, parts.net.params[name])):
            step_whole = a.data - before[name][index]
            step_parts = b.data - before[name][index]
            scale = np.abs(step_whole).max()
            assert scale > 0, name
            np.testing.assert_allclose(step_parts, step_whole, rtol=1e-3, atol=2e-4 * scale,
                                       err_msg=name)
            compared += 1
    assert compared > 100


def pair_stream(caffe, tmp_path, digits, seed, rank=0, name="run", **layout):  # noqa: F811
    """The first two batches (data, label, sim) that rank ``rank`` of a prepared run draws
    (default: two stand-in GPUs, batch 32)."""
    from abe.data.pair_layer import close_data_layers

    layout = {"batch": 32, "gpus": [0, 1], **layout}
    settings = training.TrainSettings(run_dir=str(tmp_path / name), max_iter=1, seed=seed,
                                      test_lmdbs=[str(digits["test"])], cpu=True, **layout)
    training.prepare_run(settings, net_cfg=netgen.NetConfig(**TINY, batch=16,
                                                            source=str(digits["train"])),
                         solver_cfg=netgen.SolverConfig())
    caffe.set_solver_rank(rank)
    try:
        net = caffe.Net(str(tmp_path / name / "train.prototxt"), caffe.TRAIN)
    finally:
        caffe.set_solver_rank(0)
    batches = []
    for _ in range(2):
        net.forward(end="silence_label")
        batches.append(tuple(net.blobs[b].data.copy() for b in ("data", "label", "sim")))
    close_data_layers(net)
    return batches


def same(a, b):
    return all((x == y).all() for pa, pb in zip(a, b) for x, y in zip(pa, pb))


def test_seed_drives_the_pair_stream(caffe, tmp_path, digits):  # noqa: F811
    first = pair_stream(caffe, tmp_path, digits, seed=1, name="a")
    assert same(first, pair_stream(caffe, tmp_path, digits, seed=1, name="b"))
    assert not same(first, pair_stream(caffe, tmp_path, digits, seed=2, name="c"))
    assert first[0][0].shape[0] == 16
    assert not same(first, pair_stream(caffe, tmp_path, digits, seed=1, rank=1, name="d"))
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["seed"] == 2


def test_passes_with_odd_pairs_alternate_to_half_positive(caffe, tmp_path, digits):  # noqa: F811
    """Batch 12 in 2 passes of 3 pairs: 1 then 2 positive pairs, 3 of the 6 in all."""
    for (data, label, sim), positives in zip(pair_stream(caffe, tmp_path, digits, seed=0,
                                                         batch=12, gpus=[], iter_size=2),
                                             (1, 2)):
        assert data.shape[0] == 6 and list(sim) == [1] * positives + [0] * (3 - positives)
        assert ((label[:3] == label[3:]) == sim.astype(bool)).all()


def test_heads_train_without_divergence_unless_asked():
    def has_divergence(**kw):
        return any(x.name == "divergence_loss" for x in netgen.train_net(
            netgen.NetConfig(**TINY, **kw)).layer)

    assert has_divergence(arch="abe")
    assert not has_divergence(arch="heads")
    assert has_divergence(arch="heads", lambda_div=1.0)
    assert netgen.flags(netgen.NetConfig(arch="heads", lambda_div=1.0)) == \
        "--arch heads --lambda-div 1.0"


def test_no_sigmoid_attention_conv_keeps_its_xavier_init(caffe, tmp_path):
    cfg = netgen.NetConfig(**TINY, sigmoid=False, data="input")
    path = tmp_path / "train.prototxt"
    path.write_text(text_format.MessageToString(netgen.train_net(cfg)))
    net = caffe.Net(str(path), caffe.TRAIN)
    attention = net.params["learner0/attention"][0].data.copy()
    conv1 = net.params["conv1/7x7_s2"][0].data.copy()
    training.he_initialize(net, seed=0)
    assert (net.params["learner0/attention"][0].data == attention).all()
    assert not (net.params["conv1/7x7_s2"][0].data == conv1).all()
