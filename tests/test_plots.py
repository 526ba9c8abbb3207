"""The figures: self-pair cosines against a direct computation, and every plot a readable PNG."""
import matplotlib.image
import numpy as np
import pytest

from abe.eval import plots


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
