"""Fetching BVLC's ImageNet-pretrained GoogLeNet, checked by sha1, never half-written."""
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

GOOGLENET_URL = "http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel"
GOOGLENET_SHA1 = "405fc5acd08a3bb12de8ee5e23a96bec22f08204"


class FetchError(RuntimeError):
    """The weights could not be fetched or did not verify; the message is one line for users."""


def sha1_of(path, chunk=1 << 20):
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(dest, url=GOOGLENET_URL, sha1=GOOGLENET_SHA1, timeout=30, progress=None):
    """Download ``url`` to ``dest`` unless a file with the right sha1 is already there.

    The download goes to a temporary file beside ``dest`` and is renamed only after the sha1
    matches, so ``dest`` is either absent or complete and verified.
    """
    dest = Path(dest)
    if dest.exists():
        if sha1_of(dest) == sha1:
            return dest
        raise FetchError(f"{dest} exists but its sha1 is not {sha1}; remove it to download again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".part-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0)
                    bar = progress(total=total or None, unit="B", unit_scale=True,
                                   desc=dest.name) if progress else None
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        if bar:
                            bar.update(len(block))
                    if bar:
                        bar.close()
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise FetchError(f"cannot fetch {url}: {reason} (no network?)") from None
        got = sha1_of(tmp)
        if got != sha1:
            raise FetchError(f"sha1 mismatch for {url}: got {got}, expected {sha1}")
        os.replace(tmp, dest)
        return dest
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
