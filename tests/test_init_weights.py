"""init_weights with a stand-in for bvlc_googlenet.caffemodel: BVLC's deploy net, random weights."""
import subprocess
import sys

import numpy as np
import pytest
from caffe import layers as L
from conftest import REPO
from google.protobuf import text_format

from abe.net import netgen
from abe.net.init_weights import InitError, initialize, weights_only
from abe.net.model_stats import read_net

TOOL = [sys.executable, str(REPO / "tools" / "init_weights.py")]


@pytest.fixture(scope="module")
def stand_in(caffe, caffe_prefix, tmp_path_factory):
    """(path, {layer: [arrays]}): BVLC GoogLeNet, random weights and biases, saved by Caffe."""
    net = caffe.Net(str(caffe_prefix / "models" / "bvlc_googlenet" / "deploy.prototxt"),
                    caffe.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        blobs[1].data[...] = rng.normal(size=blobs[1].data.shape)  # fillers made biases 0.2
    path = tmp_path_factory.mktemp("standin") / "bvlc_googlenet.caffemodel"
    net.save(str(path))
    return path, {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}


def generated(tmp_path, **options):
    cfg = netgen.NetConfig(M=2, embed_dim=16, crop=64, batch=4, **options)
    netgen.write_config(tmp_path / "net", cfg, netgen.SolverConfig())
    return tmp_path / "net" / "train.prototxt"


def load(caffe, train_path, weights, tmp_path):
    path = tmp_path / "weights_only.prototxt"
    path.write_text(text_format.MessageToString(weights_only(read_net(train_path))))
    return caffe.Net(str(path), caffe.TRAIN, weights=str(weights))


def assert_fresh_xavier(blob):
    """Caffe's xavier: uniform in +-sqrt(3 / fan_in), nothing copied."""
    bound = np.sqrt(3.0 / (blob.count / blob.shape[0]))
    assert np.abs(blob.data).max() <= bound and blob.data.std() > bound / 4


def test_abe_from_pretrained(caffe, stand_in, tmp_path):
    pretrained_path, pretrained = stand_in
    train = generated(tmp_path)
    out = tmp_path / "init.caffemodel"
    report = {r.layer: r for r in initialize(train, pretrained_path, out)}
    net = load(caffe, train, out, tmp_path)
    for name, source in [("conv1/7x7_s2", "conv1/7x7_s2"), ("inception_4c/3x3", "inception_4c/3x3"),
                         ("attention/inception_4c/3x3", "inception_4c/3x3"),
                         ("attention/inception_4e/pool_proj", "inception_4e/pool_proj"),
                         ("inception_5b/5x5", "inception_5b/5x5")]:
        assert report[name].source == source
        for blob, expected in zip(net.params[name], pretrained[source]):
            assert np.array_equal(blob.data, expected), name
    for name in ("learner0/attention_conv", "learner1/attention_conv", "embed_fc"):
        assert report[name].source == "" and report[name].filler == "xavier"
        assert_fresh_xavier(net.params[name][0])
    assert not np.array_equal(net.params["learner0/attention_conv"][0].data,
                              net.params["learner1/attention_conv"][0].data)
    assert {r.source for r in report.values()} - {""} <= set(pretrained)
    assert "loss3/classifier" not in {r.source for r in report.values()}


def test_heads_copy_g_into_every_head_with_the_cli(caffe, stand_in, tmp_path):
    pretrained_path, pretrained = stand_in
    train = generated(tmp_path, arch="heads")
    out = tmp_path / "heads.caffemodel"
    run = subprocess.run(TOOL + ["--net", str(train), "--weights", str(pretrained_path),
                                 "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "learner1/inception_4a/1x1" in run.stdout and "fresh (xavier)" in run.stdout
    net = load(caffe, train, out, tmp_path)
    for m in range(2):
        assert np.array_equal(net.params[f"learner{m}/inception_5a/3x3"][0].data,
                              pretrained["inception_5a/3x3"][0])
        assert_fresh_xavier(net.params[f"learner{m}/embed_fc"][0])


def test_shape_mismatch_is_one_line_and_writes_nothing(caffe, tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 16, 16]))
    n["conv1/7x7_s2"] = L.Convolution(n.data, num_output=32, kernel_size=7)
    bad_proto = tmp_path / "bad.prototxt"
    bad_proto.write_text(text_format.MessageToString(n.to_proto()))
    bad = tmp_path / "bad.caffemodel"
    caffe.Net(str(bad_proto), caffe.TEST).save(str(bad))
    train, out = generated(tmp_path), tmp_path / "init.caffemodel"
    with pytest.raises(InitError, match=r"shape mismatch: conv1/7x7_s2 blob 0"):
        initialize(train, bad, out)
    run = subprocess.run(TOOL + ["--net", str(train), "--weights", str(bad), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "(64, 3, 7, 7)" in run.stderr and "(32, 3, 7, 7)" in run.stderr
    assert not out.exists() and not list(tmp_path.glob("*.part"))
