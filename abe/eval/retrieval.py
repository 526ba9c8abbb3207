"""What a query retrieves: seeded test queries and their K nearest neighbours, for the
retrieval figures (the ensemble's and each learner's), and the test images to show them.

Distances are squared Euclidean, as in Recall@K; a query never retrieves itself; equal
distances are broken by index, so the figure is the same on every run.
"""
from pathlib import Path

import numpy as np

from abe.errors import UserError

DEFAULT_QUERIES = 6
DEFAULT_K = 5
LEARNER_QUERIES = 3  # queries in the per-learner figure (one row per learner)


def choose_queries(labels, count, seed=0, candidates=None):
    """``count`` query indices among ``candidates`` (default all), seeded, spread over the
    classes: one image of each class in a random class order, then a second round, ..."""
    rng = np.random.default_rng(seed)
    candidates = np.arange(len(labels)) if candidates is None else np.asarray(candidates)
    by_class = [rng.permutation(candidates[labels[candidates] == c])
                for c in rng.permutation(np.unique(labels[candidates]))]
    rounds = max(len(members) for members in by_class)
    order = [members[r] for r in range(rounds) for members in by_class if r < len(members)]
    return [int(i) for i in order[:count]]


def nearest(features, queries, k, gallery=None):
    """The ``k`` nearest ``gallery`` indices (default all) of each query, nearest first."""
    gallery = np.arange(len(features)) if gallery is None else np.asarray(gallery)
    points = features[gallery].astype(np.float64)
    result = []
    for q in queries:
        distances = np.sum((points - features[q]) ** 2, axis=1)
        distances[gallery == q] = np.inf
        order = np.argsort(distances, kind="stable")[:k]
        result.append([int(gallery[i]) for i in order if np.isfinite(distances[i])])
    return result


def retrievals(features, count=DEFAULT_QUERIES, k=DEFAULT_K, seed=0):
    """{"queries", "k", "seed", "ensemble": neighbours per query, "learners": per learner}
    for a features dict as ``abe.eval.embeddings.load`` returns it (query/gallery protocols:
    queries from the query set, neighbours from the gallery)."""
    labels = features["labels"]
    is_query, is_gallery = features.get("is_query"), features.get("is_gallery")
    candidates = None if is_query is None else np.flatnonzero(is_query)
    gallery = None if is_gallery is None else np.flatnonzero(is_gallery)
    queries = choose_queries(labels, count, seed, candidates)
    return {"queries": queries, "k": k, "seed": seed,
            "ensemble": nearest(features["features"], queries, k, gallery),
            "learners": [nearest(x, queries, k, gallery) for x in features["learners"]]}


def shown_indices(found):
    """Every image index a retrieval figure shows."""
    shown = set(found["queries"])
    for rows in [found["ensemble"], *found["learners"]]:
        shown.update(i for row in rows for i in row)
    return sorted(shown)


def load_images(lmdbs, indices, labels):
    """{index: H x W x 3 BGR image} of the test records at ``indices`` of the LMDBs read one
    after another (the order of a features file); a label that differs from the features'
    means the two do not belong together (UserError)."""
    from abe.data.lmdb_store import iter_records, parse_datum

    wanted, images, position = set(indices), {}, 0
    for path in lmdbs:
        for _, value in iter_records(path):
            if position in wanted:
                image, label = parse_datum(value)
                if position >= len(labels) or label != labels[position]:
                    raise UserError(f"the features do not belong to {path}: its image "
                                    f"{position} has label {label}")
                images[position] = image
            position += 1
    if position != len(labels):
        raise UserError(f"the features hold {len(labels)} images, the LMDBs {position}")
    return images


def write_figures(features, lmdbs, path, count=DEFAULT_QUERIES, k=DEFAULT_K, seed=0):
    """``path`` (the ensemble's retrievals) and, with two or more learners,
    ``<stem>_learners.png`` (each learner's, for the first LEARNER_QUERIES queries)."""
    from abe.eval import plots

    found = retrievals(features, count, k, seed)
    labels = features["labels"]
    images = load_images(lmdbs, shown_indices(found), labels)
    path = Path(path)
    written = [plots.retrieval_figure(images, labels, found["queries"], found["ensemble"], path)]
    if len(found["learners"]) >= 2:
        few = slice(0, LEARNER_QUERIES)
        written.append(plots.learner_retrieval_figure(
            images, labels, found["queries"][few], [rows[few] for rows in found["learners"]],
            path.with_name(f"{path.stem}_learners.png")))
    return written
