"""Fetching BVLC's ImageNet-pretrained GoogLeNet, checked by sha1, never half-written.

BVLC's download server has been down for days at a time (BVLC/caffe issues #5159, #6430,
#6864), so every known public copy is tried in turn; each must match BVLC's sha1.
"""
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from abe.errors import EnvironmentFailure, UserError

GOOGLENET_SHA1 = "405fc5acd08a3bb12de8ee5e23a96bec22f08204"
GOOGLENET_MIRRORS = (
    # BVLC's own (models/bvlc_googlenet/readme.md)
    "http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel",
    # NVIDIA's copy, the one NVIDIA's jetson-inference download scripts fetch
    "https://nvidia.box.com/shared/static/at8b1105ww1c5h7p30j5ko8qfnxrs0eg.caffemodel",
)


def default_weights():
    """Where the tools keep bvlc_googlenet.caffemodel: $ABE_WEIGHTS, else the repo's weights/
    (a read-only image or checkout keeps its weights in a folder named by ABE_WEIGHTS)."""
    folder = os.environ.get("ABE_WEIGHTS") or Path(__file__).resolve().parents[2] / "weights"
    return Path(folder) / "bvlc_googlenet.caffemodel"


class FetchError(EnvironmentFailure):
    """No mirror served a file with the right sha1; the message is one line for users."""


def sha1_of(path, chunk=1 << 20):
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url, out, timeout, progress, desc):
    """Write the body at ``url`` into the open file ``out``; the reason it failed, or None."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            bar = progress(total=total or None, unit="B", unit_scale=True,
                           desc=desc) if progress else None
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                if bar:
                    bar.update(len(block))
            if bar:
                bar.close()
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", e))
    return None


def fetch(dest, urls=GOOGLENET_MIRRORS, sha1=GOOGLENET_SHA1, timeout=30, progress=None):
    """Download to ``dest`` from the first of ``urls`` that serves a file with ``sha1``, unless
    a file with that sha1 is already there. Returns (dest, the URL that served it or None).

    Each download goes to a temporary file beside ``dest`` and is renamed only after the sha1
    matches, so ``dest`` is either absent or complete and verified.
    """
    dest = Path(dest)
    if dest.exists():
        if sha1_of(dest) == sha1:
            return dest, None
        raise UserError(f"{dest} exists but its sha1 is not {sha1}; move it away to download "
                        f"again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=dest.name + ".part-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                reason = download(url, out, timeout, progress, dest.name)
            if reason is None:
                got = sha1_of(tmp)
                if got == sha1:
                    os.replace(tmp, dest)
                    return dest, url
                reason = f"sha1 mismatch (got {got})"
            failures.append(f"{url}: {reason}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise FetchError(f"cannot fetch {dest.name}: no mirror served it with sha1 {sha1} (no "
                     f"network?): {'; '.join(failures)}; a copy put at {dest} works as well")
