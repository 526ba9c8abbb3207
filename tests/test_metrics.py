"""Recall@K and NMI against independent brute-force computations (ties, duplicates, singletons,
the In-shop query/gallery protocol)."""
import math

import numpy as np
import pytest

from abe.errors import UserError
from abe.eval import evaluation, metrics


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


def test_singleton_classes_are_misses():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((30, 4)).astype(np.float32)
    labels = np.arange(30)
    labels[:10] = 0  # one class of 10, twenty singletons
    got = metrics.recall_at_k(features, labels, (1, 29))
    assert got[29] == pytest.approx(10 / 30)
    want = brute_force_recall(features, labels, features, labels, (1, 29), np.arange(30))
    assert got == pytest.approx(want)


def test_a_query_without_a_same_class_item_misses_at_every_k_up_to_the_gallery():
    rng = np.random.default_rng(4)
    features = rng.standard_normal((11, 3)).astype(np.float32)
    singletons = np.arange(11)
    ks = tuple(range(1, 11))  # up to the gallery: the 10 other items
    got = metrics.recall_at_k(features, singletons, ks, chunk=4)
    assert got == {k: 0.0 for k in ks}
    assert got == pytest.approx(brute_force_recall(features, singletons, features, singletons,
                                                   ks, np.arange(11)))
    ranks = metrics.first_positive_ranks(features, singletons, features, singletons,
                                         self_index=np.arange(11))
    assert (ranks == metrics.MISS).all()
    # one class of two among singletons: only its two queries hit, and only at the full gallery
    labels = singletons.copy()
    labels[3] = 0
    got = metrics.recall_at_k(features, labels, ks)
    assert got[10] == pytest.approx(2 / 11)
    assert got == pytest.approx(brute_force_recall(features, labels, features, labels, ks,
                                                   np.arange(11)))


@pytest.mark.parametrize("n, k", [(11, 11), (11, 1000), (2, 2), (1, 1)])
def test_k_larger_than_the_gallery_is_refused(n, k):
    features = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    labels = np.zeros(n, dtype=int)
    with pytest.raises(UserError, match="gallery"):
        metrics.recall_at_k(features, labels, (1, k))


def test_k_larger_than_a_query_gallery_is_refused_and_k_equal_to_it_is_exact():
    rng = np.random.default_rng(8)
    features = integer_features(rng, 12, 2)
    labels = np.arange(12) % 5
    is_query = np.arange(12) < 6
    is_gallery = ~is_query
    is_gallery[0] = True  # query 0 is in the gallery too: 6 - 1 items to rank for it
    with pytest.raises(UserError, match="up to 6"):
        metrics.recall_at_k_query_gallery(features, labels, is_query, is_gallery, (1, 7))
    got = metrics.recall_at_k_query_gallery(features, labels, is_query, is_gallery, (1, 6))
    gallery_rows = np.flatnonzero(is_gallery)
    self_index = [0] + [-1] * 5
    assert got == pytest.approx(brute_force_recall(
        features[is_query], labels[is_query], features[gallery_rows], labels[gallery_rows],
        (1, 6), self_index))


@pytest.mark.parametrize("value, words", [(np.nan, "NaN or inf"), (np.inf, "NaN or inf"),
                                          (-np.inf, "NaN or inf"), (1e30, "too large"),
                                          (1e300, "NaN or inf")])
def test_non_finite_or_overflowing_embeddings_are_refused(value, words):
    features = np.random.default_rng(1).standard_normal((20, 4))
    labels = np.arange(20) % 4
    features[7, 2] = value
    with pytest.raises(UserError, match=words) as error:
        metrics.recall_at_k(features, labels, (1, 2))
    assert "row 7" in str(error.value)


def test_a_bad_learner_is_refused_before_anything_is_reported():
    rng = np.random.default_rng(2)
    good = rng.standard_normal((20, 4)).astype(np.float32)
    bad = good.copy()
    bad[3] = np.nan
    features = {"features": good, "labels": np.arange(20) % 4, "learners": [good, bad],
                "is_query": None, "is_gallery": None}
    with pytest.raises(UserError, match="learner1: row 3"):
        evaluation.evaluate(features, (1, 2))
    features["learners"] = [good, good * 1e20]
    with pytest.raises(UserError, match="learner1: values too large"):
        evaluation.evaluate(features, (1, 2))


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
