"""The figures: self-pair cosines against a direct computation, every plot a readable PNG,
the retrieval figures' frames against the labels, the embedding map's panels."""
import json

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from abe.eval import embeddings, plots
from hostile import assert_one_line_error, run_entry


def test_self_pair_cosines_match_a_direct_computation():
    rng = np.random.default_rng(0)
    learners = [rng.standard_normal((50, 8)) for _ in range(3)]
    got = plots.self_pair_cosines(learners)
    assert sorted(got) == [(0, 1), (0, 2), (1, 2)]
    for (p, q), cos in got.items():
        want = [a @ b / np.linalg.norm(a) / np.linalg.norm(b)
                for a, b in zip(learners[p], learners[q])]
        assert cos == pytest.approx(want)
    same = plots.self_pair_cosines([learners[0], 3 * learners[0]])[0, 1]
    assert same == pytest.approx(np.ones(50))


def assert_png(path, min_side=100):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side
    assert image[..., :3].std() > 0  # something was drawn


def test_every_plot_writes_a_complete_png(tmp_path):
    rng = np.random.default_rng(1)
    nan = np.nan
    history = {"iteration": np.array([0, 10, 20]), "divergence_loss": np.array([nan, 1.0, 0.2]),
               "learner0/contrastive_loss": np.array([nan, 0.3, 0.2]),
               "total_loss": np.array([nan, 1.3, 0.4]), "lr": np.array([1e-3] * 3),
               "recall@1": np.array([0.5, nan, 0.7]), "wall_s": np.array([1, 2, 3])}
    assert_png(plots.training_curves(history, tmp_path / "curves.png"))
    assert_png(plots.self_pair_histograms([rng.standard_normal((40, 4)) for _ in range(4)],
                                          tmp_path / "pairs.png"))
    images = rng.uniform(-100, 100, (3, 3, 32, 32)).astype(np.float32)
    masks = [rng.uniform(0, 1, (3, 8, 2, 2)) for _ in range(2)]
    assert_png(plots.attention_masks(images, masks, tmp_path / "attention.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attention.png", "curves.png",
                                                          "pairs.png"]


def clustered_features(rng, classes, per_class, dim=6, spread=0.9):
    """Embeddings around one centre per class, close enough that some neighbours are wrong."""
    labels = np.repeat(np.arange(classes), per_class)
    centres = rng.standard_normal((classes, dim))
    features = (centres[labels] + spread * rng.standard_normal((len(labels), dim))).astype(
        np.float32)
    return features, labels


def write_lmdb(path, labels, rng, size=24):
    from abe.data.lmdb_store import LmdbWriter, make_datum

    writer = LmdbWriter(path)
    for i, label in enumerate(labels):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        writer.append(make_datum(image, label), f"img{i}.png", label, label)
    return writer.commit()


def frame_colour(png, box):
    """RGB just inside the top edge of a panel, at its middle."""
    x0, y0, x1, _ = box
    return png[y0 + 1, (x0 + x1) // 2, :3]


def assert_retrieval_panels(png_path, features, labels, rows, k):
    """Every panel where the .json says, framed as the labels say, the neighbours the true
    nearest ones; returns the panels."""
    png = matplotlib.image.imread(png_path)
    meta = json.loads(png_path.with_suffix(".json").read_text())
    panels = meta["panels"]
    assert len(panels) == rows * (k + 1)
    assert sum(p["kind"] == "query" for p in panels) == rows
    for panel in panels:
        if panel["kind"] != "query":
            match = labels[panel["index"]] == labels[panel["query"]]
            assert panel["kind"] == ("match" if match else "miss"), panel
            distances = ((features - features[panel["query"]]) ** 2).sum(axis=1)
            distances[panel["query"]] = np.inf
            assert panel["index"] == np.argsort(distances, kind="stable")[panel["rank"] - 1]
        want = matplotlib.colors.to_rgb(plots.FRAME[panel["kind"]])
        assert np.abs(frame_colour(png, panel["box"]) - want).max() < 0.08, panel
    kinds = {p["kind"] for p in panels}
    assert kinds == {"query", "match", "miss"}  # both colours are exercised
    return panels


def test_retrieval_figures_frame_each_neighbour_by_its_label(tmp_path):
    rng = np.random.default_rng(3)
    features, labels = clustered_features(rng, classes=5, per_class=12)
    learners = [features[:, :3], features[:, 3:]]
    embeddings.save(tmp_path / "f.npz", features, labels, learners)
    lmdb = write_lmdb(tmp_path / "test_lmdb", labels, rng)
    proc = run_entry(["tools/plot_retrievals.py", "--features", tmp_path / "f.npz",
                      "--test-lmdb", lmdb, "--out", tmp_path / "retrievals.png",
                      "--queries", 6, "--k", 4, "--seed", 1])
    assert proc.returncode == 0, proc.stderr
    panels = assert_retrieval_panels(tmp_path / "retrievals.png", features, labels, 6, 4)
    queries = [p["index"] for p in panels if p["kind"] == "query"]
    assert len({labels[q] for q in queries[:5]}) == 5  # one query per class before repeating
    learner_panels = json.loads((tmp_path / "retrievals_learners.json").read_text())["panels"]
    for m, x in enumerate(learners):
        mine = [p for p in learner_panels if p["learner"] == m]
        assert [p["index"] for p in mine if p["kind"] == "query"] == queries[:3]
        for panel in mine:
            if panel["kind"] != "query":
                distances = ((x - x[panel["query"]]) ** 2).sum(axis=1)
                distances[panel["query"]] = np.inf
                assert panel["index"] == np.argsort(distances, kind="stable")[panel["rank"] - 1]
                match = labels[panel["index"]] == labels[panel["query"]]
                assert panel["kind"] == ("match" if match else "miss")
    image = matplotlib.image.imread(tmp_path / "retrievals_learners.png")
    for panel in learner_panels:
        want = matplotlib.colors.to_rgb(plots.FRAME[panel["kind"]])
        assert np.abs(frame_colour(image, panel["box"]) - want).max() < 0.08, panel
    assert len(learner_panels) == 2 * 3 * 5


def test_retrievals_refuse_features_of_another_lmdb(tmp_path):
    rng = np.random.default_rng(4)
    features, labels = clustered_features(rng, classes=3, per_class=5)
    embeddings.save(tmp_path / "f.npz", features, labels)
    lmdb = write_lmdb(tmp_path / "test_lmdb", labels[::-1], rng)
    proc = run_entry(["tools/plot_retrievals.py", "--features", tmp_path / "f.npz",
                      "--test-lmdb", lmdb, "--out", tmp_path / "r.png"])
    assert_one_line_error(proc, 2, "do not belong to")
    assert not (tmp_path / "r.png").exists()


def test_embedding_map_has_one_panel_per_model(tmp_path):
    rng = np.random.default_rng(5)
    few, few_labels = clustered_features(rng, classes=4, per_class=30)
    many, many_labels = clustered_features(rng, classes=30, per_class=2)
    path = plots.embedding_map([("many classes", many, many_labels),
                                ("few classes", few, few_labels)], tmp_path / "map.png",
                               max_points=100)
    assert_png(path)
    png = matplotlib.image.imread(path)
    panels = json.loads(path.with_suffix(".json").read_text())["panels"]
    assert [(p["title"], p["points"], p["classes"], p["legend"]) for p in panels] == [
        ("many classes", 60, 30, False), ("few classes", 100, 4, True)]
    for panel in panels:
        x0, y0, x1, y1 = panel["box"]
        assert 0 <= x0 < x1 <= png.shape[1] and 0 <= y0 < y1 <= png.shape[0]
        inked = (png[y0 + 3:y1 - 3, x0 + 3:x1 - 3, :3] < 0.8).any(axis=2).mean()
        assert inked > 0.005  # points were drawn inside the panel
