"""The figures people look at: training curves, self-pair similarities (paper Fig. 5) and the
learners' attention masks (paper Fig. 6). PNG through matplotlib's Agg backend, written to a
temporary name and renamed, so a figure on disk is always complete."""
import csv
import os
from itertools import combinations
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from abe.errors import UserError  # noqa: E402


def save(fig, path):
    path = Path(path)
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def read_history(path):
    """A run's history.csv for plotting; a file that is not one is a UserError (one line)."""
    from abe.train.training import read_history as read_csv

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist (not a run folder?)")
    try:
        history = read_csv(path)
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{path} is not a training history (numbers under a header row): "
                        f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") \
            from None
    if len(history.get("iteration", ())) == 0:
        raise UserError(f"{path} has no rows under an 'iteration' column")
    return history


def training_curves(history, path, title="training"):
    """Each loss term (and the weighted total) and Recall@K against iteration.

    ``history``: {column: array} as ``abe.training.read_history`` returns it."""
    iteration = history["iteration"]
    losses = [c for c in history if c.endswith("loss")]
    recalls = [c for c in history if c.startswith("recall@")]
    fig, (ax_loss, ax_recall) = plt.subplots(1, 2, figsize=(12, 4.2))
    for column in losses:
        keep = ~np.isnan(history[column])
        ax_loss.plot(iteration[keep], history[column][keep], label=column,
                     linewidth=2.2 if column == "total_loss" else 1.2)
    ax_loss.set(xlabel="iteration", ylabel="loss (mean since the previous row)", title=title)
    ax_loss.legend(fontsize=7)
    for column in recalls:
        keep = ~np.isnan(history[column])
        ax_recall.plot(iteration[keep], 100 * history[column][keep], marker="o",
                       label=column.replace("recall@", "Recall@"))
    ax_recall.set(xlabel="iteration", ylabel="Recall@K on unseen classes (%)",
                  title="evaluation")
    if recalls:
        ax_recall.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_recall.grid(alpha=0.3)
    return save(fig, path)


def self_pair_cosines(learners):
    """{(p, q): cosine similarity of each image's embeddings from learners p and q}, p < q."""
    unit = [x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in learners]
    return {(p, q): np.einsum("ij,ij->i", unit[p], unit[q])
            for p, q in combinations(range(len(unit)), 2)}


def self_pair_histograms(learners, path, title="self-pair cosine similarity"):
    """Paper Fig. 5: one histogram per learner pair, x from -1 to 1."""
    pairs = self_pair_cosines(learners)
    if not pairs:
        raise ValueError("self-pair similarities need at least two learners")
    cols = min(len(pairs), 7)
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(2.3 * cols, 4.0), 2.2 * rows + 0.8),
                             squeeze=False, layout="constrained")
    for ax, ((p, q), cos) in zip(axes.ravel(), pairs.items()):
        ax.hist(cos, bins=40, range=(-1, 1), color="tab:blue")
        ax.set_title(f"learners {p},{q}: mean {cos.mean():.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(pairs):]:
        ax.axis("off")
    fig.suptitle(title)
    return save(fig, path)


def image_for_display(chw, mean=(104, 117, 123)):
    """A mean-subtracted BGR C x H x W input back to an RGB H x W x 3 picture in [0, 1]."""
    bgr = chw + np.asarray(mean, np.float32).reshape(3, 1, 1)
    return np.clip(bgr[::-1].transpose(1, 2, 0) / 255.0, 0, 1)


def attention_masks(images, masks, path, title="attention masks (mean over channels)"):
    """Paper Fig. 6: each test image, then each learner's mask over it.

    ``images``: N x 3 x H x W network inputs; ``masks``: per learner, N x C x h x w."""
    n, learners = len(images), len(masks)
    fig, axes = plt.subplots(n, learners + 1, figsize=(1.8 * (learners + 1), 1.8 * n + 0.5),
                             squeeze=False)
    size = images.shape[-1]
    for i in range(n):
        picture = image_for_display(images[i])
        axes[i, 0].imshow(picture)
        for m in range(learners):
            mask = masks[m][i].mean(axis=0)
            axes[i, m + 1].imshow(picture.mean(axis=2), cmap="gray")
            axes[i, m + 1].imshow(mask, cmap="jet", alpha=0.55, extent=(0, size, size, 0),
                                  interpolation="bilinear")
            if i == 0:
                axes[i, m + 1].set_title(f"learner {m}", fontsize=8)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
