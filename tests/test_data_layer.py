"""The pair-sampling data layer inside real Caffe nets, and the test-time reader.

The LMDB here is coordinate-coded: record i's pixel (y, x) is BGR (i, 8y, 8x), so every crop in
a batch tells which record it came from, where it was cut and whether it was mirrored."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import REPO

from abe.data.pair_layer import close_data_layers, iter_test_batches, read_labels
from abe.data.imaging import encode_jpeg
from abe.data.lmdb_store import LmdbWriter, make_datum

SIZE, CROP = 32, 24
CLASS_SIZES = [5, 4, 3, 1, 1, 6]  # two single-image classes: never positive anchors
LABELS = np.repeat(np.arange(len(CLASS_SIZES)), CLASS_SIZES)
SINGLETONS = np.flatnonzero(np.isin(LABELS, [3, 4]))
MEAN = np.array([104, 117, 123], np.float32)


def coded_image(index):
    y, x = np.mgrid[:SIZE, :SIZE]
    return np.dstack([np.full_like(y, index), 8 * y, 8 * x]).astype(np.uint8)


def write_lmdb(path, labels, jpeg_quality=None):
    writer = LmdbWriter(path)
    for index, label in enumerate(labels):
        image = coded_image(index)
        jpeg = encode_jpeg(image, jpeg_quality) if jpeg_quality else None
        writer.append(make_datum(image, label, jpeg), f"img{index}.png", label, label)
    return writer.commit()


@pytest.fixture(scope="module")
def coded_lmdb(tmp_path_factory):
    return write_lmdb(tmp_path_factory.mktemp("coded") / "train_lmdb", LABELS)


def decode_crop(crop):
    """(record index, top, left, mirrored) of one mean-subtracted crop of a coded image."""
    bgr = crop + MEAN[:, None, None]
    assert np.allclose(bgr, np.round(bgr))
    index, top = int(bgr[0, 0, 0]), int(bgr[1, 0, 0]) // 8
    mirrored = bgr[2, 0, 1] < bgr[2, 0, 0]
    left = int(bgr[2, 0, -1 if mirrored else 0]) // 8
    return index, top, left, bool(mirrored)


def pair_net_file(directory, **params):
    from caffe import layers as L
    import caffe

    spec = caffe.NetSpec()
    spec.data, spec.label, spec.sim = L.Python(
        module="abe.data.pair_layer", layer="PairDataLayer", ntop=3, param_str=json.dumps(params))
    path = directory / f"pairs_{abs(hash(json.dumps(params, sort_keys=True)))}.prototxt"
    path.write_text(str(spec.to_proto()))
    return path


@pytest.fixture
def pair_net(caffe, tmp_path):
    """Builds PairDataLayer nets; their workers are stopped after the test (Caffe leaks the
    layers, so they would otherwise idle until pytest exits)."""
    nets = []

    def build(**params):
        params.setdefault("crop", CROP)
        nets.append(caffe.Net(str(pair_net_file(tmp_path, **params)), caffe.TRAIN))
        return nets[-1]

    yield build
    for net in nets:
        close_data_layers(net)


def batches(net, count):
    for _ in range(count):
        net.forward()
        yield (net.blobs["data"].data.copy(), net.blobs["label"].data.copy(),
               net.blobs["sim"].data.copy())


def test_pairs_labels_crops_and_mirrors(pair_net, coded_lmdb):
    net = pair_net(source=str(coded_lmdb), workers=2, seed=3)
    assert net.blobs["data"].data.shape == (64, 3, CROP, CROP)
    assert net.blobs["label"].data.shape == (64,) and net.blobs["sim"].data.shape == (32,)
    mirrored, offsets = [], []
    for data, label, sim in batches(net, 12):
        decoded = [decode_crop(crop) for crop in data]
        index = np.array([d[0] for d in decoded])
        assert (label == LABELS[index]).all()  # the label top is the true class of each image
        assert (sim == np.repeat([1, 0], 16)).all()
        anchors, partners = index[:32], index[32:]
        same = LABELS[anchors] == LABELS[partners]
        assert same[:16].all() and not same[16:].any()  # positives share a class, negatives not
        assert (anchors[:16] != partners[:16]).all()  # a positive is another image
        assert not np.isin(anchors[:16], SINGLETONS).any()
        mirrored += [d[3] for d in decoded]
        offsets += [d[1:3] for d in decoded]
    offsets = np.array(offsets)
    assert offsets.min() == 0 and offsets.max() == SIZE - CROP  # every crop position reachable
    assert abs(offsets.mean() - (SIZE - CROP) / 2) < 0.5
    assert 0.4 < np.mean(mirrored) < 0.6  # 768 fair coin flips


def test_no_mirror_and_same_seed_same_batches(pair_net, coded_lmdb):
    unmirrored = pair_net(source=str(coded_lmdb), mirror=False, workers=0)
    for data, _, _ in batches(unmirrored, 4):
        assert not any(decode_crop(crop)[3] for crop in data)
    prefetched = list(batches(pair_net(source=str(coded_lmdb), seed=7), 3))
    inline = list(batches(pair_net(source=str(coded_lmdb), seed=7, workers=0), 3))
    other = list(batches(pair_net(source=str(coded_lmdb), seed=8), 3))
    for a, b, c in zip(prefetched, inline, other):
        assert all((x == y).all() for x, y in zip(a, b))
        assert not (a[0] == c[0]).all()


def test_jpeg_datums_give_the_same_batches_up_to_compression(pair_net, coded_lmdb, tmp_path):
    jpeg_lmdb = write_lmdb(tmp_path / "jpeg_lmdb", LABELS, jpeg_quality=95)
    raw = next(batches(pair_net(source=str(coded_lmdb), seed=1), 1))
    jpeg = next(batches(pair_net(source=str(jpeg_lmdb), seed=1), 1))
    assert (raw[1] == jpeg[1]).all() and (raw[2] == jpeg[2]).all()
    assert np.abs(raw[0] - jpeg[0]).mean() < 2.0


def test_start_batch_continues_the_stream_without_reading_skipped_images(pair_net, coded_lmdb):
    stream = list(batches(pair_net(source=str(coded_lmdb), seed=5), 5))
    resumed = list(batches(pair_net(source=str(coded_lmdb), seed=5, start_batch=3), 2))
    for got, expected in zip(resumed, stream[3:]):
        assert all((x == y).all() for x, y in zip(got, expected))
    assert not (resumed[0][0] == stream[0][0]).all()
    with pytest.raises(Exception, match="start_batch must be >= 0"):
        pair_net(source=str(coded_lmdb), start_batch=-1)


def test_each_solver_rank_draws_its_own_stream(caffe, pair_net, coded_lmdb):
    streams = []
    for rank in (0, 1):
        caffe.set_solver_rank(rank)
        try:
            streams.append(next(batches(pair_net(source=str(coded_lmdb)), 1))[0])
        finally:
            caffe.set_solver_rank(0)
    assert not (streams[0] == streams[1]).all()


def test_a_set_without_positive_pairs_is_refused(pair_net, tmp_path):
    source = write_lmdb(tmp_path / "singletons_lmdb", [0, 1, 2, 3])
    with pytest.raises(Exception, match="no class has two or more images") as error:
        pair_net(source=str(source))
    assert "\n" not in str(error.value).strip()


def test_batch_and_pair_counts_come_from_param_str(pair_net, coded_lmdb):
    net = pair_net(source=str(coded_lmdb), batch_pairs=6, positive_pairs=2, crop=16, workers=1)
    data, label, sim = next(batches(net, 1))
    assert data.shape == (12, 3, 16, 16) and label.shape == (12,)
    assert (sim == [1, 1, 0, 0, 0, 0]).all()
    same = label[:6] == label[6:]
    assert same[:2].all() and not same[2:].any()


def test_a_misspelt_parameter_is_refused(pair_net, coded_lmdb):
    with pytest.raises(Exception, match=r"unknown param_str keys \['batch_pair'\]"):
        pair_net(source=str(coded_lmdb), batch_pair=8)


def test_test_reader_centre_crops_every_record_once_in_order(coded_lmdb):
    got = list(iter_test_batches(coded_lmdb, 8, crop=CROP))
    assert [len(labels) for _, labels in got] == [8, 8, 4]  # the last partial batch included
    images = np.concatenate([images for images, _ in got])
    assert images.dtype == np.float32 and images.shape == (20, 3, CROP, CROP)
    centre = (SIZE - CROP) // 2
    assert [decode_crop(image) for image in images] == [(i, centre, centre, False) for i in range(20)]
    assert (np.concatenate([labels for _, labels in got]) == LABELS).all()
    assert (read_labels(coded_lmdb) == LABELS).all()


def child_pids():
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                pids.append(int(entry))
    return pids


def alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids, timeout=10):
    deadline = time.time() + timeout
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def test_close_stops_the_workers(pair_net, coded_lmdb):
    before = set(child_pids())
    net = pair_net(source=str(coded_lmdb), workers=2)
    workers = set(child_pids()) - before
    assert len(workers) == 2
    next(batches(net, 1))
    close_data_layers(net)
    assert wait_gone(workers) == []


SOLVER_SCRIPT = textwrap.dedent("""
    import multiprocessing, os, sys, tempfile
    os.environ["GLOG_minloglevel"] = "2"
    import caffe
    from caffe import layers as L, params as P
    caffe.set_mode_cpu()
    spec = caffe.NetSpec()
    spec.data, spec.label, spec.sim = L.Python(module="abe.data.pair_layer", layer="PairDataLayer", ntop=3,
                                               param_str=sys.argv[1])
    spec.feature = L.InnerProduct(spec.data, num_output=4, weight_filler=dict(type="xavier"))
    spec.a, spec.b = L.Slice(spec.feature, slice_param=dict(axis=0), ntop=2)
    spec.loss = L.ContrastiveLoss(spec.a, spec.b, spec.sim)
    spec.silence = L.Silence(spec.label, ntop=0)
    folder = tempfile.mkdtemp()
    with open(folder + "/net.prototxt", "w") as f:
        f.write(str(spec.to_proto()))
    with open(folder + "/solver.prototxt", "w") as f:
        f.write('net: "%s/net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 1000 '
                'display: 0 snapshot_after_train: false' % folder)
    solver = caffe.SGDSolver(folder + "/solver.prototxt")
    solver.step(2)
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    if sys.argv[2] == "wait":
        sys.stdin.readline()
""")


@pytest.mark.parametrize("ending", ["solver_end", "ctrl_c", "sigkill"])
def test_no_orphaned_workers_after_a_real_solver(coded_lmdb, ending):
    params = json.dumps({"source": str(coded_lmdb), "crop": CROP, "workers": 2})
    process = subprocess.Popen(
        [sys.executable, "-c", SOLVER_SCRIPT, params, "exit" if ending == "solver_end" else "wait"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    workers = [int(p) for p in process.stdout.readline().split()]
    assert len(workers) == 2, process.stderr.read()
    if ending == "ctrl_c":
        os.killpg(process.pid, signal.SIGINT)  # what a terminal sends the whole job
    elif ending == "sigkill":
        os.kill(process.pid, signal.SIGKILL)  # only the parent: the workers must notice
    process.wait(timeout=30)
    assert wait_gone(workers) == []
    if ending == "solver_end":
        assert process.returncode == 0, process.stderr.read()
