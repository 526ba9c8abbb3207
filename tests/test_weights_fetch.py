"""weights/fetch_googlenet.py: sha1-checked download that never leaves a partial file behind."""
import functools
import hashlib
import http.server
import subprocess
import sys
import threading

import pytest

from conftest import REPO

FETCH = REPO / "weights" / "fetch_googlenet.py"
PAYLOAD = b"stand-in caffemodel bytes\x00\x01" * 1000


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "model.caffemodel").write_bytes(PAYLOAD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/model.caffemodel"
    httpd.shutdown()


def fetch(*args):
    return subprocess.run([sys.executable, str(FETCH), *args], capture_output=True, text=True, timeout=60)


def messages(run):
    """The tool's own lines on stderr (tqdm's progress bar aside)."""
    return [line for line in run.stderr.splitlines() if line.startswith("fetch_googlenet:")]


def test_download_verified_and_renamed(server, tmp_path):
    out = tmp_path / "w" / "bvlc_googlenet.caffemodel"
    run = fetch("--out", str(out), "--url", server, "--sha1", hashlib.sha1(PAYLOAD).hexdigest())
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == PAYLOAD
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_sha1_mismatch_leaves_nothing(server, tmp_path):
    out = tmp_path / "w" / "bvlc_googlenet.caffemodel"
    run = fetch("--out", str(out), "--url", server)  # the real GoogLeNet sha1 cannot match
    assert run.returncode == 1
    [message] = messages(run)
    assert "sha1 mismatch" in message
    assert list(out.parent.iterdir()) == []


def test_no_network_one_line(tmp_path):
    out = tmp_path / "bvlc_googlenet.caffemodel"
    run = fetch("--out", str(out), "--url", "http://127.0.0.1:9/bvlc_googlenet.caffemodel")
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1
    [message] = messages(run)
    assert "cannot fetch" in message and "no network" in message
    assert list(tmp_path.iterdir()) == []


def test_existing_verified_file_is_kept(tmp_path):
    out = tmp_path / "bvlc_googlenet.caffemodel"
    out.write_bytes(PAYLOAD)
    run = fetch("--out", str(out), "--url", "http://127.0.0.1:9/x", "--sha1", hashlib.sha1(PAYLOAD).hexdigest())
    assert run.returncode == 0 and out.read_bytes() == PAYLOAD


def test_mirrors_tried_in_turn_and_the_serving_one_named(server, tmp_path):
    """A dead server, then one serving other bytes, then the right copy: the third serves it."""
    wrong = server.replace("model.caffemodel", "other.caffemodel")
    (tmp_path / "served" / "other.caffemodel").write_bytes(b"not the model")
    out = tmp_path / "w" / "bvlc_googlenet.caffemodel"
    run = fetch("--out", str(out), "--url", "http://127.0.0.1:9/x.caffemodel", "--url", wrong,
                "--url", server, "--sha1", hashlib.sha1(PAYLOAD).hexdigest())
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == PAYLOAD
    assert messages(run) == [f"fetch_googlenet: served by {server}, sha1 verified"]
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_every_known_mirror_is_tried_before_giving_up(tmp_path):
    """Offline (the mirrors pointed at a closed local port): one line naming each one tried."""
    from abe.net import pretrained

    out = tmp_path / "bvlc_googlenet.caffemodel"
    dead = [f"http://127.0.0.1:9/{i}/bvlc_googlenet.caffemodel"
            for i in range(len(pretrained.GOOGLENET_MIRRORS))]
    with pytest.raises(pretrained.FetchError) as failure:
        pretrained.fetch(out, urls=dead, timeout=5)
    assert all(url in str(failure.value) for url in dead)
    assert "\n" not in str(failure.value)
    assert list(tmp_path.iterdir()) == []
    assert len(pretrained.GOOGLENET_MIRRORS) >= 2
    assert pretrained.GOOGLENET_MIRRORS[0].startswith("http://dl.caffe.berkeleyvision.org/")
