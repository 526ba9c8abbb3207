"""Training ABE-M with Caffe's SGDSolver driven from Python (ABE_SPEC section 3).

One run lives in one folder (``abe.train.run_folder``: relocatable, never overwritten by a
fresh run, snapshots checked before Caffe reads them)::

    RUN/train.prototxt deploy.prototxt solver.prototxt config.json
    RUN/snapshots/iter_<N>.caffemodel|.solverstate   the two newest snapshots
    RUN/snapshots/best.caffemodel + best.json        the best Recall@1 so far (paper practice)
    RUN/history.csv                                  iteration, loss terms, lr, Recall@K, wall time

The solver steps one iteration at a time so every loss term can be checked: a NaN or infinite
loss stops the run (``LossNotFinite``) before anything is written, so the last snapshot stays
the last good one. Snapshots go to ``snapshots/.partial/`` and are renamed into place once
complete (caffemodel first, then the solverstate that needs it), so a kill never leaves a
corrupt file under a final name; ``resume`` picks the newest pair that reads, and the pair layer
skips the batches drawn before it (``start_batch``), so the run goes on with the batches an
uninterrupted run would have drawn.

Several GPUs: one process per GPU, ``caffe.NCCL`` as BVLC's ``python/train.py``; rank 0 alone
evaluates, snapshots and writes the history. A build without NCCL (this CPU build) runs the
same processes as a stand-in: the same uid exchange and rank set-up, no gradient reduction.
"""
import csv
import json
import math
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from abe.errors import UserError
from abe.train import batching
from abe.train.run_folder import RunFiles, resumable_snapshot, write_atomic

KEEP_SNAPSHOTS = 2  # a damaged newest snapshot leaves the one before it to resume from
# Not in GoogLeNet, xavier always: the attention 1x1 convs (named learner{m}/attention when
# --no-sigmoid leaves no separate mask blob) and the embedding FCs.
NEW_LAYER = re.compile(r"(^|/)(attention_conv|embed_fc)$|^learner\d+/attention$")


class LossNotFinite(RuntimeError):
    """Training stopped on a NaN/inf loss; the message names the term and the iteration."""


@dataclass
class TrainSettings:
    """What a run needs besides its prototxts; saved as ``config.json`` without ``run_dir``:
    a run is wherever its folder is opened (paths outside the run are stored absolute)."""
    run_dir: str
    max_iter: int
    eval_every: int = 1000
    snapshot_every: int = 1000
    log_every: int = 20
    test_lmdbs: list = field(default_factory=list)  # one (all-vs-all) or query + gallery
    ks: list = field(default_factory=lambda: [1, 2, 4, 8])
    eval_batch: int = 50
    init_weights: str = ""  # bvlc_googlenet.caffemodel, empty: from scratch
    scratch_init: str = "he"  # from scratch: "he" (see he_initialize) or "bvlc" (the fillers)
    gpus: list = field(default_factory=list)  # one process per id; empty: one CPU process
    cpu: bool = False  # with several gpus: CPU stand-in processes (no gradient reduction)
    seed: int = 0  # fillers, He init, pair sampler, crops, mirrors (each rank its own stream)
    batch: int = 0  # images per iteration over all ranks (0: the train net's, x ranks x iter_size)
    iter_size: int = 1  # forward passes accumulated per iteration on each rank
    pass_batch: int = 0  # images per forward pass (derived; recorded in config.json)


def write_solver(files, solver_param, settings):
    """solver.prototxt for ``files.train``: our own snapshots (Caffe's off), seeded fillers."""
    from google.protobuf import text_format

    solver_param.net = str(files.train.resolve())
    solver_param.max_iter = settings.max_iter
    solver_param.snapshot = 0
    solver_param.snapshot_prefix = str((files.partial / "snap").resolve())
    solver_param.random_seed = settings.seed
    solver_param.iter_size = settings.iter_size
    on_gpu = settings.gpus and not settings.cpu
    solver_param.solver_mode = solver_param.GPU if on_gpu else solver_param.CPU
    write_atomic(files.solver, text_format.MessageToString(solver_param))


def prepare_run(settings, config_dir=None, net_cfg=None, solver_cfg=None, train_source=None,
                resume=False):
    """Fill the run folder: prototxts generated from ``net_cfg``/``solver_cfg`` or copied from
    ``config_dir`` (a gen_prototxt output), the pair layer pointed at ``train_source`` when
    given and, with ``resume``, started at the newest snapshot's position in its stream (see
    ``batches_drawn``), the solver made run-specific, and config.json."""
    from abe.net import netgen

    files = RunFiles(settings.run_dir)
    files.partial.mkdir(parents=True, exist_ok=True)
    if net_cfg is not None:
        netgen.write_config(files.root, net_cfg, solver_cfg)
    elif Path(config_dir).resolve() != files.root.resolve():
        for path in (files.train, files.deploy, files.solver):
            shutil.copyfile(Path(config_dir) / path.name, files.root / (path.name + ".partial"))
            os.replace(files.root / (path.name + ".partial"), path)
    solver_param = read_solver(files.solver)
    layout = batch_layout(settings, files.train, solver_param)
    solver_param.iter_size = layout.iter_size
    latest = resumable_snapshot(files) if resume else None
    pair_params = {"start_batch": batches_drawn(solver_param, latest[0] if latest else 0),
                   "seed": settings.seed, **batching.pair_sampling(layout)}
    if train_source:
        pair_params["source"] = str(train_source)
    set_pair_params(files.train, **pair_params)
    write_solver(files, solver_param, settings)
    saved = {k: v for k, v in asdict(settings).items() if k != "run_dir"}
    write_atomic(files.config, json.dumps(saved, indent=2) + "\n")
    return files


def batch_layout(settings, train_prototxt, solver_param):
    """The run's ``BatchLayout``; fills ``settings.batch``/``iter_size``/``pass_batch``. A run
    that names no global batch keeps its train net's pass batch and its solver's iter_size."""
    ranks = max(1, len(settings.gpus))
    if not settings.batch:
        settings.iter_size = solver_param.iter_size
        from abe.net.model_stats import read_net

        pairs = (pair_layer_params(read_net(train_prototxt)) or {}).get("batch_pairs", 32)
        settings.batch = 2 * pairs * ranks * settings.iter_size
    layout = batching.BatchLayout(settings.batch, ranks, settings.iter_size)
    settings.pass_batch = layout.pass_batch
    return layout


def batches_drawn(solver_param, iteration):
    """Batches each rank's pair layer has produced by ``iteration``: Caffe runs ``iter_size``
    forward passes per iteration."""
    return iteration * solver_param.iter_size


def set_pair_params(train_prototxt, **params):
    """Set keys of the train net's PairDataLayer param_str (JSON), e.g. source, start_batch."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    net = text_format.Parse(Path(train_prototxt).read_text(), caffe_pb2.NetParameter())
    for layer in net.layer:
        if layer.type == "Python" and layer.python_param.layer == "PairDataLayer":
            given = json.loads(layer.python_param.param_str or "{}")
            layer.python_param.param_str = json.dumps(dict(given, **params))
    write_atomic(train_prototxt, text_format.MessageToString(net))


def pair_layer_params(net_param):
    """The PairDataLayer parameters (defaults filled in) of a train NetParameter, or None."""
    from abe.data.pair_layer import PairDataLayer

    for layer in net_param.layer:
        if layer.type == "Python" and layer.python_param.layer == "PairDataLayer":
            return PairDataLayer.parse_param_str(layer.python_param.param_str)
    return None


def check_data(pair_params, test_lmdbs):
    """Refuse, as a UserError, data that would stop Caffe or the first evaluation once the run
    folder is written: a path that is not an LMDB or holds no records, images smaller than the
    crop, a training set without the classes that positive and negative pairs need."""
    import lmdb
    from google.protobuf.message import DecodeError

    from abe.data.lmdb_store import datum_header, iter_records
    from abe.data.pair_layer import PairSampler, scan_source

    crop, path = int(pair_params["crop"]), pair_params.get("source")
    try:
        if path:
            labels = scan_source(path, crop)[1]
            PairSampler(labels, int(pair_params["batch_pairs"]),
                        int(pair_params["positive_pairs"]), np.random.default_rng(0))
        for path in test_lmdbs:
            first = next(iter_records(path), None)
            if first is None:
                raise ValueError("it holds no records")
            _, height, width = datum_header(first[1])
            if crop > min(height, width):
                raise ValueError(f"crop {crop} is larger than its {height}x{width} images")
    except (ValueError, OSError, lmdb.Error, DecodeError) as error:
        named = str(path) in str(error)  # most messages name the LMDB already
        raise UserError(str(error) if named else f"{path}: {error}") from None


def load_settings(run_dir):
    """The settings of the run in ``run_dir``, found there (a ``run_dir`` that an older
    config.json names is ignored: it may be the folder this one was copied from)."""
    config = RunFiles(run_dir).config
    try:
        saved = json.loads(config.read_text())
        saved.pop("run_dir", None)
        return TrainSettings(run_dir=str(run_dir), **saved)
    except (ValueError, TypeError, AttributeError) as error:
        raise UserError(f"{config} is not a run configuration ({error})") from None


def learning_rate(param, iteration):
    """The rate Caffe's SGDSolver uses at ``iteration`` for the policies we generate."""
    if param.lr_policy == "step":
        return param.base_lr * param.gamma ** (iteration // param.stepsize)
    if param.lr_policy == "fixed":
        return param.base_lr
    raise ValueError(f"lr_policy {param.lr_policy!r} is not supported here")


def loss_terms(net):
    """Names of the train net's loss tops (the outputs with a loss weight), in net order."""
    return [name for name in net.outputs if net.blob_loss_weights.get(name, 0) != 0]


def layers_computing(net, blobs):
    """{layer index: [the given blobs among its tops]} for the layers that compute them."""
    found = {}
    for index in range(len(net.layers)):
        tops = [net._blob_names[i] for i in net._top_ids(index)]
        hit = [b for b in blobs if b in tops]
        if hit:
            found[index] = hit
    return found


class History:
    """history.csv, rewritten atomically on each row (small: one row per ``log_every``)."""

    def __init__(self, path, terms, ks, resume_at=None):
        self.path = path
        self.columns = (["iteration"] + terms + ["total_loss", "lr"] +
                        [f"recall@{k}" for k in ks] + ["wall_s"])
        self.rows = []
        if resume_at is not None and path.exists():
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= resume_at]

    @property
    def wall_offset(self):
        return float(self.rows[-1]["wall_s"]) if self.rows else 0.0

    def add(self, row):
        self.rows.append({c: row.get(c, "") for c in self.columns})
        tmp = Path(str(self.path) + ".partial")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


def read_history(path):
    """history.csv as {column: float array} (empty cells are NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else []
    return {c: np.array([float(r[c]) if r[c] != "" else np.nan for r in rows]) for c in columns}


class Trainer:
    """One solver process. Rank 0 (or the only process) evaluates, snapshots and logs."""

    def __init__(self, settings, rank=0, uid=None, resume=False, progress=True):
        import caffe

        self.caffe, self.settings, self.rank = caffe, settings, rank
        self.files = RunFiles(settings.run_dir)
        self.progress = progress and rank == 0
        set_up_device(caffe, settings, rank)
        self.solver = caffe.SGDSolver(str(self.files.solver))
        self.param = read_solver(self.files.solver)
        latest = resumable_snapshot(self.files) if resume else None
        if latest:
            restore(caffe, self.solver, latest[1], self.files.snapshot(latest[0], "caffemodel"),
                    self.files.partial)
        elif settings.init_weights and rank == 0:  # other ranks receive it by NCCL broadcast
            from abe.net.init_weights import initialize

            initialized = self.files.partial / "init.caffemodel"
            initialize(self.files.train, settings.init_weights, initialized)
            self.solver.net.copy_from(str(initialized))
            initialized.unlink()
        elif settings.scratch_init == "he" and rank == 0:
            he_initialize(self.solver.net, settings.seed)
        check_pair_stream(self.solver.net, batches_drawn(self.param, self.solver.iter))
        if settings.gpus and len(settings.gpus) > 1:
            self.nccl = caffe.NCCL(self.solver, uid)
            if caffe.has_nccl():  # a build without NCCL has the class but no reduction
                self.nccl.bcast()
                self.solver.add_callback(self.nccl)
                if self.solver.param.layer_wise_reduce:
                    self.solver.net.after_backward(self.nccl)
        self.terms = loss_terms(self.solver.net)
        self.loss_layers = layers_computing(self.solver.net, self.terms)
        self.solver.net.after_forward(self.check_losses)
        self.test_net = None
        if rank == 0:
            self.test_net = caffe.Net(str(self.files.deploy), caffe.TEST)
            self.test_net.share_with(self.solver.net)
        start = self.solver.iter
        self.history = History(self.files.history, self.terms, settings.ks,
                               resume_at=start if latest else None)
        self.best = (json.loads(self.files.best_info.read_text())
                     if latest and self.files.best_info.exists() else None)

    @property
    def iteration(self):
        return self.solver.iter

    def check_losses(self, layer_index):
        """After each layer's forward: a non-finite loss stops before its backward pass (whose
        NaNs could corrupt Caffe's max-pooling indices) and before any update."""
        for term in self.loss_layers.get(layer_index, ()):
            value = float(self.solver.net.blobs[term].data.ravel()[0])
            if not math.isfinite(value):
                raise LossNotFinite(f"loss {term} is {value} at iteration "
                                    f"{self.solver.iter + 1}; stopped, the last good snapshot "
                                    f"is kept")

    def step(self):
        """One SGD iteration; the raw value of each loss term (checked during the forward)."""
        self.solver.step(1)
        return {t: float(self.solver.net.blobs[t].data.ravel()[0]) for t in self.terms}

    def evaluate(self):
        """Recall@K (ensemble and learners) on the test LMDB(s) with the current weights."""
        from abe.eval import evaluation

        features = evaluation.embed_test_set(self.test_net, self.settings.test_lmdbs,
                                             self.settings.eval_batch, progress=False)
        return evaluation.evaluate(features, self.settings.ks)

    def snapshot(self):
        """Write iter_N.caffemodel/.solverstate via the .partial folder; keep it and the newest
        complete one before it, drop older ones (newer ones, left by a damaged or abandoned
        continuation, stay until this run overwrites them)."""
        iteration = self.iteration
        self.solver.snapshot()
        made = self.files.partial / f"snap_iter_{iteration}"
        os.replace(f"{made}.caffemodel", self.files.snapshot(iteration, "caffemodel"))
        os.replace(f"{made}.solverstate", self.files.snapshot(iteration, "solverstate"))
        kept = [i for i in self.files.snapshot_iterations() if i <= iteration][:KEEP_SNAPSHOTS]
        for old in self.files.snapshots.glob("iter_*.*"):
            number = old.name[len("iter_"):].split(".")[0]
            if number.isdigit() and int(number) < min(kept):
                old.unlink()

    def keep_if_best(self, recall):
        """Save the weights as best.caffemodel when Recall@1 improved."""
        r1 = recall[str(self.settings.ks[0])]
        if self.best is not None and r1 <= self.best["recall"][str(self.settings.ks[0])]:
            return
        tmp = self.files.partial / "best.caffemodel"
        self.solver.net.save(str(tmp))
        os.replace(tmp, self.files.best_model)
        self.best = {"iteration": self.iteration, "recall": recall}
        write_atomic(self.files.best_info, json.dumps(self.best) + "\n")

    def run(self, on_eval=None):
        """Train to max_iter; returns the last evaluation (rank 0) or None. The solver's data
        layer is closed afterwards: one run per Trainer."""
        from tqdm import tqdm

        s, result = self.settings, None
        wall0 = time.perf_counter() - self.history.wall_offset
        window = {t: [] for t in self.terms}
        bar = tqdm(total=s.max_iter, initial=self.iteration, desc="train", unit="it",
                   disable=not self.progress)
        if self.rank == 0 and self.iteration == 0 and s.eval_every:
            result = self.log(window, wall0, evaluate=True)
            if on_eval:
                on_eval(self.iteration, result)
        try:
            while self.iteration < s.max_iter:
                for term, value in self.step().items():
                    window[term].append(value)
                bar.update(1)
                if self.rank != 0:
                    continue
                it = self.iteration
                do_eval = s.eval_every and (it % s.eval_every == 0 or it == s.max_iter)
                if do_eval or it % s.log_every == 0:
                    evaluation = self.log(window, wall0, evaluate=do_eval)
                    bar.set_postfix(loss=f"{self.history.rows[-1]['total_loss']:.4f}")
                    if evaluation:
                        result = evaluation
                        if on_eval:
                            on_eval(it, result)
                if (s.snapshot_every and it % s.snapshot_every == 0) or it == s.max_iter:
                    self.snapshot()
        finally:
            bar.close()
            from abe.data.pair_layer import close_data_layers

            close_data_layers(self.solver.net)  # Caffe never frees Python layers: stop workers
        return result

    def log(self, window, wall0, evaluate):
        """One history row: mean loss terms since the last row, lr, Recall@K if evaluated."""
        row = {"iteration": self.iteration, "lr": learning_rate(self.param, self.iteration)}
        if any(window.values()):
            means = {t: float(np.mean(v)) for t, v in window.items()}
            weights = self.solver.net.blob_loss_weights
            row.update(means, total_loss=sum(weights[t] * v for t, v in means.items()))
        for values in window.values():
            values.clear()
        result = None
        if evaluate:
            result = self.evaluate()
            row.update({f"recall@{k}": v for k, v in result["recall"].items()})
            self.keep_if_best(result["recall"])
        row["wall_s"] = round(time.perf_counter() - wall0, 3)
        self.history.add(row)
        return result


def check_pair_stream(net, expected):
    """A resumed run must draw the batches the uninterrupted run would have drawn next."""
    from abe.data.pair_layer import PairDataLayer

    for layer in net.layers:
        if isinstance(layer, PairDataLayer) and layer.start_batch != expected:
            raise RuntimeError(f"the pair layer starts at batch {layer.start_batch}, but the "
                               f"solver has drawn {expected} batches: prepare a resumed run "
                               f"with prepare_run(..., resume=True)")


def he_initialize(net, seed):
    """From scratch, GoogLeNet's layers get He (MSRA) weights and zero biases.

    BVLC's fillers (xavier, constant 0.2 biases) are made for ImageNet-scale training: with
    them an untrained net maps every image to nearly one point, the contrastive gradients
    (proportional to the pair's difference) vanish and the loss sits at its collapsed value
    (measured: 0.25 per learner for 200 iterations on the digits demo). He weights keep the
    signal's scale through the ReLUs. The new layers (attention 1x1 convs, embedding FC) keep
    their xavier initialization, as in the paper.
    """
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        if NEW_LAYER.search(name):
            continue
        weights = blobs[0].data
        weights[...] = rng.standard_normal(weights.shape) * np.sqrt(2.0 / weights[0].size)
        for bias in blobs[1:]:
            bias.data[...] = 0


def set_up_device(caffe, settings, rank):
    gpus = settings.gpus
    if not gpus or settings.cpu:
        caffe.set_mode_cpu()
    else:
        caffe.set_mode_gpu()
        caffe.set_device(gpus[rank])
    if len(gpus) > 1:
        caffe.set_solver_count(len(gpus))
        caffe.set_solver_rank(rank)
        caffe.set_multiprocess(True)


def read_solver(path):
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    return text_format.Parse(Path(path).read_text(), caffe_pb2.SolverParameter())


def restore(caffe, solver, solverstate, caffemodel, scratch):
    """Restore a renamed snapshot: the state names the caffemodel under its temporary name,
    so a copy pointing at the final name is restored instead."""
    from caffe.proto import caffe_pb2

    state = caffe_pb2.SolverState()
    state.ParseFromString(Path(solverstate).read_bytes())
    state.learned_net = str(Path(caffemodel).resolve())
    fixed = Path(scratch) / "restore.solverstate"
    fixed.write_bytes(state.SerializeToString())
    solver.restore(str(fixed))
    fixed.unlink()


def new_uid(caffe):
    """NCCL's session id, or a stand-in of the same role where Caffe has no NCCL."""
    return caffe.NCCL.new_uid() if caffe.has_nccl() else secrets.token_hex(64)


def _rank_main(settings, rank, uid, resume, report):
    trainer = Trainer(settings, rank=rank, uid=uid, resume=resume)
    pass_batch = trainer.solver.net.blobs["data"].num
    iter_size = trainer.param.iter_size
    print(f"rank {rank}: {pass_batch} images per forward pass, iter_size {iter_size}: "
          f"{pass_batch * iter_size} images per iteration", file=sys.stderr, flush=True)
    report.put((rank, uid, trainer.caffe.solver_rank(), trainer.caffe.solver_count(),
                pass_batch, iter_size))
    trainer.run()


def train_parallel(settings, resume=False):
    """One process per GPU (BVLC python/train.py); returns [(rank, uid, solver_rank, count,
    pass batch, iter_size)] as each process saw them. A failing rank stops all of them."""
    import caffe

    uid = new_uid(caffe)
    context = multiprocessing.get_context("spawn")
    report = context.Queue()
    # not daemonic (unlike BVLC's): each rank's data layer starts prefetch processes itself
    processes = [context.Process(target=_rank_main, args=(settings, rank, uid, resume, report))
                 for rank in range(len(settings.gpus))]
    for process in processes:
        process.start()
    seen = []
    try:
        for process in processes:
            process.join()
            if process.exitcode != 0:
                raise RuntimeError(f"training process {processes.index(process)} exited with "
                                   f"status {process.exitcode}")
        while len(seen) < len(processes) and not report.empty():
            seen.append(report.get())
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
    return sorted(seen)


def clear_run(run_dir):
    """Remove a previous run's snapshots and history (a fresh, not resumed, run)."""
    files = RunFiles(run_dir)
    shutil.rmtree(files.snapshots, ignore_errors=True)
    for path in (files.history, files.best_info):
        if path.exists():
            path.unlink()
