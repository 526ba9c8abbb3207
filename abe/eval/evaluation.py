"""Evaluation of a trained net the way the paper reports it: Recall@K (and NMI on request) of
the ensemble embedding and of each learner, on the test split's unseen classes."""
import numpy as np

from abe.errors import UserError
from abe.eval import embeddings, metrics

DEFAULT_BATCH = 50


def default_ks(dataset):
    """The paper's Ks for a dataset name (ABE_SPEC section 4); CUB/CARS' for anything else."""
    return metrics.DATASET_KS.get(dataset, metrics.DATASET_KS["cub"])


def embed_test_set(net, lmdbs, batch_size=DEFAULT_BATCH, mean=(104, 117, 123), progress=True):
    """Embeddings of one test LMDB, or of query + gallery LMDBs (In-shop) with their masks.

    Returns the dict that ``embeddings.load`` returns for a features file.
    """
    from abe.data.pair_layer import iter_test_batches

    crop = net.blobs["data"].data.shape[-1]
    for path in lmdbs:
        check_crop(path, crop)
    parts = []
    for path in lmdbs:
        total = -(-len(test_labels(path)) // batch_size)
        blobs, labels = embeddings.extract(
            net, iter_test_batches(path, batch_size, crop=crop, mean=mean), total=total,
            progress=progress)
        parts.append((blobs, labels))
    names = list(parts[0][0])
    merged = {name: np.concatenate([blobs[name] for blobs, _ in parts]) for name in names}
    labels = np.concatenate([labels for _, labels in parts])
    result = {"features": merged[embeddings.ENSEMBLE_BLOB], "labels": labels,
              "learners": [merged[name] for name in names if name != embeddings.ENSEMBLE_BLOB],
              "is_query": None, "is_gallery": None}
    if len(parts) == 2:
        n_query = len(parts[0][1])
        result["is_query"] = np.arange(len(labels)) < n_query
        result["is_gallery"] = ~result["is_query"]
    return result


def test_labels(path):
    """The labels of a test LMDB; one that is not a readable, non-empty LMDB of Caffe Datums
    is a UserError (LMDB and protobuf errors would otherwise surface mid-evaluation)."""
    import lmdb
    from google.protobuf.message import DecodeError

    from abe.data.pair_layer import read_labels

    try:
        labels = read_labels(path)
    except (lmdb.Error, DecodeError) as error:
        raise UserError(f"{path} is not a readable LMDB of Caffe Datums "
                        f"({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if not len(labels):
        raise UserError(f"{path} is an empty LMDB")
    return labels


def check_crop(path, crop):
    """Refuse a crop larger than the images of an LMDB (its first record: make_lmdb.py writes
    images of one size), before anything is embedded."""
    from abe.data.lmdb_store import datum_header, iter_records

    for _, value in iter_records(path):
        _, height, width = datum_header(value)
        if crop > min(height, width):
            raise UserError(f"crop {crop} of the net is larger than the {height}x{width} images "
                            f"of {path}")
        return


def check_test_set(lmdbs, ks):
    """Refuse, before any embedding, test LMDBs that are unreadable or too small for ``ks``:
    one LMDB is all-vs-all (N - 1 items per query), two are query and gallery."""
    sizes = [len(test_labels(path)) for path in lmdbs]
    metrics.check_ks(ks, sizes[0] - 1 if len(sizes) == 1 else sizes[1])


def evaluate(features, ks, with_nmi=False, progress=False):
    """{"recall": {"K": fraction}, "nmi"?, "learners": [...], "queries": n, "protocol": ...}
    for a features dict (ensemble, labels, learners, masks)."""
    from tqdm import tqdm

    def one(x, name):
        recall = metrics.evaluate_recall(x, features["labels"], ks, features["is_query"],
                                         features["is_gallery"], name=name)
        entry = {"recall": {str(k): v for k, v in recall.items()}}
        if with_nmi:
            entry["nmi"] = metrics.nmi(x, features["labels"])
        return entry

    sets = [("features", features["features"])] + [
        (f"learner{m}", x) for m, x in enumerate(features["learners"])]
    metrics.check_ks(ks, metrics.gallery_size(len(features["labels"]), features["is_query"],
                                              features["is_gallery"]))
    for name, x in sets:  # refuse before spending time on any of them
        metrics.check_embeddings(x, name)
    entries = [one(x, name) for name, x in tqdm(sets, desc="Recall@K", unit="embedding",
                                                disable=not progress)]
    query_gallery = features["is_query"] is not None
    result = dict(entries[0])
    result.update(learners=entries[1:],
                  protocol="query/gallery" if query_gallery else "all-vs-all",
                  queries=int(np.sum(features["is_query"]) if query_gallery
                              else len(features["labels"])))
    return result


def format_table(result):
    """An aligned text table: one row for the ensemble and one per learner, Recall in %."""
    ks = list(result["recall"])
    with_nmi = "nmi" in result
    header = ["embedding"] + [f"R@{k}" for k in ks] + (["NMI"] if with_nmi else [])
    rows = [("ensemble", result)] + [(f"learner{m}", e) for m, e in enumerate(result["learners"])]
    lines = [header]
    for name, entry in rows:
        cells = [f"{100 * entry['recall'][k]:.2f}" for k in ks]
        if with_nmi:
            cells.append(f"{100 * entry['nmi']:.2f}")
        lines.append([name] + cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [f"{result['protocol']}, {result['queries']} queries"]
    for line in lines:
        text.append("  ".join([line[0].ljust(widths[0])] +
                              [cell.rjust(w) for cell, w in zip(line[1:], widths[1:])]))
    return "\n".join(text)
