"""Parameter and MAC counts: the paper's Table 1 from the committed deploy nets; a hand count."""
import subprocess
import sys

import pytest
from caffe import layers as L
from conftest import REPO
from google.protobuf import text_format

from abe.net import netgen
from abe.net.model_stats import model_stats

# Paper Table 1 (CARS-196): params in 10^7, MACs in 10^9, printed with two decimals.
TABLE_1 = {"heads1_512": (0.65, 1.58), "heads8_512": (4.36, 6.28),
           "abe1_512": (0.97, 2.21), "abe8_512": (1.20, 7.46)}


@pytest.mark.parametrize("config", sorted(TABLE_1))
def test_table_1_rows(caffe, config):
    stats = model_stats(REPO / "prototxt" / config / "deploy.prototxt")
    assert (round(stats.params / 1e7, 2), round(stats.macs / 1e9, 2)) == TABLE_1[config]


def test_hand_counted_net_with_shared_blobs(caffe, tmp_path):
    """conv 3->4 (3x3, pad 1) twice with shared weights on 8x8, then IP to 10."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[5, 3, 8, 8]))
    shared = [dict(name="w"), dict(name="b")]
    n.a = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1, param=shared)
    n.b = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1, param=shared)
    n.ab = L.Concat(n.a, n.b)
    n.fc = L.InnerProduct(n.ab, num_output=10)
    path = tmp_path / "hand.prototxt"
    path.write_text(text_format.MessageToString(n.to_proto()))
    stats = model_stats(path)
    assert stats.params == (4 * 3 * 9 + 4) + (10 * 8 * 8 * 8 + 10)
    assert stats.macs == 2 * (4 * 8 * 8 * 3 * 9) + 10 * 8 * 8 * 8


def test_g_sharing_implementations_count_the_same(caffe, tmp_path):
    counts = []
    for sharing in netgen.G_SHARING:
        path = tmp_path / f"{sharing}.prototxt"
        cfg = netgen.NetConfig(M=3, embed_dim=48, crop=64, batch=2, g_sharing=sharing)
        path.write_text(text_format.MessageToString(netgen.deploy_net(cfg)))
        counts.append(model_stats(path))
    assert counts[0] == counts[1]


def test_cli_table_and_bad_path(tmp_path):
    tool = [sys.executable, str(REPO / "tools" / "model_stats.py")]
    run = subprocess.run(tool + [str(REPO / "prototxt" / "abe1_512" / "deploy.prototxt")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "ABE-1^512" in run.stdout and "0.97 x10^7" in run.stdout and "2.21 x10^9" in run.stdout
    run = subprocess.run(tool + [str(tmp_path / "missing.prototxt")], capture_output=True,
                         text=True)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
