"""Test-time embeddings: run a deploy net over a test LMDB, keep them as a features file.

A features file (``.npz``, loaded without pickle) holds ``features`` (N x D, the ensemble
embedding), ``labels`` (N), optionally boolean ``is_query``/``is_gallery`` (query/gallery
protocols such as In-shop) and ``learner0``, ``learner1``, ... (each learner's embedding).
"""
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from abe.errors import UserError
from abe.eval.metrics import check_embeddings

ENSEMBLE_BLOB = "embedding"
LEARNER_BLOB = re.compile(r"^learner(\d+)/embedding$")
ATTENTION_BLOB = re.compile(r"^learner(\d+)/attention$")
LEARNER_ARRAY = re.compile(r"^learner(\d+)$")


NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an empty one ends at once)
NPY_MAGIC = b"\x93NUMPY"


class FeaturesError(UserError, ValueError):
    """A features file or array that cannot be evaluated; the message is one line for users."""


def learner_blobs(net, pattern=LEARNER_BLOB):
    """The per-learner blobs of a net whose names match ``pattern``, in learner order."""
    found = sorted((int(m.group(1)), name) for name in net.blobs if (m := pattern.match(name)))
    return [name for _, name in found]


def forward(net, images):
    """One forward pass of ``images`` (N x 3 x H x W), the input blob reshaped to fit them."""
    net.blobs["data"].reshape(*images.shape)
    net.blobs["data"].data[...] = images
    net.forward()


def extract(net, batches, blobs=None, total=None, progress=True):
    """Forward every batch of ``(images, labels)``; return ({blob: N x D float32}, labels).

    The net's input blob ``data`` is reshaped to each batch, so the last partial batch is
    forwarded as it is (no padding, no dropped images).
    """
    from tqdm import tqdm

    blobs = list(blobs or [ENSEMBLE_BLOB] + learner_blobs(net))
    outputs = {name: [] for name in blobs}
    all_labels = []
    for images, labels in tqdm(batches, total=total, desc="embeddings", unit="batch",
                               disable=not progress):
        forward(net, images)
        for name in blobs:
            outputs[name].append(net.blobs[name].data.reshape(len(images), -1).copy())
        all_labels.append(np.asarray(labels, dtype=np.int64))
    if not all_labels:
        raise FeaturesError("no images to embed (empty LMDB?)")
    return {k: np.concatenate(v) for k, v in outputs.items()}, np.concatenate(all_labels)


def save(path, features, labels, learners=(), is_query=None, is_gallery=None):
    """Write a features file atomically (temporary name in the same folder, then rename)."""
    path = Path(path)
    arrays = {"features": features, "labels": labels}
    arrays.update({f"learner{m}": x for m, x in enumerate(learners)})
    if is_query is not None:
        arrays.update(is_query=np.asarray(is_query, bool), is_gallery=np.asarray(is_gallery, bool))
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load(path):
    """Read and check a features file: dict with features, labels, learners (list), masks."""
    arrays = read_npz(path)
    for required in ("features", "labels"):
        if required not in arrays:
            raise FeaturesError(f"{path} has no array '{required}' (has: {sorted(arrays)})")
    learners = [arrays[name] for name in sorted(
        (n for n in arrays if LEARNER_ARRAY.match(n)), key=lambda n: int(n[len("learner"):]))]
    check(arrays["features"], arrays["labels"], learners, arrays.get("is_query"),
          arrays.get("is_gallery"), source=str(path))
    return {"features": arrays["features"], "labels": arrays["labels"], "learners": learners,
            "is_query": arrays.get("is_query"), "is_gallery": arrays.get("is_gallery")}


def read_npz(path):
    """{name: array} of an .npz, never unpickling; anything else is a one-line FeaturesError."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as error:
        raise FeaturesError(f"cannot read {path}: {error.strerror}") from None
    if magic.startswith(NPY_MAGIC):
        raise FeaturesError(f"{path} is a single .npy array; a features file is an .npz with "
                            "arrays 'features' and 'labels' (eval_recall.py --save-features)")
    if not magic.startswith(NPZ_MAGIC):
        raise FeaturesError(f"{path} is not an .npz features file (no zip archive header)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except ValueError as error:
        if "pickle" in str(error):
            raise FeaturesError(f"{path} holds an array of Python objects, which is never "
                                "unpickled: save numeric arrays") from None
        raise FeaturesError(f"{path} is a damaged .npz ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise FeaturesError(f"{path} is a truncated or damaged .npz ({error})") from None


def check(features, labels, learners=(), is_query=None, is_gallery=None, source="features"):
    """Raise FeaturesError, one line, when the arrays cannot be evaluated together."""
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise FeaturesError(f"{source}: 'features' must be a non-empty N x D array, "
                            f"got shape {features.shape}")
    n = len(features)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise FeaturesError(f"{source}: 'labels' must be {n} integers (one per row of "
                            f"'features'), got {labels.dtype} of shape {labels.shape}")
    for m, learner in enumerate(learners):
        if learner.ndim != 2 or len(learner) != n or learner.shape[1] == 0:
            raise FeaturesError(f"{source}: 'learner{m}' must be {n} x D, got {learner.shape}")
    for name, x in [("features", features)] + [(f"learner{m}", x) for m, x in enumerate(learners)]:
        check_embeddings(x, f"{source}: '{name}'")
    if (is_query is None) != (is_gallery is None):
        raise FeaturesError(f"{source}: give both 'is_query' and 'is_gallery' or neither")
    for name, mask in (("is_query", is_query), ("is_gallery", is_gallery)):
        if mask is not None and (mask.shape != (n,) or mask.dtype != bool or not mask.any()):
            raise FeaturesError(f"{source}: '{name}' must be {n} booleans, at least one true")


def attention_maps(net, images):
    """Each learner's attention mask (blob ``learner{m}/attention``) for ``images``."""
    names = learner_blobs(net, ATTENTION_BLOB)
    if not names:
        raise FeaturesError("the net has no learner{m}/attention blobs (not an ABE net?)")
    forward(net, images)
    return [net.blobs[name].data.copy() for name in names]


def attention_examples(net, lmdb, n_images):
    """(images, masks per learner) of ``n_images`` test images of different classes."""
    from abe.data.pair_layer import iter_test_batches

    crop = net.blobs["data"].data.shape[-1]
    chosen, seen = [], set()
    for images, labels in iter_test_batches(lmdb, 100, crop=crop):
        for image, label in zip(images, labels):
            if label not in seen:
                seen.add(label)
                chosen.append(image)
        if len(chosen) >= n_images:
            break
    images = np.stack(chosen[:n_images])
    return images, attention_maps(net, images)
