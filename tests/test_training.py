"""Training end to end in real Caffe on a miniature digits dataset: losses decrease, snapshots,
--resume, evaluation of the result, a NaN stop, the divergence loss's effect, and the
multi-process path with its CPU stand-in. Tiny nets: 32x32 crops, M=2, a few iterations."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

TINY_NET = ["--M", "2", "--embed-dim", "16", "--crop", "32", "--batch", "16",
            "--from-scratch", "--base-lr", "3e-4", "--eval-batch", "64"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Every 4th image of the bundled digits: train 0-4 (~225), test 5-9 (~225), 40x40."""
    from miniature import digits_lmdbs

    return digits_lmdbs(tmp_path_factory.mktemp("digits"))


def run_tool(tool, *args):
    return subprocess.run([sys.executable, str(REPO / "tools" / tool), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def history_rows(run_dir):
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_resume_and_evaluate(digits, tmp_path):
    run = tmp_path / "run"
    common = ["--run-dir", run, "--snapshot-every", 6, "--eval-every", 6, "--log-every", 3]
    done = run_tool("train.py", *common, "--train-lmdb", digits["train"], "--test-lmdb",
                    digits["test"], "--max-iter", 12, *TINY_NET)
    assert done.returncode == 0, done.stderr
    rows = history_rows(run)
    assert [int(r["iteration"]) for r in rows] == [0, 3, 6, 9, 12]
    assert float(rows[-1]["total_loss"]) < float(rows[1]["total_loss"])
    assert [r["recall@1"] != "" for r in rows] == [True, False, True, False, True]
    snapshots = sorted(p.name for p in (run / "snapshots").iterdir() if p.is_file())
    assert snapshots == ["best.caffemodel", "best.json", "iter_12.caffemodel",
                         "iter_12.solverstate", "iter_6.caffemodel", "iter_6.solverstate"]

    resumed = run_tool("train.py", "--run-dir", run, "--resume", "--max-iter", 15)
    assert resumed.returncode == 0, resumed.stderr
    after = history_rows(run)
    assert after[:5] == rows  # the first 12 iterations are not redone
    assert [int(r["iteration"]) for r in after[5:]] == [15]
    kept = sorted(p.name for p in (run / "snapshots").glob("iter_*"))
    assert kept == ["iter_12.caffemodel", "iter_12.solverstate", "iter_15.caffemodel",
                    "iter_15.solverstate"]  # the two newest

    features = tmp_path / "features.npz"
    evaluated = run_tool("eval_recall.py", "--deploy", run / "deploy.prototxt", "--weights",
                         run / "snapshots" / "iter_15.caffemodel", "--test-lmdb",
                         digits["test"], "--json", "--save-features", features)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert list(result["recall"]) == ["1", "2", "4", "8"]
    assert all(0 <= v <= 1 for v in result["recall"].values())
    assert len(result["learners"]) == 2
    # the same weights evaluated by the trainer at iteration 15
    final = json.loads((run / "recall.json").read_text())
    assert result["recall"] == pytest.approx(final["recall"], abs=1e-6)
    again = run_tool("eval_recall.py", "--features", features, "--json")
    assert json.loads(again.stdout)["recall"] == result["recall"]


def test_resume_draws_the_batches_of_an_uninterrupted_run(digits, tmp_path):
    """iter_size 2: a run resumed at iteration 3 has drawn 6 batches, not 3."""
    from abe.net import netgen
    from abe.train import training
    from abe.data.pair_layer import close_data_layers

    net = netgen.NetConfig(M=2, embed_dim=16, crop=32, batch=16, source=str(digits["train"]))
    solver = netgen.SolverConfig(base_lr=3e-4, lr_policy="fixed", iter_size=2)

    def settings(name, max_iter):
        return training.TrainSettings(run_dir=str(tmp_path / name), max_iter=max_iter,
                                      eval_every=0, snapshot_every=3,
                                      test_lmdbs=[str(digits["test"])])

    def step(trainer):
        losses = trainer.step()
        blobs = trainer.solver.net.blobs
        return losses, blobs["data"].data.copy(), blobs["label"].data.copy()

    training.prepare_run(settings("whole", 4), net_cfg=net, solver_cfg=solver)
    whole = training.Trainer(settings("whole", 4), progress=False)
    uninterrupted = [step(whole) for _ in range(4)]
    close_data_layers(whole.solver.net)

    training.prepare_run(settings("cut", 3), net_cfg=net, solver_cfg=solver)
    training.Trainer(settings("cut", 3), progress=False).run()
    training.prepare_run(settings("cut", 4), config_dir=tmp_path / "cut", resume=True)
    resumed = training.Trainer(settings("cut", 4), resume=True, progress=False)
    assert resumed.iteration == 3
    losses, data, label = step(resumed)
    close_data_layers(resumed.solver.net)
    assert (data == uninterrupted[3][1]).all() and (label == uninterrupted[3][2]).all()
    assert not (label == uninterrupted[0][2]).all()  # not the stream restarted at batch 0
    assert losses == pytest.approx(uninterrupted[3][0], rel=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_snapshot(digits, tmp_path):
    run = tmp_path / "run"
    done = run_tool("train.py", "--run-dir", run, "--train-lmdb", digits["train"],
                    "--test-lmdb", digits["test"], "--max-iter", 30, "--snapshot-every", 1,
                    "--eval-every", 100, *TINY_NET[:-4], "--base-lr", "1e30")
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()[-1]
    assert "is nan at iteration" in message or "is inf at iteration" in message
    stopped_at = int(message.split("at iteration ")[1].split(";")[0])
    kept = {p.name for p in (run / "snapshots").glob("iter_*.*")}
    assert kept == {f"iter_{i}.{ext}" for i in range(max(1, stopped_at - 2), stopped_at)
                    for ext in ("caffemodel", "solverstate")}  # the last two good ones


def self_pair_similarity(digits, run_dir, lambda_div):
    from abe.eval import evaluation, plots
    from abe.net import netgen
    from abe.train import training

    settings = training.TrainSettings(run_dir=str(run_dir), max_iter=20, eval_every=20,
                                      snapshot_every=20, test_lmdbs=[str(digits["test"])])
    net = netgen.NetConfig(M=2, embed_dim=16, crop=32, batch=16, lambda_div=lambda_div,
                           source=str(digits["train"]))
    training.prepare_run(settings, net_cfg=net,
                         solver_cfg=netgen.SolverConfig(base_lr=3e-4, lr_policy="fixed"))
    trainer = training.Trainer(settings, progress=False)
    trainer.run()
    features = evaluation.embed_test_set(trainer.test_net, settings.test_lmdbs, progress=False)
    return float(plots.self_pair_cosines(features["learners"])[0, 1].mean())


def test_divergence_loss_makes_learners_differ(digits, tmp_path):
    with_div = self_pair_similarity(digits, tmp_path / "div", 1.0)
    without = self_pair_similarity(digits, tmp_path / "nodiv", 0.0)
    # the loss asks ||B_0 - B_1||^2 >= 1, i.e. cosine <= 0.5 for unit vectors
    assert with_div < without
    assert with_div < 0.5


def test_one_process_per_gpu_with_a_cpu_stand_in(digits, tmp_path):
    from abe.net import netgen
    from abe.train import training

    settings = training.TrainSettings(run_dir=str(tmp_path / "run"), max_iter=2,
                                      eval_every=2, snapshot_every=2,
                                      test_lmdbs=[str(digits["test"])], gpus=[0, 1], cpu=True)
    net = netgen.NetConfig(M=2, embed_dim=16, crop=32, batch=8, source=str(digits["train"]))
    training.prepare_run(settings, net_cfg=net, solver_cfg=netgen.SolverConfig())
    seen = training.train_parallel(settings)
    assert [rank for rank, *_ in seen] == [0, 1]
    assert len({uid for _, uid, *_ in seen}) == 1  # one session id shared by all ranks
    assert [(solver_rank, count) for _, _, solver_rank, count, *_ in seen] == [(0, 2), (1, 2)]
    assert [(pass_batch, iter_size) for *_, pass_batch, iter_size in seen] == [(8, 1), (8, 1)]
    assert (tmp_path / "run" / "snapshots" / "iter_2.caffemodel").exists()  # rank 0's work


def test_bad_usage_is_one_line_with_status_2(tmp_path):
    for args in (["--run-dir", tmp_path, "--resume"],
                 ["--run-dir", tmp_path, "--train-lmdb", tmp_path / "missing",
                  "--test-lmdb", tmp_path],
                 ["--run-dir", tmp_path, "--gpus", "0,x"]):
        done = run_tool("train.py", *args)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_eval_recall_bad_input_is_one_line_with_status_2(tmp_path):
    not_features = tmp_path / "x.npz"
    np.savez(not_features, something=np.zeros(3))
    for args in (["--features", not_features], ["--features", tmp_path / "none.npz"],
                 ["--deploy", tmp_path / "d.prototxt"],
                 ["--deploy", not_features, "--weights", not_features, "--test-lmdb", tmp_path],
                 ["--features", not_features, "--ks", "0"]):
        done = run_tool("eval_recall.py", *args)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
