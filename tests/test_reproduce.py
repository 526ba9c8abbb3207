"""tools/reproduce.py: the paper's experiments expand to exactly its configurations; miniature
table2 and fig7c run end to end through train.sh on the digits (tiny nets, a few iterations)
with the paper's numbers beside ours; an interrupted experiment continues where it stopped."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from hostile import assert_one_line_error, assert_unchanged, run_entry, tree_digest

from abe.experiments import definitions, runs

TINY = ["--M", "2", "--embed-dim", "16", "--crop", "32", "--batch", "16", "--from-scratch",
        "--base-lr", "3e-4", "--eval-batch", "64"]

HEADS = "--arch heads --embed-dim 512 --lambda-div 0"
ABE = "--arch abe --lambda-div 1"
ABE8 = "--arch abe --M 8 --embed-dim 512"
PAPER = {
    "table1": [("heads1_512", "1-head^512", f"{HEADS} --M 1"),
               ("heads2_512", "2-heads^512", f"{HEADS} --M 2"),
               ("heads4_512", "4-heads^512", f"{HEADS} --M 4"),
               ("heads8_512", "8-heads^512", f"{HEADS} --M 8"),
               ("abe1_512", "ABE-1^512", f"{ABE} --M 1 --embed-dim 512"),
               ("abe2_512", "ABE-2^512", f"{ABE} --M 2 --embed-dim 512"),
               ("abe4_512", "ABE-4^512", f"{ABE} --M 4 --embed-dim 512"),
               ("abe8_512", "ABE-8^512", f"{ABE} --M 8 --embed-dim 512"),
               ("abe1_64", "ABE-1^64", f"{ABE} --M 1 --embed-dim 64"),
               ("abe2_128", "ABE-2^128", f"{ABE} --M 2 --embed-dim 128"),
               ("abe4_256", "ABE-4^256", f"{ABE} --M 4 --embed-dim 256")],
    "table2": [("abe8_512", "ABE-8^512 (with L_div)", f"{ABE8} --lambda-div 1"),
               ("abe8_512_nodiv", "ABE-8^512 without L_div", f"{ABE8} --lambda-div 0")],
    "table3": [("heads8_512", "8-heads^512", "--arch heads --M 8 --embed-dim 512 --lambda-div 0"),
               ("heads8_512_div", "8-heads^512 with L_div",
                "--arch heads --M 8 --embed-dim 512 --lambda-div 1")],
    "fig7a": [(f"att_depth{d}", f"attention depth {d}",
               f"{ABE8} --lambda-div 1 --branch pool3 --att-depth {d}") for d in range(1, 8)],
    "fig7b": [(f"branch_{b}", f"branch {b}", f"{ABE8} --lambda-div 1 --att-depth 5 --branch {b}")
              for b in ("pool2", "inception_3a", "pool3", "inception_4a", "inception_4b")],
    "fig7c": [(f"lambda_div{v}", f"lambda_div {v}", f"{ABE8} --lambda-div {v}")
              for v in ("0.1", "0.5", "1", "5", "10", "50", "100")],
    "table4": [(f"abe{m}_512", f"ABE-{m}^512", f"{ABE} --M {m} --embed-dim 512") for m in (2, 4, 8)]
    + [("abe8_384", "ABE-8^384", f"{ABE} --M 8 --embed-dim 384")],
    "table5": [(f"abe{m}_512_bbox", f"ABE-{m}^512 (boxes)", f"{ABE} --M {m} --embed-dim 512 --bbox")
               for m in (2, 4, 8)],
}


def test_experiments_expand_to_the_papers_configurations():
    experiments = definitions.load()
    assert set(experiments) == set(PAPER)
    for name, expected in PAPER.items():
        got = [(c.key, c.name, runs.group_options(definitions.flag_tokens(c.flags)))
               for c in experiments[name].configurations]
        assert got == [(k, n, runs.group_options(f.split())) for k, n, f in expected], name


def test_every_paper_number_belongs_to_a_configuration():
    """paper_results.json names only configurations that exist, for the experiment's dataset."""
    import json

    from abe.experiments import report

    paper = json.loads(report.PAPER_FILE.read_text())
    experiments = definitions.load()
    for name, experiment in experiments.items():
        keys = {c.key for c in experiment.configurations}
        assert experiment.paper_dataset in paper[name], name
        for dataset, rows in paper[name].items():
            assert set(rows) <= keys, (name, dataset, set(rows) - keys)
    assert paper["fig7c"]["cars"]["lambda_div1"] == {"recall": {"1": 85.23},
                                                     "approximate": ["recall"]}


def test_dry_run_prints_the_train_sh_commands():
    run = run_entry(["tools/reproduce.py", "fig7c", "--dataset", "cars", "--dry-run",
                     "--seeds", "0,3", "--out", f"pytest-dry-{os.getpid()}", "--gpus", "0,1"])
    assert run.returncode == 0, run.stderr
    commands = [line for line in run.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 14
    assert commands[3].split()[0] == f"ABE_RUNS={REPO / 'runs' / f'pytest-dry-{os.getpid()}'}"
    assert commands[3].split()[2:] == [
        "--dataset", "cars", "--name", "lambda_div0.5-seed3",
        "--arch", "abe", "--M", "8", "--embed-dim", "512", "--lambda-div", "0.5",
        "--gpus", "0,1", "--seed", "3"]
    assert not (REPO / "runs" / f"pytest-dry-{os.getpid()}").exists()


def test_a_resumed_run_is_given_only_what_a_resume_accepts():
    plan = runs.make_plan("table5", "cars", options=[
        "--max-iter", "9", "--gpus", "0,1", "--lmdb-dir", "L", "--base-lr", "1e-3", "--from-scratch"])
    first = plan.configurations[0]
    assert plan.command(first, 2, resume=True)[1:] == [
        "--dataset", "cars", "--name", "abe2_512_bbox-seed2", "--resume", "--bbox",
        "--gpus", "0,1", "--lmdb-dir", "L"]
    fresh = plan.command(first, 2, resume=False)
    assert fresh[-2:] == ["--seed", "2"] and {"--base-lr", "--from-scratch", "--bbox"} <= set(fresh)


@pytest.mark.parametrize("args, fragments", [
    (["table1", "--M", "2"], ["table1 varies --M", "--only"]),
    (["table2", "--seed", "1"], ["--seed", "--seeds"]),
    (["table2", "--only", "abe8_512,abe9"], ["no configuration 'abe9'"]),
    (["table5"], ["table5 needs --dataset cub or cars"]),
    (["table9"], ["unknown experiment 'table9'"]),
])
def test_bad_requests_are_one_line(args, fragments):
    run = run_entry(["tools/reproduce.py", *args[:1], "--dataset", "digits", "--dry-run",
                     *args[1:]])
    assert_one_line_error(run, 2, *fragments)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """DATA for train.sh: a quarter of the digits already in DATA/lmdb/digits/."""
    from miniature import digits_lmdbs

    root = tmp_path_factory.mktemp("data")
    digits_lmdbs(root / "lmdb" / "digits")
    return root


@pytest.fixture
def out(request):
    name = f"pytest-reproduce-{os.getpid()}-{request.node.name}"
    yield name
    import shutil

    shutil.rmtree(REPO / "runs" / name, ignore_errors=True)


def report_rows(folder):
    with open(folder / "report.csv", newline="") as f:
        return {row["configuration"]: row for row in csv.DictReader(f)}


def test_table2_miniature_end_to_end(data_dir, out):
    from abe.net.model_stats import model_stats

    args = ["tools/reproduce.py", "table2", "--dataset", "digits", "--out", out, *TINY,
            "--max-iter", "2", "--eval-every", "2"]
    env = {"ABE_DATA": str(data_dir)}
    run = run_entry(args, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = REPO / "runs" / out
    rows = report_rows(folder)
    assert list(rows) == ["abe8_512", "abe8_512_nodiv"]
    assert [rows[k]["paper_recall@1"] for k in rows] == ["85.2", "69.7"]
    assert [rows[k]["paper_ind_recall@1"] for k in rows] == ["75.0", "69.5"]
    assert all(rows[k]["paper_dataset"] == "cars" and rows[k]["status"] == "done" for k in rows)
    for key, row in rows.items():
        stats = model_stats(folder / f"{key}-seed0" / "deploy.prototxt")
        assert (int(row["params"]), int(row["macs"])) == (stats.params, stats.macs)
        assert 0 <= float(row["recall@1_pct"]) <= 100
        assert -1 <= float(row["self_pair"]) <= 1 and float(row["paper_self_pair"]) in (0, 1)
        assert float(row["ind_recall@1_sd_over_learners"]) >= 0
    report = (folder / "report.md").read_text()
    assert "**CARS-196** numbers (the paper has none for scikit-learn digits" in report
    assert "replacing the paper's --M, --embed-dim" in report
    assert report in run.stdout
    # a rerun skips both; other settings into the same folder are refused, nothing touched
    before = tree_digest(folder / "abe8_512-seed0")
    again = run_entry(args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished before, skipped") == 2
    changed = run_entry([*args[:-4], "--max-iter", "8", "--eval-every", "2"], env=env)
    assert_one_line_error(changed, 2, "holds runs made with other settings", "--out")
    assert_unchanged(before, folder / "abe8_512-seed0")


def newest_snapshot(run_dir):
    found = [int(p.stem.split("_")[1]) for p in (run_dir / "snapshots").glob("iter_*.solverstate")]
    return max(found) if found else None


def history(run_dir):
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_fig7c_interrupted_resumes_and_a_failed_run_does_not_stop_the_others(data_dir, out):
    folder = REPO / "runs" / out
    first, broken, second = (folder / f"{key}-seed0"
                             for key in ("lambda_div0.1", "lambda_div0.5", "lambda_div1"))
    args = [sys.executable, str(REPO / "tools" / "reproduce.py"), "fig7c", "--dataset", "digits",
            "--out", out, *TINY, "--max-iter", "6", "--eval-every", "2", "--snapshot-every", "2"]
    env = dict(os.environ, ABE_DATA=str(data_dir), GLOG_minloglevel="2")
    driver = subprocess.Popen([*args, "--only", "lambda_div0.1,lambda_div1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while newest_snapshot(second) is None:  # the second run is under way
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-3000:]
    assert stderr.splitlines()[-1] == "reproduce: error: interrupted"
    assert (first / "result.json").exists() and not (second / "result.json").exists()
    first_files = tree_digest(first)
    resumed_at = newest_snapshot(second)
    kept = [row for row in history(second) if int(row["iteration"]) <= resumed_at]

    broken.mkdir(parents=True)  # a damaged run between the two: reported, the others go on
    (broken / "config.json").write_text("{damaged")
    rerun = subprocess.run([*args, "--only", "lambda_div0.1,lambda_div0.5,lambda_div1"],
                           env=env, capture_output=True, text=True, timeout=600)
    lines = rerun.stderr.splitlines()
    assert rerun.returncode == 1, rerun.stderr[-3000:]
    assert lines[-1].startswith("reproduce: error: 1 of 3 runs failed (first: lambda_div0.5 seed 0")

    def position(text):
        return next(i for i, line in enumerate(lines) if text in line)

    assert (position("lambda_div0.1 seed 0: finished before, skipped")
            < position("lambda_div0.5 seed 0: FAILED") < position("lambda_div1 seed 0: resuming")
            < position("lambda_div1 seed 0: done"))
    assert_unchanged(first_files, first)  # not retrained
    assert history(second)[:len(kept)] == kept  # continued from its snapshot, not restarted
    assert int(history(second)[-1]["iteration"]) == 6

    rows = report_rows(folder)
    assert [rows[k]["paper_recall@1"] for k in rows] == [
        "84.05", "84.87", "85.23", "85.04", "84.97", "85.06", "84.95"]
    assert [rows[k]["status"] for k in rows][:4] == ["done", rows["lambda_div0.5"]["status"],
                                                   "done", "not run"]
    assert rows["lambda_div0.5"]["status"].startswith("FAILED seed 0: exit")
    report = (folder / "report.md").read_text()
    assert "| lambda_div 1 |" in report and "≈85.23" in report
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(folder / "fig7c.png").shape
    assert height > 200 and width > 300
