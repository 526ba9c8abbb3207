"""Retrieval metrics of deep metric learning: Recall@K and NMI (ABE_SPEC section 4).

Recall@K here is the DML convention, really a hit rate: a query scores 1 when at least one of
its K nearest gallery items shares its class. Distances are squared Euclidean (on L2-normalized
embeddings this ranks exactly as cosine similarity).

Tie rule (deterministic, independent of the order of the data): a query's rank is one plus the
number of gallery items of *another* class whose distance is less than or *equal to* the
distance of its nearest same-class item. A different-class item tied with the nearest positive
therefore ranks before it, so exact duplicates and collapsed embeddings never inflate Recall
(an embedding that maps every image to one point scores 0, not 100%). Distances within a tiny
tolerance of each other (float32 round-off of equal distances, see ``tie_tolerance``) count as
tied. A query is excluded from its own gallery by index only; a query without any same-class
gallery item (a singleton class) is a miss at every K.

The computation goes over query chunks, so memory is O(chunk x gallery), never N x N.
"""
import numpy as np

DATASET_KS = {
    "cub": (1, 2, 4, 8),
    "cars": (1, 2, 4, 8),
    "sop": (1, 10, 100, 1000),
    "inshop": (1, 10, 20, 30, 40, 50),
}

# Relative tolerance under which two squared distances count as equal (float32 GEMM round-off
# on vectors of norm ~1 is ~1e-6; real differences between neighbours are far larger).
TIE_RTOL = 1e-5


def tie_tolerance(gallery_sqnorms):
    """Absolute tolerance for squared distances of vectors with these squared norms."""
    scale = float(gallery_sqnorms.max()) if gallery_sqnorms.size else 1.0
    return TIE_RTOL * max(scale, 1e-12) * 4.0


def first_positive_ranks(query, query_labels, gallery, gallery_labels, self_index=None,
                         chunk=256):
    """Rank (1-based, tie rule above) of the nearest same-class gallery item for each query.

    ``self_index[i]`` is the gallery row holding query i itself (excluded), or -1 for none.
    Returns an int64 array; queries without any same-class gallery item get a rank larger than
    the gallery, so they miss at every K.
    """
    query = np.ascontiguousarray(query, dtype=np.float32)
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    n_query, n_gallery = len(query), len(gallery)
    if self_index is None:
        self_index = np.full(n_query, -1, dtype=np.int64)
    self_index = np.asarray(self_index, dtype=np.int64)
    gallery_sqnorms = np.einsum("ij,ij->i", gallery, gallery)
    tolerance = tie_tolerance(gallery_sqnorms)
    ranks = np.empty(n_query, dtype=np.int64)
    for start in range(0, n_query, chunk):
        stop = min(start + chunk, n_query)
        rows = np.arange(stop - start)
        # ||q - g||^2 less the per-row constant ||q||^2: the same order and the same ties.
        dist = query[start:stop] @ gallery.T
        dist *= -2.0
        dist += gallery_sqnorms
        same = query_labels[start:stop, None] == gallery_labels[None, :]
        own = self_index[start:stop]
        has_self = own >= 0
        same[rows[has_self], own[has_self]] = False
        nearest_positive = np.where(same, dist, np.inf).min(axis=1)
        closer = dist <= (nearest_positive + tolerance)[:, None]
        closer &= ~same
        if has_self.any():  # the query itself is never a competitor either
            closer[rows[has_self], own[has_self]] = False
        ranks[start:stop] = np.count_nonzero(closer, axis=1) + 1
        ranks[start:stop][np.isinf(nearest_positive)] = n_gallery + 1
    return ranks


def recall_from_ranks(ranks, ks):
    """{K: fraction of queries whose first positive has rank <= K}."""
    ranks = np.asarray(ranks)
    return {int(k): float(np.mean(ranks <= k)) if len(ranks) else 0.0 for k in ks}


def recall_at_k(features, labels, ks, chunk=256):
    """Recall@K with every item a query against all the others (CUB, CARS, SOP)."""
    features = np.asarray(features)
    ranks = first_positive_ranks(features, labels, features, labels,
                                 self_index=np.arange(len(features)), chunk=chunk)
    return recall_from_ranks(ranks, ks)


def recall_at_k_query_gallery(features, labels, is_query, is_gallery, ks, chunk=256):
    """Recall@K of the query rows against the gallery rows (In-shop).

    A row that is both a query and a gallery item is excluded from its own ranking by index.
    """
    features = np.asarray(features)
    labels = np.asarray(labels)
    is_query = np.asarray(is_query, dtype=bool)
    is_gallery = np.asarray(is_gallery, dtype=bool)
    gallery_rows = np.flatnonzero(is_gallery)
    position_in_gallery = np.full(len(features), -1, dtype=np.int64)
    position_in_gallery[gallery_rows] = np.arange(len(gallery_rows))
    ranks = first_positive_ranks(features[is_query], labels[is_query],
                                 features[gallery_rows], labels[gallery_rows],
                                 self_index=position_in_gallery[is_query], chunk=chunk)
    return recall_from_ranks(ranks, ks)


def evaluate_recall(features, labels, ks, is_query=None, is_gallery=None, chunk=256):
    """Recall@K under the protocol the arrays imply: query/gallery when both masks are given."""
    if is_query is not None and is_gallery is not None:
        return recall_at_k_query_gallery(features, labels, is_query, is_gallery, ks, chunk)
    return recall_at_k(features, labels, ks, chunk)


def kmeans_assignments(features, n_clusters, seed=0):
    """Cluster ids from k-means (scikit-learn), seeded so a run is repeatable."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit_predict(
        np.asarray(features, dtype=np.float64))


def nmi(features, labels, seed=0):
    """NMI between the classes and a k-means clustering with as many clusters as classes."""
    from sklearn.metrics import normalized_mutual_info_score

    labels = np.asarray(labels)
    clusters = kmeans_assignments(features, len(np.unique(labels)), seed)
    return float(normalized_mutual_info_score(labels, clusters))
