"""Hostile input to training: tools/train.py, train.sh and weights/fetch_googlenet.py, each run
as a user would (real Caffe, real LMDBs, a local HTTP server for the weights). Every refusal is
one line with its exit status, and the run folders, snapshots and weights that existed before
are still there, unchanged, with nothing new left under a final name.

The cases run concurrently (each in its own folder, from one tiny trained run), so the suite
costs about as much as its slowest case."""
import functools
import http.server
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from hostile import REPO, assert_one_line_error, run_entry, tree_digest

TINY = ["--M", "2", "--embed-dim", "16", "--crop", "32", "--batch", "16", "--eval-batch", "64",
        "--att-depth", "1"]
WEIGHTS = REPO / "weights"
NO_WEIGHTS = not (WEIGHTS / "bvlc_googlenet.caffemodel").exists()


@dataclass
class Case:
    """``args`` uses {run}, {copy}, {train}, {test}, {one_class}, {singletons}, {not_lmdb},
    {lmdbs}, {url}, {name}, {weights}; ``prepare`` damages the case's copy of the trained run."""
    args: list
    status: int
    fragments: tuple = ()
    prepare: object = None
    env: dict = field(default_factory=dict)
    touches_weights: bool = False  # may try to fetch into the repo's weights/
    check: object = None  # status 0: check(proc, base, before) of a run that goes on
    watch_original: bool = False  # also checksum the trained run the case's copy came from


def truncate(path, keep=0.5):
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * keep)])


def damage_newest(run):
    truncate(run / "snapshots" / "iter_4.caffemodel")


def damage_both(run):
    (run / "snapshots" / "iter_4.caffemodel").write_bytes(b"")
    truncate(run / "snapshots" / "iter_2.solverstate", 0.9)


def garble_config(run):
    (run / "config.json").write_text("{not json")


FRESH = ["tools/train.py", "--run-dir", "{run}", "--train-lmdb", "{train}", "--test-lmdb", "{test}",
         "--from-scratch", "--max-iter", "2", "--eval-every", "2", "--dataset", "digits", *TINY]
RESUME = ["tools/train.py", "--run-dir", "{copy}", "--resume"]
TRAIN_SH = ["train.sh", "--dataset", "digits", "--lmdb-dir", "{lmdbs}", "--name", "{name}"]

CASES = {
    # numbers that must not silently become a default or reach a config file
    "max-iter-0": Case(FRESH + ["--max-iter", "0"], 2, ("--max-iter",)),
    "max-iter-negative": Case(FRESH + ["--max-iter", "-3"], 2, ("--max-iter",)),
    "base-lr-nan": Case(FRESH + ["--base-lr", "nan"], 2, ("--base-lr", "finite")),
    "base-lr-inf": Case(FRESH + ["--base-lr", "inf"], 2, ("--base-lr",)),
    "base-lr-negative": Case(FRESH + ["--base-lr", "-1e-4"], 2, ("--base-lr",)),
    "base-lr-zero": Case(FRESH + ["--base-lr", "0"], 2, ("--base-lr",)),
    "weight-decay-negative": Case(FRESH + ["--weight-decay", "-1"], 2, ("--weight-decay",)),
    "gamma-zero": Case(FRESH + ["--gamma", "0"], 2, ("--gamma",)),
    "lambda-div-inf": Case(FRESH + ["--lambda-div", "inf"], 2, ("--lambda-div",)),
    "lr-mult-nan": Case(FRESH + ["--lr-mult-new", "nan"], 2, ("--lr-mult-new",)),
    "stepsize-zero": Case(FRESH + ["--stepsize", "0"], 2, ("--stepsize",)),
    "eval-every-zero": Case(FRESH + ["--eval-every", "0"], 2, ("--eval-every",)),
    "snapshot-every-text": Case(FRESH + ["--snapshot-every", "often"], 2, ("--snapshot-every",)),
    "ks-zero": Case(FRESH + ["--ks", "1", "0"], 2, ("--ks",)),
    "seed-negative": Case(FRESH + ["--seed", "-1"], 2, ("--seed",)),
    "M-zero": Case(FRESH + ["--M", "0"], 2, ("--M",)),
    "crop-not-multiple-of-32": Case(FRESH + ["--crop", "40"], 2, ("crop",)),
    "odd-batch": Case(FRESH + ["--batch", "15"], 2, ("batch",)),
    # the global batch over GPUs and passes, pairs whole; the memory plan's device size
    "batch-over-3-gpus": Case(FRESH + ["--gpus", "0,1,2", "--cpu"], 2, ("over 3 GPUs",)),
    "iter-size-splits-pairs": Case(FRESH + ["--iter-size", "3"], 2, ("--iter-size 3",)),
    "iter-size-zero": Case(FRESH + ["--iter-size", "0"], 2, ("--iter-size",)),
    "device-mem-text": Case(FRESH + ["--device-mem", "lots"], 2, ("not a size",)),
    "device-mem-too-small": Case(FRESH + ["--device-mem", "1M"], 2, ("even at one pair",)),
    "resume-changes-iter-size": Case(RESUME + ["--iter-size", "2"], 2, ("--iter-size",)),
    # what Caffe would abort on, pre-checked
    "gpu-on-cpu-build": Case(FRESH + ["--gpus", "0"], 2, ("CPU-only",)),
    "crop-larger-than-images": Case(FRESH + ["--crop", "64"], 2, ("crop 64", "40")),
    "train-not-an-lmdb": Case(FRESH + ["--train-lmdb", "{not_lmdb}"], 2, ("LMDB",)),
    "train-garbage-lmdb": Case(FRESH + ["--train-lmdb", "{garbage_lmdb}"], 2, ("garbage",)),
    "test-not-an-lmdb": Case(FRESH + ["--test-lmdb", "{not_lmdb}"], 2, ("LMDB",)),
    "train-one-class": Case(FRESH + ["--train-lmdb", "{one_class}"], 2, ("one class",)),
    "train-no-positive-pair": Case(FRESH + ["--train-lmdb", "{singletons}"], 2, ("two or more",)),
    "init-weights-not-caffemodel": Case(FRESH[:7] + ["--init-weights", "{test}/index.tsv"]
                                        + FRESH[8:], 2, ("index.tsv",)),
    # run folders
    "fresh-over-existing-run": Case(FRESH[:2] + ["{copy}"] + FRESH[3:], 2,
                                    ("already holds a run", "--resume", "--start-over")),
    "resume-max-iter-negative": Case(RESUME + ["--max-iter", "-5"], 2, ("--max-iter",)),
    "resume-max-iter-behind": Case(RESUME + ["--max-iter", "3"], 2, ("--max-iter 3", "(4)")),
    "resume-changes-the-net": Case(RESUME + ["--base-lr", "0.1"], 2, ("--base-lr",)),
    "resume-gpu-on-cpu-build": Case(RESUME + ["--gpus", "0"], 2, ("CPU-only",)),
    "resume-no-run": Case(["tools/train.py", "--run-dir", "{run}", "--resume"], 2, ("no run",)),
    "resume-garbled-config": Case(RESUME, 2, ("config.json",), prepare=garble_config),
    "resume-both-snapshots-damaged": Case(RESUME + ["--max-iter", "6"], 2,
                                          ("no snapshot", "iteration 4", "iteration 2"),
                                          prepare=damage_both),
    "resume-and-start-over": Case(RESUME + ["--start-over"], 2, ("--start-over",)),
    # train.sh
    "sh-size-not-a-number": Case(TRAIN_SH + ["--size", "big"], 2, ("--size",)),
    "sh-name-with-slash": Case(["train.sh", "--dataset", "digits", "--name", "../x"], 2, ("--name",)),
    "sh-resume-without-name": Case(["train.sh", "--dataset", "digits", "--resume"], 2, ("--name",)),
    "sh-resume-from-scratch": Case(TRAIN_SH + ["--resume", "--from-scratch"], 2, ("--from-scratch",)),
    "sh-existing-run": Case(TRAIN_SH[:-1] + ["{copy_name}", "--from-scratch"], 2,
                            ("already holds a run", "--resume", "--start-over")),
    "sh-gpu-on-cpu-build": Case(TRAIN_SH + ["--from-scratch", "--gpus", "0", *TINY], 2,
                                ("CPU-only",)),
    "sh-benchmark-without-weights": Case(
        ["train.sh", "--dataset", "cub", "--name", "{name}", "--lmdb-dir", "{lmdbs}"], 1,
        ("ImageNet weights", "--from-scratch", "sha1 mismatch"), env={"ABE_GOOGLENET_URLS": "{url}"},
        touches_weights=True),
    # weights/fetch_googlenet.py
    "fetch-offline": Case(["weights/fetch_googlenet.py", "--out", "{weights}/g.caffemodel",
                           "--url", "http://127.0.0.1:9/a", "--url", "http://127.0.0.1:9/b"], 1,
                          ("no network", "127.0.0.1:9/a", "127.0.0.1:9/b")),
    "fetch-wrong-bytes": Case(["weights/fetch_googlenet.py", "--out", "{weights}/g.caffemodel",
                               "--url", "{url}"], 1, ("sha1 mismatch",)),
    "fetch-existing-other-file": Case(["weights/fetch_googlenet.py", "--out", "{weights}/kept",
                                       "--url", "{url}"], 2, ("sha1",)),
    "fetch-out-is-a-folder": Case(["weights/fetch_googlenet.py", "--out", "{weights}",
                                   "--url", "{url}"], 2, ("directory",)),
    "fetch-bad-url": Case(["weights/fetch_googlenet.py", "--out", "{weights}/g.caffemodel",
                           "--url", "nowhere"], 1, ("nowhere",)),
}
if not NO_WEIGHTS:  # the refusals below are about a machine without the ImageNet weights
    del CASES["sh-benchmark-without-weights"]
else:
    CASES["benchmark-without-weights"] = Case(
        ["tools/train.py", "--run-dir", "{run}", "--train-lmdb", "{train}", "--test-lmdb", "{test}",
         "--max-iter", "2", "--dataset", "cub", *TINY], 2,
        ("ImageNet weights", "fetch_googlenet", "--from-scratch"), touches_weights=True)


def build_lmdb(root, name, records):
    from abe.data.prepare import build_split

    build_split(records, root / name, name=name, size=40, workers=1, progress=False)
    return root / name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny digits LMDBs (and broken ones), a trained run with snapshots at 2 and 4, a local
    server of wrong weights."""
    from abe.data import datasets
    from abe.data.digits import export_digits

    root = tmp_path_factory.mktemp("hostile_train")
    splits = datasets.load("folder", export_digits(root / "png"))
    lmdbs = root / "lmdbs"
    lmdbs.mkdir()
    train = build_lmdb(lmdbs, "train_lmdb", splits["train"][::4])
    test = build_lmdb(lmdbs, "test_lmdb", splits["test"][::4])
    first = splits["train"][0].label
    one_class = build_lmdb(root, "one_class", [r for r in splits["train"] if r.label == first][:20])
    seen, singles = set(), []
    for record in splits["train"]:
        if record.label not in seen:
            seen.add(record.label)
            singles.append(record)
    singletons = build_lmdb(root, "singletons", singles)
    (root / "not_lmdb").mkdir()
    (root / "not_lmdb" / "images.txt").write_text("1 a.jpg\n")
    (root / "garbage_lmdb").mkdir()
    (root / "garbage_lmdb" / "data.mdb").write_bytes(b"garbage" * 1000)
    run = root / "trained"
    done = run_entry(["tools/train.py", "--run-dir", run, "--train-lmdb", train, "--test-lmdb",
                      test, "--from-scratch", "--dataset", "digits", "--max-iter", "4",
                      "--snapshot-every", "2", "--eval-every", "2", "--log-every", "2", *TINY])
    assert done.returncode == 0, done.stderr[-3000:]
    served = root / "served"
    served.mkdir()
    (served / "bvlc_googlenet.caffemodel").write_bytes(b"not the ImageNet GoogLeNet")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield dict(root=root, train=train, test=test, lmdbs=lmdbs, one_class=one_class,
               singletons=singletons, not_lmdb=root / "not_lmdb",
               garbage_lmdb=root / "garbage_lmdb", trained=run,
               url=f"http://127.0.0.1:{httpd.server_address[1]}/bvlc_googlenet.caffemodel")
    httpd.shutdown()


def copy_run(source, target):
    """``cp -a``: the copy keeps the original's absolute paths in what it holds."""
    shutil.copytree(source, target, symlinks=True)
    return target


def place(world, case_id, case):
    """The case's own folder: fresh names, a copy of the trained run, weights; its arguments."""
    base = world["root"] / "cases" / case_id
    base.mkdir(parents=True)
    copy = base / "copy"
    if "{copy}" in " ".join(case.args):  # a copy of the trained run, only where one is used
        copy_run(world["trained"], copy)
    if case.prepare:
        case.prepare(copy)
    weights = base / "weights"
    weights.mkdir()
    (weights / "kept").write_bytes(b"someone's file")
    name = f"pytest-hostile-{os.getpid()}-{case_id}"
    copy_name = name + "-copy"
    if "{copy_name}" in case.args:
        copy_run(world["trained"], REPO / "runs" / copy_name)
    values = dict(world, run=base / "run", copy=copy, weights=weights, name=name,
                  copy_name=copy_name)
    fill = lambda text: str(text).format(**values)  # noqa: E731
    return base, [fill(a) for a in case.args], {k: fill(v) for k, v in case.env.items()}, \
        [REPO / "runs" / name, REPO / "runs" / copy_name]


def run_case(world, case_id, case):
    base, args, env, repo_runs = place(world, case_id, case)
    watched = {"case": base}
    if case.watch_original:
        watched["trained"] = world["trained"]
    if case.touches_weights:  # others would see its temporary download come and go
        watched["weights"] = WEIGHTS
    watched.update({str(p): p for p in repo_runs if p.exists()})
    before = {k: tree_digest(p) for k, p in watched.items()}
    try:
        proc = run_entry(args, env=env)
        after = {k: tree_digest(p) for k, p in watched.items()}
        made = [p for p in repo_runs if str(p) not in watched and p.exists()]
    finally:
        for path in repo_runs:
            shutil.rmtree(path, ignore_errors=True)
    return proc, before, after, made


def history_iterations(run):
    import csv

    with open(run / "history.csv", newline="") as f:
        return [int(row["iteration"]) for row in csv.DictReader(f)]


def snapshot_names(run):
    return sorted(p.name for p in (run / "snapshots").glob("iter_*"))


def under(digest, folder):
    return {k[len(folder) + 1:]: v for k, v in digest.items() if k.startswith(folder + "/")}


def copy_resumed(proc, base, before):
    """cp -a runs/a runs/b; resume runs/b: a is untouched (watched), b goes on from its snapshot."""
    copy = base / "copy"
    assert history_iterations(copy) == [0, 2, 4, 6]
    assert snapshot_names(copy) == ["iter_4.caffemodel", "iter_4.solverstate",
                                    "iter_6.caffemodel", "iter_6.solverstate"]
    assert "run_dir" not in (copy / "config.json").read_text()
    assert "trained" not in (copy / "solver.prototxt").read_text()


def resumed_from_the_older(proc, base, before):
    told = [line for line in proc.stderr.splitlines() if "damaged" in line]
    assert len(told) == 1 and "iteration 4" in told[0] and "resuming from iteration 2" in told[0]
    run = base / "copy"
    assert history_iterations(run) == [0, 2, 4, 6]  # 4 redone from 2, the rows after 2 replaced
    assert snapshot_names(run) == ["iter_4.caffemodel", "iter_4.solverstate",
                                   "iter_6.caffemodel", "iter_6.solverstate"]


def moved_aside(proc, base, before):
    assert tree_digest(base / "copy.previous-1") == under(before["case"], "copy")
    assert history_iterations(base / "copy") == [0, 2]
    assert any(f"moved the previous run to {base / 'copy.previous-1'}" in line
               for line in proc.stderr.splitlines())


GOES_ON = {
    "resume-a-copy": Case(RESUME + ["--max-iter", "6"], 0, check=copy_resumed,
                          watch_original=True),
    "resume-damaged-newest": Case(RESUME + ["--max-iter", "6"], 0, prepare=damage_newest,
                                  check=resumed_from_the_older),
    "start-over": Case(FRESH[:2] + ["{copy}", "--start-over"] + FRESH[3:], 0, check=moved_aside),
}


@pytest.fixture(scope="module")
def outcomes(world):
    """Every case at once (the machine's cores share the Caffe start-ups and the training)."""
    cases = {**CASES, **GOES_ON}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case_id: pool.submit(run_case, world, case_id, case)
                   for case_id, case in sorted(cases.items(), key=lambda c: c[1].status == 0,
                                               reverse=True)}  # the long ones first
        return {case_id: future.result() for case_id, future in futures.items()}


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_refused_in_one_line_and_nothing_lost(outcomes, case_id):
    case = CASES[case_id]
    proc, before, after, made = outcomes[case_id]
    assert_one_line_error(proc, case.status, *case.fragments)
    assert after == before  # nothing changed, lost, or added (no half-written file)
    assert not made, f"{made} written under runs/"


@pytest.mark.parametrize("case_id", sorted(GOES_ON))
def test_goes_on_without_losing_anything(outcomes, world, case_id):
    proc, before, after, made = outcomes[case_id]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(word in proc.stderr for word in ("Traceback", "Check failure"))
    assert after.get("trained") == before.get("trained")  # the run the copy came from
    GOES_ON[case_id].check(proc, world["root"] / "cases" / case_id, before)
