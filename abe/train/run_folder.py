"""A run folder that protects itself.

Every path of a run is found relative to the folder as it is opened, so a copy (``cp -a``) is a
run of its own and resuming it never touches the original. A fresh run is refused in a folder
that already holds one; ``move_aside`` is the explicit way to start over, and it deletes nothing.
The two newest complete snapshots are kept, and a snapshot is read in Python (every learnable
blob of the net present at its shape, the solver state's history complete) before Caffe is
given it: Caffe aborts on a truncated file, or silently skips the layers a cut-short one lacks.
"""
import functools
import os
import re
from pathlib import Path

from abe.errors import UserError

SNAPSHOT = re.compile(r"^iter_(\d+)\.solverstate$")
PREVIOUS = "previous"  # RUN moved aside by --start-over: RUN.previous-1, RUN.previous-2, ...


class RunFiles:
    """The paths of one run folder."""

    def __init__(self, run_dir):
        self.root = Path(run_dir)
        self.snapshots = self.root / "snapshots"
        self.partial = self.snapshots / ".partial"
        self.train, self.deploy = self.root / "train.prototxt", self.root / "deploy.prototxt"
        self.solver, self.config = self.root / "solver.prototxt", self.root / "config.json"
        self.history = self.root / "history.csv"
        self.best_model, self.best_info = self.snapshots / "best.caffemodel", self.snapshots / "best.json"

    def snapshot(self, iteration, ext):
        return self.snapshots / f"iter_{iteration}.{ext}"

    def snapshot_iterations(self):
        """Iterations with both snapshot files under their final names, newest first."""
        found = []
        for path in self.snapshots.glob("iter_*.solverstate"):
            match = SNAPSHOT.match(path.name)
            if match and self.snapshot(int(match.group(1)), "caffemodel").exists():
                found.append(int(match.group(1)))
        return sorted(found, reverse=True)

    def run_marks(self):
        """The names of what shows that a run lives here (empty for a folder holding none)."""
        return [p.name for p in (self.config, self.history, self.snapshots) if p.exists()]


def aside_path(root):
    """The first free ``RUN.previous-N`` beside ``root``."""
    root = Path(root)
    number = 1
    while root.with_name(f"{root.name}.{PREVIOUS}-{number}").exists():
        number += 1
    return root.with_name(f"{root.name}.{PREVIOUS}-{number}")


def refuse_fresh_run(files):
    """A fresh run must not write into a folder holding a run (its snapshots, history, best model
    would be overwritten): one line naming the two ways on."""
    marks = files.run_marks()
    if marks:
        raise UserError(f"{files.root} already holds a run ({', '.join(marks)}): continue it with "
                        f"--resume, or pass --start-over to move it to "
                        f"{aside_path(files.root)} and start a new run here")


def move_aside(files):
    """Rename the run folder to ``RUN.previous-N`` (nothing is deleted); returns the new path."""
    target = aside_path(files.root)
    files.root.rename(target)
    return target


def stamp(path):
    """What changes when a file is rewritten: the cache key of the checks below."""
    info = Path(path).stat()
    return str(path), info.st_mtime_ns, info.st_size


@functools.lru_cache(maxsize=2)
def weights_of(train_stamp, scratch_dir):
    """(caffe.Net holding the learnable blobs of the train net whose ``stamp`` is given, built
    without its training LMDB; the shapes of its distinct blobs in Caffe's order)."""
    from abe.net.init_weights import weights_net

    net, _ = weights_net(train_stamp[0], scratch_dir)
    distinct, seen = [], set()
    for blobs in net.params.values():
        for blob in blobs:  # a blob shared by name appears under each layer using it
            address = blob.data.__array_interface__["data"][0]
            if address not in seen:
                seen.add(address)
                distinct.append(tuple(blob.data.shape))
    return net, distinct


@functools.lru_cache(maxsize=16)
def snapshot_problem(caffemodel_stamp, solverstate_stamp, iteration, train_stamp, scratch_dir):
    """Why a snapshot cannot be resumed from (one phrase), or None when it reads."""
    from caffe.proto import caffe_pb2

    from abe.net.checks import blob_shape, check_weights, same_shape

    net, distinct = weights_of(train_stamp, scratch_dir)
    solverstate = Path(solverstate_stamp[0])
    try:
        check_weights(net, caffemodel_stamp[0], train_stamp[0])
    except UserError as error:
        return str(error)
    state = caffe_pb2.SolverState()
    try:
        state.ParseFromString(solverstate.read_bytes())
    except Exception:  # DecodeError or RuntimeError, depending on the protobuf backend
        return f"{solverstate} is truncated or not a solver state"
    history = [blob_shape(b) for b in state.history]
    if state.iter != iteration or len(history) != len(distinct) \
            or not all(map(same_shape, history, distinct)):
        return f"{solverstate} is incomplete or belongs to another iteration or net"
    return None


def resumable_snapshot(files, say=None):
    """(iteration, solverstate) of the newest snapshot that reads; None for a run without
    snapshots. Skipped damaged snapshots are told to ``say`` in one line; a UserError when
    there are snapshots and none reads."""
    iterations = files.snapshot_iterations()
    if not iterations:
        return None
    files.partial.mkdir(parents=True, exist_ok=True)
    skipped = []
    for iteration in iterations:
        problem = snapshot_problem(stamp(files.snapshot(iteration, "caffemodel")),
                                   stamp(files.snapshot(iteration, "solverstate")), iteration,
                                   stamp(files.train), str(files.partial))
        if problem is None:
            if skipped and say:
                say(f"skipping damaged snapshot(s): {'; '.join(skipped)}; resuming from "
                    f"iteration {iteration}")
            return iteration, files.snapshot(iteration, "solverstate")
        skipped.append(f"iteration {iteration}: {problem}")
    raise UserError(f"no snapshot in {files.snapshots} can be resumed from "
                    f"({'; '.join(skipped)})")


def write_atomic(path, text):
    """Text under a temporary name, then renamed: never half a file under the final name."""
    tmp = Path(str(path) + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)
