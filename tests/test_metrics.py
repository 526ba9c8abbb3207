"""Recall@K and NMI against independent brute-force computations (ties, duplicates, singletons,
the In-shop query/gallery protocol)."""
import math

import numpy as np
import pytest

from abe.eval import metrics


def brute_force_recall(query, query_labels, gallery, gallery_labels, ks, self_index):
    """Per query: sort every other gallery item by (exact distance, positives last) and look
    at the first K. Integer-valued features make the float64 distances exact."""
    hits = {k: 0 for k in ks}
    for i, q in enumerate(query):
        order = []
        for j, g in enumerate(gallery):
            if j == self_index[i]:
                continue
            distance = float(np.sum((q.astype(np.float64) - g) ** 2))
            positive = gallery_labels[j] == query_labels[i]
            order.append((distance, positive))
        order.sort()  # False < True: a negative tied with a positive goes first
        for k in ks:
            hits[k] += any(positive for _, positive in order[:k])
    return {k: hits[k] / len(query) for k in ks}


def integer_features(rng, n, dim, values=3):
    """Few distinct small integers: many exact ties and duplicate vectors."""
    return rng.integers(0, values, size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_recall_matches_brute_force_with_ties_and_duplicates(seed):
    rng = np.random.default_rng(seed)
    features = integer_features(rng, 120, 3)
    features[10:20] = features[0]  # exact duplicates across classes
    labels = rng.integers(0, 15, size=len(features))
    ks = (1, 2, 4, 8, 16)
    got = metrics.recall_at_k(features, labels, ks, chunk=17)
    want = brute_force_recall(features, labels, features, labels, ks, np.arange(len(features)))
    assert got == pytest.approx(want)
    # the data has ties: the tie rule is exercised, not bypassed
    d = ((features[:, None] - features[None]) ** 2).sum(-1)
    assert (d == 0).sum() > len(features)


def test_tie_rule_counts_tied_negatives_first():
    features = np.array([[0, 0], [1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 2])
    # query 0: the positive (row 1) and two negatives (rows 2, 3) all at distance 1
    ranks = metrics.first_positive_ranks(features, labels, features, labels,
                                         self_index=np.arange(4))
    assert ranks[0] == 3
    assert metrics.recall_at_k(features, labels, (1, 2, 3))[3] == pytest.approx(0.5)


def test_order_of_the_data_does_not_change_recall():
    rng = np.random.default_rng(7)
    features = integer_features(rng, 200, 2)
    labels = rng.integers(0, 20, size=200)
    ks = (1, 2, 4, 8)
    perm = rng.permutation(200)
    assert metrics.recall_at_k(features, labels, ks) == metrics.recall_at_k(
        features[perm], labels[perm], ks)


def test_collapsed_embedding_scores_zero_and_query_is_excluded_by_index():
    labels = np.repeat(np.arange(5), 4)
    collapsed = np.ones((20, 8), dtype=np.float32)
    assert metrics.recall_at_k(collapsed, labels, (1, 2)) == {1: 0.0, 2: 0.0}
    # one class only: all tied, only positives around, the query itself is not its own hit
    same_class = np.zeros(6, dtype=int)
    assert metrics.recall_at_k(collapsed[:6], same_class, (1,)) == {1: 1.0}
    assert metrics.recall_at_k(collapsed[:1], same_class[:1], (1,)) == {1: 0.0}


def test_singleton_classes_are_misses():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((30, 4)).astype(np.float32)
    labels = np.arange(30)
    labels[:10] = 0  # one class of 10, twenty singletons
    got = metrics.recall_at_k(features, labels, (1, 29))
    assert got[29] == pytest.approx(10 / 30)
    want = brute_force_recall(features, labels, features, labels, (1, 29), np.arange(30))
    assert got == pytest.approx(want)


def test_chunk_size_does_not_matter():
    rng = np.random.default_rng(11)
    features = rng.standard_normal((301, 16)).astype(np.float32)
    labels = rng.integers(0, 30, size=301)
    ks = (1, 10, 100)
    reference = metrics.recall_at_k(features, labels, ks, chunk=1000)
    for chunk in (1, 7, 64):
        assert metrics.recall_at_k(features, labels, ks, chunk=chunk) == reference


def test_query_gallery_protocol_matches_brute_force():
    rng = np.random.default_rng(5)
    features = integer_features(rng, 150, 3)
    labels = rng.integers(0, 25, size=150)
    is_query = rng.random(150) < 0.5
    is_gallery = ~is_query
    is_gallery[:5] = True  # a few rows are both: excluded from their own ranking by index
    ks = (1, 10, 20, 30, 40, 50)
    got = metrics.recall_at_k_query_gallery(features, labels, is_query, is_gallery, ks, chunk=9)
    gallery_rows = np.flatnonzero(is_gallery)
    self_index = [int(np.flatnonzero(gallery_rows == r)[0]) if is_gallery[r] else -1
                  for r in np.flatnonzero(is_query)]
    want = brute_force_recall(features[is_query], labels[is_query], features[gallery_rows],
                              labels[gallery_rows], ks, self_index)
    assert got == pytest.approx(want)
    assert metrics.evaluate_recall(features, labels, ks, is_query, is_gallery) == got


def test_query_gallery_has_no_exclusion_for_disjoint_sets():
    # the same image as query and as gallery item (different rows): a hit at rank 1
    features = np.array([[0.0, 1.0], [0.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    labels = np.array([1, 1, 2])
    got = metrics.recall_at_k_query_gallery(features, labels, [True, False, False],
                                            [False, True, True], (1,))
    assert got == {1: 1.0}


def brute_force_nmi(a, b):
    """NMI with the arithmetic-mean normalization, from the contingency table."""
    n = len(a)
    joint = {}
    for x, y in zip(a, b):
        joint[(x, y)] = joint.get((x, y), 0) + 1
    pa = {x: np.sum(a == x) / n for x in set(a)}
    pb = {y: np.sum(b == y) / n for y in set(b)}
    mutual = sum(c / n * math.log(c / n / (pa[x] * pb[y])) for (x, y), c in joint.items())
    entropy_a = -sum(p * math.log(p) for p in pa.values())
    entropy_b = -sum(p * math.log(p) for p in pb.values())
    return mutual / ((entropy_a + entropy_b) / 2)


def test_nmi_matches_brute_force_on_the_kmeans_clustering():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(6), 20)
    features = rng.standard_normal((120, 5)) * 3 + rng.standard_normal((6, 5))[labels]
    clusters = metrics.kmeans_assignments(features, 6)
    assert metrics.nmi(features, labels) == pytest.approx(brute_force_nmi(labels, clusters))
    separated = np.eye(6)[labels] * 100 + rng.standard_normal((120, 6))
    assert metrics.nmi(separated, labels) == pytest.approx(1.0)
