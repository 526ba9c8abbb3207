"""Feeding Caffe: the paper's pair-sampling training layer and the sequential test-time reader.

Training batches (ABE_SPEC.md section 3): P anchors at random; the first ``positive_pairs`` get
a partner of the same class (a different image), the rest a partner of another class; images
laid out [a_1..a_P, b_1..b_P]; random crop, random mirror, BGR mean subtraction.

Every random choice (pairs, crop offsets, mirrors) is drawn in Caffe's thread from one seeded
generator per solver rank, so a batch depends only on (seed, rank, batch number), never on
which prefetch worker decoded it or when. ``start_batch`` N replays the draws of batches
0..N-1 without reading any image, so a resumed run continues the stream where the
uninterrupted run would be.
"""
import atexit
import mmap
import multiprocessing
import os
import queue
import signal

import caffe
import numpy as np

from abe.data.lmdb_store import datum_header, iter_records, open_readonly, parse_datum
from abe.errors import UserError
from abe.net import param_str

PAIR_DEFAULTS = {"batch_pairs": 32, "positive_pairs": 16, "crop": 224, "mirror": True,
                 "mean": [104.0, 117.0, 123.0], "seed": 0, "workers": 2, "prefetch": 4,
                 "start_batch": 0}
WORKER_POLL_S = 0.5  # how often an idle worker checks that its parent is still alive
RESULT_TIMEOUT_S = 60.0


def read_labels(lmdb_path):
    """The label of every record, in the LMDB's (key) order, as int64."""
    return np.array([datum_header(value)[0] for _, value in iter_records(lmdb_path)], np.int64)


def crop_into(out, image, top, left, mirror, mean):
    """``out`` (3 x c x c float32) = the BGR crop at (top, left), mirrored or not, minus mean."""
    size = out.shape[-1]
    patch = image[top:top + size, left:left + size]
    if mirror:
        patch = patch[:, ::-1]
    np.subtract(patch.transpose(2, 0, 1), mean, out=out, dtype=np.float32)


def iter_test_batches(lmdb_path, batch_size, crop=224, mean=(104, 117, 123)):
    """Yield (images float32 N x 3 x crop x crop, labels int64 N): centre crops, minus mean, in
    record order, every record exactly once, the last partial batch included."""
    mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
    images = np.empty((batch_size, 3, crop, crop), np.float32)
    labels = np.empty(batch_size, np.int64)
    filled = 0
    for _, value in iter_records(lmdb_path):
        image, labels[filled] = parse_datum(value)
        height, width = image.shape[:2]
        if crop > min(height, width):
            raise UserError(f"crop {crop} is larger than the {height}x{width} images of {lmdb_path}")
        crop_into(images[filled], image, (height - crop) // 2, (width - crop) // 2, False, mean)
        filled += 1
        if filled == batch_size:
            yield images.copy(), labels.copy()
            filled = 0
    if filled:
        yield images[:filled].copy(), labels[:filled].copy()


class PairSampler:
    """Draws the image indices of pair batches from the labels of a training set."""

    def __init__(self, labels, batch_pairs, positive_pairs, rng):
        self.labels = np.asarray(labels, np.int64)
        if not 0 <= positive_pairs <= batch_pairs:
            raise ValueError(f"positive_pairs must be within 0..batch_pairs ({batch_pairs})")
        self.batch_pairs, self.positive_pairs, self.rng = batch_pairs, positive_pairs, rng
        # Indices grouped by class: class k holds by_class[start[k]:start[k] + count[k]].
        classes, self.class_of, self.count = np.unique(
            self.labels, return_inverse=True, return_counts=True)
        self.by_class = np.argsort(self.class_of, kind="stable")
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        self.rank = np.empty_like(self.by_class)
        self.rank[self.by_class] = np.arange(len(self.labels)) - self.start[self.class_of[self.by_class]]
        # A class with one image cannot give a positive pair: its image is never such an anchor.
        self.positive_anchors = np.flatnonzero(self.count[self.class_of] >= 2)
        if positive_pairs and not len(self.positive_anchors):
            raise ValueError("no class has two or more images: no positive pairs can be formed")
        if positive_pairs < batch_pairs and len(classes) < 2:
            raise ValueError("only one class: no negative pairs can be formed")

    def next_pairs(self, positive_pairs=None):
        """(anchors, partners): two index arrays of length batch_pairs, positives first
        (``positive_pairs`` of them, default the sampler's)."""
        positives = self.positive_pairs if positive_pairs is None else positive_pairs
        rng, negatives = self.rng, self.batch_pairs - positives
        positive = rng.choice(self.positive_anchors, positives)
        negative = rng.integers(0, len(self.labels), negatives)
        anchors = np.concatenate([positive, negative])
        cls = self.class_of[anchors]
        # Positive partner: another member of the anchor's class (skip the anchor's own slot).
        pos_cls, pos_rank = cls[:positives], self.rank[positive]
        offset = (rng.random(positives) * (self.count[pos_cls] - 1)).astype(np.int64)
        offset += offset >= pos_rank
        # Negative partner: any image outside the anchor's class (skip the class's segment).
        neg_cls = cls[positives:]
        position = (rng.random(negatives) * (len(self.labels) - self.count[neg_cls])).astype(np.int64)
        position += np.where(position >= self.start[neg_cls], self.count[neg_cls], 0)
        partners = np.concatenate([self.by_class[self.start[pos_cls] + offset],
                                   self.by_class[position]])
        return anchors, partners


def _prefetch_worker(source, keys, slots, mean, tasks, results, parent):
    """Fill batch slots from (number, slot, indices, offsets, mirrors) tasks until told to stop
    or until the parent process is gone (no orphans if Caffe is killed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    results.cancel_join_thread()
    with open_readonly(source) as env, env.begin() as txn:
        while True:
            try:
                task = tasks.get(timeout=WORKER_POLL_S)
            except queue.Empty:
                if os.getppid() != parent:
                    return
                continue
            if task is None:
                return
            number, slot, indices, offsets, mirrors = task
            try:
                _fill(slots[slot], txn, keys, indices, offsets, mirrors, mean)
                results.put((number, slot, None))
            except Exception as error:  # reported to Caffe's thread, which raises it
                results.put((number, slot, f"{type(error).__name__}: {error}"))


def _fill(out, txn, keys, indices, offsets, mirrors, mean):
    for row, (index, (top, left), mirror) in enumerate(zip(indices, offsets, mirrors)):
        image, _ = parse_datum(txn.get(keys[index]))
        crop_into(out[row], image, top, left, mirror, mean)


class _Prefetcher:
    """Worker processes filling a ring of batch slots in shared memory, in submission order."""

    def __init__(self, source, keys, batch_shape, mean, workers, slots):
        context = multiprocessing.get_context("fork")  # works inside the embedded `caffe` binary
        nbytes = int(np.prod(batch_shape)) * 4
        self.memory = mmap.mmap(-1, nbytes * slots)  # anonymous shared mapping, freed with us
        self.slots = np.frombuffer(self.memory, np.float32).reshape((slots,) + tuple(batch_shape))
        self.tasks, self.results = context.Queue(), context.Queue()
        self.ready = {}
        self.processes = [context.Process(
            target=_prefetch_worker, daemon=True,
            args=(source, keys, self.slots, mean, self.tasks, self.results, os.getpid()))
            for _ in range(workers)]
        for process in self.processes:
            process.start()

    def submit(self, number, slot, indices, offsets, mirrors):
        self.tasks.put((number, slot, indices, offsets, mirrors))

    def wait(self, number):
        """The slot holding batch ``number`` once a worker has filled it."""
        while number not in self.ready:
            try:
                done, slot, error = self.results.get(timeout=RESULT_TIMEOUT_S)
            except queue.Empty:
                if not all(p.is_alive() for p in self.processes):
                    raise RuntimeError("a PairDataLayer prefetch worker died") from None
                continue
            if error:
                raise RuntimeError(f"PairDataLayer prefetch worker: {error}")
            self.ready[done] = slot
        return self.ready.pop(number)

    def stop(self):
        if not self.processes:
            return
        for _ in self.processes:
            self.tasks.put(None)
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join()
        self.tasks.close()
        self.results.close()
        self.processes = []


class PairDataLayer(caffe.Layer):
    """Tops ``data`` (2P x 3 x crop x crop), ``label`` (2P), ``sim`` (P; 1 = same class).

    BVLC Caffe never frees a Python layer (the C++ layer and its Python object reference each
    other), so the prefetch workers stop at ``close()`` (see ``close_data_layers``), when the
    process exits (atexit), or by themselves once their parent is gone (killed).
    """

    @staticmethod
    def parse_param_str(text):
        """The layer's parameters: PAIR_DEFAULTS overridden by the JSON ``text``."""
        params = param_str.parse(text, PAIR_DEFAULTS, "PairDataLayer", required=("source",),
                                 optional=("positive_schedule",))

        def need(ok, message):
            param_str.require(ok, "PairDataLayer", message)
        need(isinstance(params["source"], str) and params["source"],
             '"source" must be the path of the training LMDB')
        need(params["batch_pairs"] >= 1, "batch_pairs must be >= 1")
        need(0 <= params["positive_pairs"] <= params["batch_pairs"],
             "positive_pairs must be within 0..batch_pairs")
        need(params["crop"] >= 1, "crop must be >= 1")
        for key in ("seed", "workers", "start_batch"):
            need(params[key] >= 0, f"{key} must be >= 0, got {params[key]}")
        need(params["prefetch"] >= 1, "prefetch must be >= 1")
        schedule = params.get("positive_schedule")
        need(schedule is None or (isinstance(schedule, list) and schedule and all(
            isinstance(counts, list) and counts and all(
                type(n) is int and 0 <= n <= params["batch_pairs"] for n in counts)
            for counts in schedule)),
            "positive_schedule must list, per rank, positive pair counts within 0..batch_pairs")
        return params

    def setup(self, bottom, top):
        params = self.parse_param_str(self.param_str)
        if len(top) != 3:
            raise ValueError("PairDataLayer has three tops: data, label, sim")
        self.source, self.crop = str(params["source"]), int(params["crop"])
        self.pairs, self.mirror = int(params["batch_pairs"]), bool(params["mirror"])
        self.mean = np.asarray(params["mean"], np.float32).reshape(3, 1, 1)
        self.keys, labels, self.image_size = scan_source(self.source, self.crop)
        self.rng = np.random.default_rng([int(params["seed"]), caffe.solver_rank()])
        self.schedule = self._positive_schedule(params)
        self.sampler = PairSampler(labels, self.pairs, max(self.schedule), self.rng)
        self.start_batch = int(params["start_batch"])
        self.drawn = 0
        for _ in range(self.start_batch):
            self.next_plan()
        self.plans, self.submitted, self.consumed = {}, self.start_batch, self.start_batch
        self.prefetcher, workers = None, int(params["workers"])
        if workers > 0:
            self.prefetcher = _Prefetcher(self.source, self.keys, self.batch_shape, self.mean,
                                          workers, int(params["prefetch"]))
            atexit.register(self.prefetcher.stop)
            for slot in range(len(self.prefetcher.slots)):
                self._submit(slot)
        else:
            self.env = open_readonly(self.source)
            self.txn = self.env.begin()

    @staticmethod
    def _positive_schedule(params):
        """Positive pairs of each batch of this rank, cycled: ``positive_schedule`` holds one
        list per rank (one entry per forward pass of an iteration, see
        ``abe.train.batching``), so that the ranks' passes together keep the paper's half of
        positive pairs even where one pass has an odd number of pairs."""
        schedule, rank = params.get("positive_schedule"), caffe.solver_rank()
        if schedule is None:  # every batch of every rank: positive_pairs
            return [params["positive_pairs"]]
        if rank >= len(schedule):
            raise ValueError(f"PairDataLayer positive_schedule has no entry for rank {rank}")
        return schedule[rank]

    @property
    def batch_shape(self):
        return (2 * self.pairs, 3, self.crop, self.crop)

    def positives_of(self, number):
        return self.schedule[number % len(self.schedule)]

    def next_plan(self):
        """Image indices, crop offsets and mirror flags of the next batch."""
        anchors, partners = self.sampler.next_pairs(self.positives_of(self.drawn))
        self.drawn += 1
        indices = np.concatenate([anchors, partners])
        offsets = self.rng.integers(0, self.image_size - self.crop + 1, (len(indices), 2))
        mirrors = (self.rng.random(len(indices)) < 0.5) & self.mirror
        return indices, offsets, mirrors

    def _submit(self, slot):
        plan = self.plans[self.submitted] = self.next_plan()
        self.prefetcher.submit(self.submitted, slot, *plan)
        self.submitted += 1

    def reshape(self, bottom, top):
        top[0].reshape(*self.batch_shape)
        top[1].reshape(2 * self.pairs)
        top[2].reshape(self.pairs)

    def forward(self, bottom, top):
        number = self.consumed
        if self.prefetcher is None:
            indices, offsets, mirrors = self.next_plan()
            _fill(top[0].data, self.txn, self.keys, indices, offsets, mirrors, self.mean)
        else:
            slot = self.prefetcher.wait(number)
            indices, _, _ = self.plans.pop(number)
            top[0].data[...] = self.prefetcher.slots[slot]
            self._submit(slot)
        self.consumed += 1
        top[1].data[...] = self.sampler.labels[indices]
        top[2].data[...] = np.arange(self.pairs) < self.positives_of(number)

    def backward(self, top, propagate_down, bottom):
        pass

    def close(self):
        """Stop the prefetch workers; the layer cannot produce batches afterwards."""
        if self.prefetcher is not None:
            self.prefetcher.stop()
            atexit.unregister(self.prefetcher.stop)
            self.prefetcher = None


def close_data_layers(net):
    """Stop the prefetch workers of every PairDataLayer in ``net`` (a caffe.Net)."""
    for layer in net.layers:
        if isinstance(layer, PairDataLayer):
            layer.close()


def scan_source(source, crop):
    """Keys, labels and square image side of a training LMDB whose images hold ``crop``."""
    keys, labels, size = _scan(source)
    if crop > size:
        raise ValueError(f"crop {crop} is larger than the {size}-pixel images of {source}")
    return keys, labels, size


def _scan(source):
    """Keys, labels and square image side of a training LMDB."""
    keys, labels, size = [], [], None
    for key, value in iter_records(source):
        label, height, width = datum_header(value)
        size = size or height
        if (height, width) != (size, size):
            raise ValueError(f"{source}: record {key.decode()} is {width}x{height}, "
                             f"not {size}x{size} like the first")
        keys.append(key)
        labels.append(label)
    if not keys:
        raise ValueError(f"{source} holds no records")
    return keys, labels, size
