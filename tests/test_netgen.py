"""The generated networks: committed files, BVLC parity, shapes at 224, behaviour of small nets."""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from google.protobuf import text_format

from abe.net import netgen
from abe.net.model_stats import read_net

GEN = [sys.executable, str(REPO / "tools" / "gen_prototxt.py")]


def build(caffe, tmp_path, proto, phase=None):
    path = tmp_path / f"{proto.name.replace('^', '_')}-{len(list(tmp_path.iterdir()))}.prototxt"
    path.write_text(text_format.MessageToString(proto))
    return caffe.Net(str(path), caffe.TEST if phase is None else phase)


def layers_by_name(net):
    return {layer.name: layer for layer in net.layer}


def test_committed_prototxt_match_the_generator(tmp_path):
    run = subprocess.run(GEN + ["--paper-configs", "--out", "prototxt"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    generated = sorted(p.relative_to(tmp_path) for p in (tmp_path / "prototxt").rglob("*.prototxt"))
    committed = sorted(p.relative_to(REPO) for p in (REPO / "prototxt").rglob("*.prototxt"))
    assert generated == committed
    assert len(committed) == 3 * len(netgen.PAPER_CONFIGS)
    for rel in committed:
        assert (tmp_path / rel).read_text() == (REPO / rel).read_text(), f"{rel} differs"


def bvlc_layers(caffe_prefix):
    """BVLC GoogLeNet deploy layers from conv1/7x7_s2 to pool5/7x7_s1."""
    bvlc = read_net(caffe_prefix / "models" / "bvlc_googlenet" / "deploy.prototxt").layer
    names = [layer.name for layer in bvlc]
    return bvlc[names.index("conv1/7x7_s2"):names.index("pool5/7x7_s1") + 1]


def without_wiring(layer):
    copy = type(layer)()
    copy.CopyFrom(layer)
    for field in ("name", "bottom", "top"):
        copy.ClearField(field)
    return copy


@pytest.mark.parametrize("kind", ["train", "deploy"])
def test_bvlc_layers_exist_with_bvlc_parameters(caffe_prefix, kind):
    ours = layers_by_name(read_net(REPO / "prototxt" / "abe8_512" / f"{kind}.prototxt"))
    reference = bvlc_layers(caffe_prefix)
    assert len(reference) > 100
    for layer in reference:
        assert layer.name in ours, f"{layer.name} missing"
        assert without_wiring(ours[layer.name]) == without_wiring(layer), layer.name


def test_attention_trunk_is_bvlc_4a_to_4e_renamed(caffe_prefix):
    ours = layers_by_name(read_net(REPO / "prototxt" / "abe8_512" / "deploy.prototxt"))
    copies = [n for n in ours if n.startswith("attention/")]
    bvlc = {layer.name: layer for layer in bvlc_layers(caffe_prefix)}
    assert {n.split("/")[1] for n in copies} == {f"inception_4{b}" for b in "abcde"}
    for name in copies:
        assert without_wiring(ours[name]) == without_wiring(bvlc[name[len("attention/"):]])


def test_committed_train_net_wiring():
    net = read_net(REPO / "prototxt" / "abe8_512" / "train.prototxt")
    layers = layers_by_name(net)
    data = layers["data"]
    assert (data.type, data.python_param.module, data.python_param.layer) == \
        ("Python", "abe.data.pair_layer", "PairDataLayer")
    assert list(data.top) == ["data", "label", "sim"]
    assert json.loads(data.python_param.param_str) == {
        "source": "data/train_lmdb", "batch_pairs": 32, "positive_pairs": 16, "crop": 224}
    for m in range(8):
        loss = layers[f"learner{m}/contrastive_loss"]
        assert loss.type == "ContrastiveLoss" and list(loss.loss_weight) == [1]
        assert list(loss.bottom) == [f"learner{m}/embedding_a", f"learner{m}/embedding_b", "sim"]
        assert loss.contrastive_loss_param.margin == 1
        assert loss.contrastive_loss_param.legacy_version
        assert layers[f"learner{m}/attention_conv"].param[0].lr_mult == 10
    div = layers["divergence_loss"]
    assert (div.python_param.module, div.python_param.layer) == ("abe.net.layers", "DivergenceLoss")
    assert list(div.bottom) == [f"learner{m}/embedding" for m in range(8)]
    assert list(div.loss_weight) == [1]
    nodiv = layers_by_name(read_net(REPO / "prototxt" / "abe8_512_nodiv" / "train.prototxt"))
    assert "divergence_loss" not in nodiv and "learner7/contrastive_loss" in nodiv


def test_abe8_shapes_at_224(caffe, tmp_path):
    """The paper's configuration, built (not run) at batch 2 to keep memory small."""
    cfg = netgen.NetConfig(batch=2, data="input")
    net = build(caffe, tmp_path, netgen.train_net(cfg), caffe.TRAIN)
    assert net.blobs["pool3/3x3_s2"].data.shape == (2, 480, 14, 14)
    assert net.blobs["attention/inception_4e/output"].data.shape == (2, 832, 14, 14)
    assert net.blobs["learner7/attention"].data.shape == (2, 480, 14, 14)
    assert net.blobs["learners/masked"].data.shape == (16, 480, 14, 14)
    assert net.blobs["inception_5b/output"].data.shape == (16, 1024, 7, 7)
    assert net.blobs["pool5/7x7_s1"].data.shape == (16, 1024, 1, 1)
    assert net.params["embed_fc"][0].data.shape == (64, 1024)
    assert net.params["learner3/attention_conv"][0].data.shape == (480, 832, 1, 1)
    assert net.blobs["learner0/embedding_a"].data.shape == (1, 64)
    assert set(net.outputs) == {f"learner{m}/contrastive_loss" for m in range(8)} | {
        "divergence_loss"}


def small(**options):
    return netgen.NetConfig(**{"batch": 4, "crop": 64, "data": "input", "M": 2,
                               "embed_dim": 16, **options})


def random_input(net, rng):
    net.blobs["data"].data[...] = rng.normal(scale=50, size=net.blobs["data"].data.shape)


def test_small_train_net_runs_forward_and_backward(caffe, tmp_path):
    net = build(caffe, tmp_path, netgen.train_net(small()), caffe.TRAIN)
    rng = np.random.default_rng(0)
    random_input(net, rng)
    net.blobs["sim"].data[...] = [1, 0]
    losses = net.forward()
    net.backward()
    assert set(losses) == {"learner0/contrastive_loss", "learner1/contrastive_loss",
                           "divergence_loss"}
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert float(losses["divergence_loss"]) > 0  # fresh learners are close: hinge active
    for name in ("learner0/attention_conv", "embed_fc", "inception_4a/1x1", "conv1/7x7_s2"):
        assert np.abs(net.params[name][0].diff).max() > 0, name


def test_deploy_outputs(caffe, tmp_path):
    net = build(caffe, tmp_path, netgen.deploy_net(small(M=4, embed_dim=32)))
    random_input(net, np.random.default_rng(1))
    out = net.forward()["embedding"]
    assert net.outputs == ["embedding"] and out.shape == (4, 32)
    learners = [net.blobs[f"learner{m}/embedding"].data for m in range(4)]
    assert np.array_equal(out, np.concatenate(learners, axis=1))
    assert np.allclose([np.linalg.norm(e, axis=1) for e in learners], 1, atol=1e-5)
    mask = net.blobs["learner2/attention"].data
    assert mask.shape == net.blobs["pool3/3x3_s2"].data.shape
    assert mask.min() > 0 and mask.max() < 1


def test_g_towers_compute_the_same_as_g_on_the_batch(caffe, tmp_path):
    batch = build(caffe, tmp_path, netgen.deploy_net(small(M=3, embed_dim=24)))
    towers = build(caffe, tmp_path, netgen.deploy_net(small(M=3, embed_dim=24,
                                                            g_sharing="towers")))
    assert "learner2/inception_5b/1x1" in towers.params
    for name, blobs in batch.params.items():
        for i, blob in enumerate(blobs):
            towers.params[name][i].data[...] = blob.data
    # Tower 2's G shares tower 0's blobs, so the copy above reached it too.
    assert np.array_equal(towers.params["learner2/inception_4c/3x3"][0].data,
                          batch.params["inception_4c/3x3"][0].data)
    rng = np.random.default_rng(2)
    random_input(batch, rng)
    towers.blobs["data"].data[...] = batch.blobs["data"].data
    assert np.allclose(batch.forward()["embedding"], towers.forward()["embedding"], atol=1e-5)


def test_heads_have_private_g_and_fc(caffe, tmp_path):
    net = build(caffe, tmp_path, netgen.deploy_net(small(arch="heads", M=3, embed_dim=24)))
    assert not any("attention" in name for name in net.blobs)
    for m in range(3):
        assert f"learner{m}/inception_5b/pool_proj" in net.params
        assert net.params[f"learner{m}/embed_fc"][0].data.shape == (8, 1024)
    first, second = (net.params[f"learner{m}/inception_4a/1x1"][0].data for m in (0, 1))
    assert not np.shares_memory(first, second)
    assert net.blobs["learner1/inception_4a/1x1"].data.shape[1:] == (192, 4, 4)


@pytest.mark.parametrize("options,trunk_out,mask_channels", [
    (dict(att_depth=7), "attention/inception_5b/output", 480),
    (dict(att_depth=1, branch="pool2"), "attention/inception_3a/output", 192),
    (dict(att_depth=2, branch="inception_4b"), "attention/inception_4d/output", 512),
])
def test_attention_depth_and_branch(caffe, tmp_path, options, trunk_out, mask_channels):
    cfg = small(**options)
    net = build(caffe, tmp_path, netgen.deploy_net(cfg))
    blocks = {name.split("/")[1] for name in net.blobs if name.startswith("attention/")}
    assert len(blocks) == cfg.att_depth
    assert trunk_out in net.blobs
    mask = net.blobs["learner1/attention"].data
    assert mask.shape[1] == mask_channels
    assert net.blobs[trunk_out].data.shape[2:] == mask.shape[2:]  # no pooling in the trunk


def test_no_sigmoid_and_crop(caffe, tmp_path):
    proto = netgen.deploy_net(small(sigmoid=False, crop=96))
    assert not any(layer.type == "Sigmoid" for layer in proto.layer)
    assert layers_by_name(proto)["pool5/7x7_s1"].pooling_param.kernel_size == 3
    net = build(caffe, tmp_path, proto)
    assert net.blobs["learner0/attention"].data.shape == (4, 480, 6, 6)


def cli(*args, cwd=None):
    return subprocess.run(GEN + list(args), capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args", [
    ["--M", "3"], ["--M", "0"], ["--branch", "conv2"], ["--att-depth", "8"],
    ["--att-depth", "6", "--branch", "inception_4b"], ["--crop", "100"], ["--batch", "3"],
    ["--M", "eight"],
])
def test_cli_rejects_bad_input_with_one_line(tmp_path, args):
    run = cli(*args, "--out", str(tmp_path / "out"))
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "error" in run.stderr
    assert not (tmp_path / "out").exists()


def test_cli_writes_and_refuses_non_empty_out(tmp_path):
    out = tmp_path / "abe2"
    run = cli("--M", "2", "--embed-dim", "128", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["deploy.prototxt", "solver.prototxt",
                                                     "train.prototxt"]
    solver = out / "solver.prototxt"
    assert f'net: "{out / "train.prototxt"}"' in solver.read_text()
    run = cli("--M", "4", "--out", str(out))
    assert run.returncode == 2 and "--force" in run.stderr
    assert "ABE-2^128" in (out / "deploy.prototxt").read_text()
    run = cli("--M", "4", "--base-lr", "0.001", "--iter-size", "4", "--lr-policy", "fixed",
              "--out", str(out), "--force")
    assert run.returncode == 0
    assert "ABE-4^512" in (out / "deploy.prototxt").read_text()
    text = solver.read_text()
    assert "base_lr: 0.001" in text and "iter_size: 4" in text and "momentum: 0.9" in text
    assert 'lr_policy: "fixed"' in text and "stepsize" not in text


def test_cli_as_the_design_card_shows_it(tmp_path):
    """`python tools/gen_prototxt.py --M 8`: no --out needed, and a second run keeps the files."""
    run = cli("--M", "8", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "runs" / "prototxt" / "abe8_512"
    assert "ABE-8^512" in (out / "deploy.prototxt").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["deploy.prototxt", "solver.prototxt",
                                                     "train.prototxt"]
    again = cli("--M", "8", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr


def test_cli_help_explains_every_option():
    run = cli("--help")
    assert run.returncode == 0
    for option in ("--arch", "--M", "--embed-dim", "--att-depth", "--branch", "--lambda-div",
                   "--no-sigmoid", "--batch", "--crop", "--data", "--out", "--force",
                   "--g-sharing", "--base-lr", "--lr-mult-new", "--weight-decay"):
        assert option in run.stdout
    assert "encourages diversity" in run.stdout and "branching point" in run.stdout
    assert "attention module" in run.stdout and "spatial feature extractor" in run.stdout
