"""Hostile input to data_prep/make_lmdb.py, run as a user would (a subprocess, real LMDBs, the
miniature official layouts of tests/miniature.py). Every run is limited to a 16 GiB address
space, as on a cluster login node (``ulimit -v``), which also keeps a regression that reads
/dev/zero from eating the machine's memory.

- Refused input: exit 2, one line on stderr, no traceback, nothing written, nothing changed.
- Skipped entries (paths out of the root, devices, FIFOs, folders, bombs, huge files): the
  build goes on and report.txt names each with its reason; nothing outside the root is read.
- A full disk: exit 1, one line, nothing under a final name, the earlier LMDBs untouched.
- Ctrl-C and SIGKILL: nothing under a final name, no worker left behind, a rerun rebuilds.
"""
import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from hostile import (assert_one_line_error, assert_same_tree, assert_unchanged, file_size_limit,
                     run_entry, tree_digest)
from miniature import MAKERS, bomb_png, image_bytes, photo_rgb

from abe.data.lmdb_store import iter_records, read_index

MAKE = "data_prep/make_lmdb.py"
ADDRESS_SPACE = 16 << 30  # ulimit -v 16777216


def limited_memory():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def make_lmdb(*args, preexec_fn=limited_memory, timeout=120):
    return run_entry([MAKE, *args], preexec_fn=preexec_fn, timeout=timeout)


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """One miniature download of each dataset, copied by each test that changes it."""
    base = tmp_path_factory.mktemp("templates")
    return {name: (make(base / name), base / name) for name, make in MAKERS.items()}


@pytest.fixture
def dataset(templates, tmp_path):
    """``dataset(name)`` -> (a fresh copy of the miniature's root, its Miniature record)."""
    def copy(name):
        mini, root = templates[name]
        shutil.copytree(root, tmp_path / name, symlinks=True)
        return tmp_path / name, mini
    return copy


def final_names(out):
    """What a build leaves under ``out`` besides the test's own files."""
    return sorted(p.name for p in Path(out).iterdir() if p.name != "keep.txt") if Path(out).exists() else []


def append_lines(path, *lines):
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


def edit_cars(root, **fields):
    """Rewrite cars_annos.mat with the first annotation's ``fields`` replaced."""
    variables = loadmat(str(root / "cars_annos.mat"))
    for field, value in fields.items():
        variables["annotations"][0, 0][field] = np.array([value])
    savemat(str(root / "cars_annos.mat"), {k: v for k, v in variables.items() if not k.startswith("__")})


def mat73(path):
    """The first bytes of a MATLAB v7.3 file: its 128-byte MAT header (version 0x0200) in a
    512-byte user block, then the HDF5 signature (the layout MATLAB's save -v7.3 writes)."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Sat Feb 28 19:34:55 2015 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM"
    path.write_bytes(header.ljust(512, b"\0") + b"\x89HDF\r\n\x1a\n" + b"\0" * 1024)


def cub_labels_line(root, text):
    append_lines(root / "images.txt", "9001 001.Black_footed_Albatross/extra.jpg")
    append_lines(root / "image_class_labels.txt", text)


# Each case: (dataset, change to its root, extra arguments, fragments of the one-line error).
REFUSED = {
    "cub class id not a number": ("cub", lambda r: cub_labels_line(r, "9001 abc"), [], ["line", "not a number"]),
    "cub class id out of range": ("cub", lambda r: cub_labels_line(r, "9001 201"), [], ["outside 1-200"]),
    "cub image id listed twice": ("cub", lambda r: append_lines(r / "images.txt", "1 002.x/y.jpg"), [],
                                  ["images.txt line", "listed twice"]),
    "cub images.txt binary": ("cub", lambda r: (r / "images.txt").write_bytes(bytes(range(256)) * 64), [],
                              ["images.txt", "binary"]),
    "cub images.txt with NUL bytes": ("cub", lambda r: (r / "images.txt").write_text("1 a\0b.jpg\n"), [],
                                      ["binary"]),
    "cub images.txt is /dev/zero": ("cub", lambda r: ((r / "images.txt").unlink(),
                                                      (r / "images.txt").symlink_to("/dev/zero")), [],
                                    ["images.txt", "not a regular file"]),
    "cub images.txt is a FIFO": ("cub", lambda r: ((r / "images.txt").unlink(), os.mkfifo(r / "images.txt")),
                                 [], ["images.txt", "not a regular file"]),
    "cub images.txt empty": ("cub", lambda r: (r / "images.txt").write_text(""), [], ["list no train images"]),
    "cub bbox not numeric": ("cub", lambda r: append_lines(r / "bounding_boxes.txt", "9001 1 2 x 4"),
                             ["--bbox"], ["bounding_boxes.txt line", "not numeric"]),
    "cub bbox nan": ("cub", lambda r: append_lines(r / "bounding_boxes.txt", "9001 1 2 nan 4"),
                     ["--bbox"], ["not finite"]),
    "cars_annos.mat text": ("cars", lambda r: (r / "cars_annos.mat").write_text("relative_im_path,class\n"),
                            [], ["cars_annos.mat", "not a MATLAB v5 file"]),
    "cars_annos.mat empty": ("cars", lambda r: (r / "cars_annos.mat").write_bytes(b""), [],
                             ["not a MATLAB v5 file"]),
    "cars_annos.mat truncated": ("cars", lambda r: (r / "cars_annos.mat").write_bytes(
        (r / "cars_annos.mat").read_bytes()[:1000]), [], ["cars_annos.mat", "truncated"]),
    "cars_annos.mat v7.3": ("cars", lambda r: mat73(r / "cars_annos.mat"), [], ["v7.3", "HDF5"]),
    "cars class not a number": ("cars", lambda r: edit_cars(r, **{"class": "x"}), [],
                                ["annotation 1", "not a number"]),
    "sop Ebay_train.txt binary": ("sop", lambda r: (r / "Ebay_train.txt").write_bytes(b"\xff\xfe" * 99), [],
                                  ["Ebay_train.txt", "binary"]),
    "inshop unknown status": ("inshop", lambda r: append_lines(r / "Eval" / "list_eval_partition.txt",
                                                               "img/x.jpg id_1 validation"),
                              [], ["evaluation_status"]),
    "root missing": ("cub", lambda r: shutil.rmtree(r), [], ["not a folder"]),
    "root is a file": ("cub", lambda r: (shutil.rmtree(r), r.write_text("x")), [], ["not a folder"]),
    "--size 100000": ("cub", None, ["--size", "100000"], ["--size", "8-2048"]),
    "--size 0": ("cub", None, ["--size", "0"], ["--size"]),
    "--size nan": ("cub", None, ["--size", "nan"], ["--size"]),
    "--quality 0": ("cub", None, ["--quality", "0"], ["--quality", "1-100"]),
    "--quality 101": ("cub", None, ["--quality", "101"], ["--quality"]),
    "--workers 0": ("cub", None, ["--workers", "0"], ["--workers"]),
    "--workers 100000": ("cub", None, ["--workers", "100000"], ["--workers"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_input_is_one_line_exit_2_and_writes_nothing(case, dataset, tmp_path):
    name, change, extra, fragments = REFUSED[case]
    root, _ = dataset(name)
    if change:
        change(root)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier file\n")
    before, root_before = tree_digest(out), tree_digest(root)
    proc = make_lmdb("--dataset", name, "--root", root, "--out", out, "--workers", "1", *extra)
    assert_one_line_error(proc, 2, *fragments)
    assert final_names(out) == []
    assert_same_tree(before, out)
    assert_unchanged(root_before, root)


def test_an_out_that_is_a_file_is_refused(dataset, tmp_path):
    root, _ = dataset("cub")
    (tmp_path / "out").write_text("mine\n")
    proc = make_lmdb("--dataset", "cub", "--root", root, "--out", tmp_path / "out")
    assert_one_line_error(proc, 2, "out")
    assert (tmp_path / "out").read_text() == "mine\n"


def test_a_root_without_images_is_refused_after_the_report(dataset, tmp_path):
    root, _ = dataset("cub")
    shutil.rmtree(root / "images")
    proc = make_lmdb("--dataset", "cub", "--root", root, "--out", tmp_path / "out", "--workers", "1")
    assert_one_line_error(proc, 2, "no image of the train split could be read", "report.failed.txt")
    assert final_names(tmp_path / "out") == ["report.failed.txt"]  # why, file by file; no empty LMDB
    assert "No such file or directory" in (tmp_path / "out" / "report.failed.txt").read_text()


def drop_file_permission_override():
    """Drop root's CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so that the
    exec'ed process obeys file permissions like any user; then the memory limit."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP
    limited_memory()


def test_an_unreadable_root_is_one_line(dataset, tmp_path):
    root, _ = dataset("cub")
    root.chmod(0)
    try:
        probe = subprocess.run(["ls", str(root)], capture_output=True,
                               preexec_fn=drop_file_permission_override)
        if probe.returncode == 0:
            pytest.skip("cannot drop root's permission override here: every folder is readable")
        proc = make_lmdb("--dataset", "cub", "--root", root, "--out", tmp_path / "out",
                         preexec_fn=drop_file_permission_override)
    finally:
        root.chmod(0o755)
    assert_one_line_error(proc, 2, "cannot read dataset root")
    assert final_names(tmp_path / "out") == []


# Entries that are skipped with their reason while the rest of the dataset is built. Each adds
# one image entry of training class 2 to a CUB copy: (the path in images.txt, how to place
# what it names, a fragment of the reason in report.txt).
def outside_photo(root):
    """A real photo next to the root, outside it: reading it would be a leak."""
    (root.parent / "outside.jpg").write_bytes(image_bytes("plain", photo_rgb(np.random.default_rng(0), 30, 20)))


def sparse_file(size):
    def place(path):
        with open(path, "wb") as f:
            f.truncate(size)
    return place


def symlink(target):
    def place(path):
        path.symlink_to(target)
    return place


SKIPPED = {
    "../ out of the root": ("../../outside.jpg", None, "leads out of it with '..'"),
    "absolute path": ("{outside}", None, "path is absolute"),
    "/dev/zero": ("/dev/zero", None, "path is absolute"),
    "symlink to /dev/zero": ("002.Laysan_Albatross/zero.jpg", symlink("/dev/zero"),
                             "not a regular file (a character device)"),
    "FIFO": ("002.Laysan_Albatross/fifo.jpg", os.mkfifo, "not a regular file (a FIFO)"),
    "folder": ("002.Laysan_Albatross/folder.jpg", os.mkdir, "not a regular file (a folder)"),
    "20000 x 20000 PNG bomb": ("002.Laysan_Albatross/bomb.png",
                               lambda p: p.write_bytes(bomb_png(20000, 20000)), "too large"),
    "10000 x 10000 PNG (Pillow's warning range)": ("002.Laysan_Albatross/big.png",
                                                   lambda p: p.write_bytes(bomb_png(10000, 10000)),
                                                   "too large"),
    "300 MB file": ("002.Laysan_Albatross/huge.jpg", sparse_file(300 << 20), "too large: 314,572,800 bytes"),
}


@pytest.fixture(scope="module")
def skipping_build(templates, tmp_path_factory):
    """One build of a CUB copy holding every entry of SKIPPED; (root, out, process, entries)."""
    base = tmp_path_factory.mktemp("skipping")
    root = base / "cub"
    shutil.copytree(templates["cub"][1], root)
    outside_photo(root)
    entries = {}
    for number, (case, (relative, place, _)) in enumerate(sorted(SKIPPED.items()), 9001):
        relative = relative.format(outside=root.parent / "outside.jpg")
        if place:
            place(root / "images" / relative)
        append_lines(root / "images.txt", f"{number} {relative}")
        append_lines(root / "image_class_labels.txt", f"{number} 2")
        entries[case] = relative
    # A symlinked images folder (a dataset on another disk) is inside the root and still read.
    shutil.move(root / "images", base / "other_disk")
    (root / "images").symlink_to(base / "other_disk")
    proc = make_lmdb("--dataset", "cub", "--root", root, "--out", base / "out", "--workers", "2",
                     timeout=120)
    return root, base / "out", proc, entries


@pytest.mark.parametrize("case", sorted(SKIPPED))
def test_hostile_entries_are_skipped_with_their_reason(case, skipping_build):
    root, out, proc, entries = skipping_build
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    relative = entries[case]
    reasons = [line.split("\t")[3] for line in (out / "report.txt").read_text().splitlines()
               if line.startswith("skipped\t") and line.split("\t")[2].endswith(relative)]
    assert len(reasons) == 1 and SKIPPED[case][2] in reasons[0], reasons


def test_the_rest_is_built_from_inside_the_root_only(skipping_build, templates):
    root, out, proc, _ = skipping_build
    mini = templates["cub"][0]
    for split in ("train", "test"):
        index = read_index(out / f"{split}_lmdb")
        assert len(index) == len(mini.expected[split]) == len(list(iter_records(out / f"{split}_lmdb")))
        for row in index:  # every path read is the root's, reached through its own images/ link
            assert Path(row["path"]).is_relative_to(root / "images"), row
            assert ".." not in Path(row["path"]).parts, row


def test_cars_paths_out_of_the_root_are_skipped(dataset, tmp_path):
    root, mini = dataset("cars")
    edit_cars(root, relative_im_path="../../outside.jpg")
    (tmp_path / "outside.jpg").write_bytes(image_bytes("plain", photo_rgb(np.random.default_rng(0), 30, 20)))
    proc = make_lmdb("--dataset", "cars", "--root", root, "--out", tmp_path / "out", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "out" / "report.txt").read_text()
    assert "../../outside.jpg\toutside the dataset root" in report
    index = read_index(tmp_path / "out" / "train_lmdb")
    assert len(index) == len(mini.expected["train"]) - 1  # the entry that was car_ims/000001.jpg
    assert all(".." not in row["path"] for row in index)


def test_builds_under_a_16_gib_address_space_limit_and_readers_open_it(dataset, tmp_path):
    root, mini = dataset("sop")
    proc = make_lmdb("--dataset", "sop", "--root", root, "--out", tmp_path / "out", "--workers", "2",
                     "--encoding", "raw")  # 192 KiB a record: the 10 MiB starting map grows
    assert proc.returncode == 0, proc.stderr
    for split in ("train", "test"):
        assert len(list(iter_records(tmp_path / "out" / f"{split}_lmdb"))) == len(mini.expected[split])


def tmpfs(path, size):
    """Mount a tmpfs of ``size`` at ``path``; False where this machine does not allow it."""
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def small_files_and_memory():
    """Where no tmpfs can be mounted: files may not grow past 1 MiB (EFBIG, SIGXFSZ ignored)."""
    file_size_limit(1 << 20)()
    limited_memory()


def test_a_full_disk_is_one_line_exit_1_and_keeps_what_was_there(dataset, tmp_path):
    root, _ = dataset("cub")
    disk = tmp_path / "disk"
    mounted = tmpfs(disk, "2m")
    try:
        out = disk / "out"
        out.mkdir()
        (out / "keep.txt").write_text("an earlier file\n")
        before = tree_digest(out)
        # Raw datums: ~4.5 MB for the miniature, more than the 2 MiB disk.
        proc = make_lmdb("--dataset", "cub", "--root", root, "--out", out, "--encoding", "raw",
                         "--workers", "1", preexec_fn=limited_memory if mounted else small_files_and_memory)
        assert_one_line_error(proc, 1, "cannot write", "lmdb.partial")
        assert final_names(out) == []
        assert_same_tree(before, out)
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


def slow_sop(root, entries=300):
    """A Stanford Online Products layout whose entries all name one 480 x 360 photo: a build
    long enough (~0.5 s) to be interrupted in the middle on any machine."""
    photo = root / "bicycle_final" / "111085122871_0.JPG"
    photo.parent.mkdir(parents=True)
    photo.write_bytes(image_bytes("plain", photo_rgb(np.random.default_rng(0), 480, 360)))
    header = "image_id class_id super_class_id path\n"
    for split, first_class in (("train", 1), ("test", 11319)):
        rows = [f"{i + 1} {first_class + i % 20} 1 bicycle_final/111085122871_0.JPG\n"
                for i in range(entries if split == "train" else 20)]
        (root / f"Ebay_{split}.txt").write_text(header + "".join(rows))
    return root


def process_tree():
    """{pid: (parent pid, state)} of every process on the machine."""
    tree = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        tree[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return tree


def descendants(pid):
    tree, found, frontier = process_tree(), [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, (ppid, _) in tree.items() if ppid == parent]
        found += children
        frontier += children
    return found


def alive(pid):
    state = process_tree().get(pid)
    return state is not None and state[1] != "Z"


def workers_of(pid):
    """The grandchildren of ``pid`` that finished their set-up (the fork server is its child,
    the workers the server's). A worker's set-up ends by ignoring SIGINT, which /proc shows."""
    tree = process_tree()
    return [p for p in descendants(pid) if p in tree and tree[p][0] != pid and ignores_sigint(p)]


def ignores_sigint(pid):
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ignored = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(ignored & (1 << (signal.SIGINT - 1)))


def start_build(root, out, workers=2):
    """make_lmdb in its own session, under the memory limit; returns once its workers run."""
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parents[1] / MAKE), "--dataset", "sop",
         "--root", str(root), "--out", str(out), "--workers", str(workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=limited_memory)
    deadline = time.time() + 60
    while time.time() < deadline:
        if len(workers_of(process.pid)) >= workers:
            return process
        time.sleep(0.01)
    process.kill()
    raise AssertionError("the workers never started")


def test_sigkill_leaves_no_worker_and_a_rerun_rebuilds(tmp_path):
    root = slow_sop(tmp_path / "sop")
    out = tmp_path / "killed"
    process = start_build(root, out)
    try:
        os.kill(process.pid, signal.SIGSTOP)  # hold the writer: the workers block on their pipes
        children = descendants(process.pid)
        os.kill(workers_of(process.pid)[0], signal.SIGSTOP)  # one that cannot run a line of Python any more
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.time() + 10
        while any(alive(p) for p in children) and time.time() < deadline:
            time.sleep(0.05)
        assert not [p for p in children if alive(p)], "processes outlived the killed make_lmdb"
    finally:
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert final_names(out) == ["train_lmdb.partial"]  # killed in the middle, nothing final
    assert make_lmdb("--dataset", "sop", "--root", root, "--out", out, "--workers", "1").returncode == 0
    assert make_lmdb("--dataset", "sop", "--root", root, "--out", tmp_path / "clean").returncode == 0
    for split in ("train", "test"):
        rerun = list(iter_records(out / f"{split}_lmdb"))
        assert rerun == list(iter_records(tmp_path / "clean" / f"{split}_lmdb"))
        assert len(rerun) == (300 if split == "train" else 20)
    assert final_names(out) == ["report.txt", "test_lmdb", "train_lmdb"]


def test_ctrl_c_is_one_line_and_keeps_the_earlier_lmdbs(tmp_path, dataset):
    root, _ = dataset("sop")
    out = tmp_path / "out"
    assert make_lmdb("--dataset", "sop", "--root", root, "--out", out).returncode == 0
    before = tree_digest(out)
    process = start_build(slow_sop(tmp_path / "slow"), out)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole group
    _, stderr = process.communicate(timeout=60)
    proc = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
    assert_one_line_error(proc, 130, "interrupted", "unfinished LMDBs removed")
    assert final_names(out) == ["report.txt", "test_lmdb", "train_lmdb"]
    assert_unchanged(before, out)
