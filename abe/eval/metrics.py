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

Refused (``UserError``), because no honest number comes out of them: a K larger than the
gallery a query ranks (all-vs-all: N - 1 items; query/gallery: the gallery, less the query
itself where it is also a gallery item), since at such a K every query with any same-class item
is a hit whatever the embedding; no query at all; embeddings with NaN or inf, or so large that
their squared distances overflow float32 (``check_embeddings``).

The computation goes over query chunks, so memory is O(chunk x gallery), never N x N.
"""
import numpy as np

from abe.errors import UserError

DATASET_KS = {
    "cub": (1, 2, 4, 8),
    "cars": (1, 2, 4, 8),
    "sop": (1, 10, 100, 1000),
    "inshop": (1, 10, 20, 30, 40, 50),
    "digits": (1, 2, 4, 8),  # the offline demo set, evaluated like CUB/CARS
}

# Relative tolerance under which two squared distances count as equal: float32 round-off of
# the same distance computed twice is ~1e-7 relative; real gaps between neighbours are larger.
TIE_RTOL = 1e-6
CHUNK_ELEMENTS = 1 << 26  # distances held at once (256 MB of float32)
MISS = np.iinfo(np.int64).max  # the rank of a query without a same-class item: never <= K
# Squared distances ||g||^2 - 2 q.g stay within 3x the largest squared norm: keep that finite.
MAX_SQUARED_NORM = float(np.finfo(np.float32).max) / 4


def check_embeddings(x, name="features"):
    """Refuse (UserError, one line) embeddings that give no meaningful float32 distances."""
    x = np.asarray(x)
    if x.ndim != 2 or not (np.issubdtype(x.dtype, np.floating)
                           or np.issubdtype(x.dtype, np.integer)):
        raise UserError(f"{name}: must be an N x D array of real numbers, got {x.dtype} of "
                        f"shape {x.shape}")
    with np.errstate(all="ignore"):  # overflow is what is being checked, not a warning
        finite = np.isfinite(x.astype(np.float32, copy=False)).all(axis=1)
        if not finite.all():
            raise UserError(f"{name}: row {np.argmin(finite)} holds NaN or inf "
                            f"({np.count_nonzero(~finite)} of {len(x)} rows)")
        squared_norms = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    if len(x) and squared_norms.max() > MAX_SQUARED_NORM:
        row = int(np.argmax(squared_norms))
        raise UserError(f"{name}: values too large for float32 distances (row {row} has squared "
                        f"norm {squared_norms[row]:.3g}, at most {MAX_SQUARED_NORM:.3g})")


def gallery_size(n, is_query=None, is_gallery=None):
    """Items each query ranks, at the least: N - 1 all-vs-all; the gallery, less the query
    itself where a query is also a gallery item."""
    if is_query is None or is_gallery is None:
        return n - 1
    is_query, is_gallery = np.asarray(is_query, bool), np.asarray(is_gallery, bool)
    return int(is_gallery.sum()) - int((is_query & is_gallery).any())


def check_ks(ks, gallery_size):
    """Refuse Ks that the gallery cannot support (see the module's docstring)."""
    if gallery_size < 1:
        raise UserError("the gallery is empty: each query needs at least one other item")
    if max(ks) > gallery_size:
        raise UserError(f"K={max(ks)} is larger than the gallery ({gallery_size} items per "
                        f"query), where every query with a same-class item is a hit: use Ks "
                        f"up to {gallery_size}")


def tie_tolerance(gallery_sqnorms):
    """Absolute tolerance for squared distances of vectors with these squared norms."""
    scale = float(gallery_sqnorms.max()) if gallery_sqnorms.size else 1.0
    return TIE_RTOL * max(scale, 1e-12) * 4.0


def default_chunk(n_gallery):
    return int(max(16, min(1024, CHUNK_ELEMENTS // max(n_gallery, 1))))


class ClassIndex:
    """The gallery rows of each class, for gathering a query chunk's positives."""

    def __init__(self, gallery_labels):
        self.order = np.argsort(gallery_labels, kind="stable")
        self.sorted_labels = np.asarray(gallery_labels)[self.order]

    def positives(self, query_labels, self_index):
        """(rows, cols): every same-class gallery item of each query, the query itself left
        out; rows ascending, so per-query groups are contiguous."""
        lo = np.searchsorted(self.sorted_labels, query_labels, side="left")
        hi = np.searchsorted(self.sorted_labels, query_labels, side="right")
        counts = hi - lo
        rows = np.repeat(np.arange(len(query_labels)), counts)
        # position within each query's run of the sorted gallery: lo[row] + 0, 1, 2, ...
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        cols = self.order[np.repeat(lo, counts) + offsets]
        keep = cols != self_index[rows]
        return rows[keep], cols[keep]


def first_positive_ranks(query, query_labels, gallery, gallery_labels, self_index=None,
                         chunk=None):
    """Rank (1-based, tie rule above) of the nearest same-class gallery item for each query.

    ``self_index[i]`` is the gallery row holding query i itself (excluded), or -1 for none.
    Returns an int64 array; queries without any same-class gallery item get ``MISS``, so they
    miss at every K.
    """
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    n_query, n_gallery = len(query), len(gallery)
    chunk = chunk or default_chunk(n_gallery)
    self_index = (np.full(n_query, -1, dtype=np.int64) if self_index is None
                  else np.asarray(self_index, dtype=np.int64))
    # ||q - g||^2 less the per-query constant ||q||^2 (same order, same ties) in one GEMM:
    # [q, 1] . [-2 g, ||g||^2] = ||g||^2 - 2 q.g
    gallery = np.asarray(gallery, dtype=np.float32)
    gallery_sqnorms = np.einsum("ij,ij->i", gallery, gallery)
    augmented_gallery = np.hstack([-2.0 * gallery, gallery_sqnorms[:, None]]).T.copy()
    tolerance = tie_tolerance(gallery_sqnorms)
    classes = ClassIndex(gallery_labels)
    ranks = np.full(n_query, MISS, dtype=np.int64)
    for start in range(0, n_query, chunk):
        stop = min(start + chunk, n_query)
        block = np.ones((stop - start, query.shape[1] + 1), dtype=np.float32)
        block[:, :-1] = query[start:stop]
        dist = block @ augmented_gallery
        own = self_index[start:stop]
        rows, cols = classes.positives(query_labels[start:stop], own)
        if not len(rows):
            continue
        positive_dist = dist[rows, cols]
        queries, first = np.unique(rows, return_index=True)
        threshold = np.minimum.reduceat(positive_dist, first) + tolerance
        candidates = dist if len(queries) == len(dist) else dist[queries]
        within = np.count_nonzero(candidates <= threshold[:, None], axis=1)
        # not competitors: the positives within the threshold and the query itself
        within -= np.add.reduceat(positive_dist <= threshold[np.searchsorted(queries, rows)],
                                  first)
        has_self = own[queries] >= 0
        self_dist = dist[queries[has_self], own[queries][has_self]]
        within[has_self] -= self_dist <= threshold[has_self]
        ranks[start + queries] = within + 1
    return ranks


def recall_from_ranks(ranks, ks):
    """{K: fraction of queries whose first positive has rank <= K}."""
    ranks = np.asarray(ranks)
    if not len(ranks):
        raise UserError("no queries: Recall@K is not defined")
    return {int(k): float(np.mean(ranks <= k)) for k in ks}


def recall_at_k(features, labels, ks, chunk=None, name="features"):
    """Recall@K with every item a query against all the others (CUB, CARS, SOP)."""
    features = np.asarray(features)
    check_embeddings(features, name)
    check_ks(ks, gallery_size(len(features)))
    ranks = first_positive_ranks(features, labels, features, labels,
                                 self_index=np.arange(len(features)), chunk=chunk)
    return recall_from_ranks(ranks, ks)


def recall_at_k_query_gallery(features, labels, is_query, is_gallery, ks, chunk=None,
                              name="features"):
    """Recall@K of the query rows against the gallery rows (In-shop).

    A row that is both a query and a gallery item is excluded from its own ranking by index.
    """
    features = np.asarray(features)
    check_embeddings(features, name)
    labels = np.asarray(labels)
    is_query = np.asarray(is_query, dtype=bool)
    is_gallery = np.asarray(is_gallery, dtype=bool)
    check_ks(ks, gallery_size(len(features), is_query, is_gallery))
    gallery_rows = np.flatnonzero(is_gallery)
    position_in_gallery = np.full(len(features), -1, dtype=np.int64)
    position_in_gallery[gallery_rows] = np.arange(len(gallery_rows))
    ranks = first_positive_ranks(features[is_query], labels[is_query],
                                 features[gallery_rows], labels[gallery_rows],
                                 self_index=position_in_gallery[is_query], chunk=chunk)
    return recall_from_ranks(ranks, ks)


def evaluate_recall(features, labels, ks, is_query=None, is_gallery=None, chunk=None,
                    name="features"):
    """Recall@K under the protocol the arrays imply: query/gallery when both masks are given."""
    if is_query is not None and is_gallery is not None:
        return recall_at_k_query_gallery(features, labels, is_query, is_gallery, ks, chunk, name)
    return recall_at_k(features, labels, ks, chunk, name)


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
