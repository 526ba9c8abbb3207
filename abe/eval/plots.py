"""The figures people look at: training curves, self-pair similarities (paper Fig. 5), the
learners' attention masks (paper Fig. 6), retrievals (a query and its nearest test images,
right and wrong marked) and a t-SNE map of the embedding. PNG through matplotlib's Agg
backend, written to a temporary name and renamed, so a figure on disk is always complete.
The retrieval and map figures also write ``<name>.json``: what each panel shows and where it
is in the PNG (pixels, origin top left), so what a figure claims can be checked."""
import csv
import json
import os
from itertools import combinations
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from abe.errors import UserError  # noqa: E402

DPI = 110


def save(fig, path, tight=True):
    path = Path(path)
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight" if tight else None)
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


def save_with_panels(fig, path, panels, **facts):
    """Save the PNG at the figure's own geometry and ``<path>.json`` with ``facts`` and each
    panel's record plus its ``box`` [x0, y0, x1, y1] in PNG pixels. ``panels``: (axes, record)."""
    fig.canvas.draw()
    height = fig.get_size_inches()[1] * DPI
    records = []
    for ax, record in panels:
        x0, y0, x1, y1 = ax.get_window_extent().extents
        records.append({**record, "box": [round(x0), round(height - y1), round(x1),
                                          round(height - y0)]})
    path = save(fig, path, tight=False)
    sidecar = path.with_suffix(".json")
    tmp = sidecar.with_name(sidecar.stem + ".partial.json")
    tmp.write_text(json.dumps({**facts, "panels": records}, indent=1) + "\n")
    os.replace(tmp, sidecar)
    return path


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


# Frames of the retrieval figures: the query, a neighbour of its class, one of another class.
FRAME = {"query": "#1f4e9c", "match": "#18a418", "miss": "#e01b1b"}
FRAME_WIDTH = 4.5  # points


def framed(ax, image_bgr, colour, title):
    ax.imshow(image_bgr[..., ::-1], interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(colour)
        spine.set_linewidth(FRAME_WIDTH)
    ax.set_title(title, fontsize=8, color=colour, pad=3)


def retrieval_row(axes, images, labels, query, neighbours):
    """The query, then its neighbours framed green (its class) or red (another), with rank."""
    framed(axes[0], images[query], FRAME["query"], "query")
    panels = [(axes[0], {"kind": "query", "index": query})]
    for rank, index in enumerate(neighbours, start=1):
        match = bool(labels[index] == labels[query])
        framed(axes[rank], images[index], FRAME["match" if match else "miss"], f"#{rank}")
        panels.append((axes[rank], {"kind": "match" if match else "miss", "index": index,
                                    "rank": rank, "query": query}))
    for ax in axes[1 + len(neighbours):]:
        ax.axis("off")
    return panels


def panel_grid(rows, groups, per_group, title, cell=1.1, row_label=0.0):
    """A figure of ``rows`` x ``groups`` groups of ``per_group`` square panels, a gap between
    groups, ``title`` on top; returns (fig, axes[row][group][panel])."""
    gap, top, bottom = 0.35, 0.75, 0.1
    width = row_label + 0.1 + groups * per_group * cell + (groups - 1) * gap
    height = top + bottom + rows * (cell + 0.25)
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    ratios = ([1.0] * per_group + [gap / cell]) * groups
    grid = fig.add_gridspec(rows, len(ratios) - 1, width_ratios=ratios[:-1],
                            left=(row_label + 0.05) / width, right=1 - 0.05 / width,
                            top=1 - top / height, bottom=bottom / height,
                            wspace=0.1, hspace=0.25)
    axes = [[[fig.add_subplot(grid[r, g * (per_group + 1) + p]) for p in range(per_group)]
             for g in range(groups)] for r in range(rows)]
    fig.suptitle(f"{title}\n(green: same class as the query, red: another class)", fontsize=9,
                 y=1 - 0.12 / height, va="top")
    return fig, axes


def retrieval_figure(images, labels, queries, neighbours, path,
                     title="retrievals: queries and their nearest test images"):
    """One row per query: the query and its K nearest neighbours (``neighbours[i]``).

    ``images``: {index: H x W x 3 BGR}; ``labels``: class of every index."""
    k = max(len(row) for row in neighbours)
    fig, axes = panel_grid(len(queries), 1, k + 1, title)
    panels = []
    for row, query, found in zip(axes, queries, neighbours):
        panels += retrieval_row(row[0], images, labels, query, found)
    return save_with_panels(fig, path, panels, title=title, queries=queries,
                            neighbours=neighbours)


def learner_retrieval_figure(images, labels, queries, per_learner, path,
                             title="each learner's retrievals for the same queries"):
    """One row per learner: for each query, the query and that learner's K nearest."""
    k = max(len(row) for rows in per_learner for row in rows)
    fig, axes = panel_grid(len(per_learner), len(queries), k + 1, title, cell=0.95,
                           row_label=0.3)
    panels = []
    for m, (row, found) in enumerate(zip(axes, per_learner)):
        for group, query, neighbours in zip(row, queries, found):
            panels += [(ax, {**record, "learner": m}) for ax, record in
                       retrieval_row(group, images, labels, query, neighbours)]
        row[0][0].set_ylabel(f"learner {m}", fontsize=9)
    return save_with_panels(fig, path, panels, title=title, queries=queries,
                            neighbours=per_learner)


def tsne(features, seed=0):
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(features) - 1) / 3)
    # 500 iterations (scikit-learn's default: 1000) on one thread: 13 instead of 30 CPU-seconds
    # for the demo's 896 test images on a loaded 2-core machine (measured).
    return TSNE(n_components=2, init="pca", perplexity=perplexity, max_iter=500, n_jobs=1,
                random_state=seed).fit_transform(np.asarray(features, np.float64))


LEGEND_MAX_CLASSES = 20


def embedding_map(maps, path, seed=0, max_points=2000):
    """A 2-D t-SNE of each (title, features, labels) in ``maps``, side by side, points
    coloured by class (with a legend when there are at most LEGEND_MAX_CLASSES classes).
    More than ``max_points`` images: a seeded sample of that many."""
    fig, axes = plt.subplots(1, len(maps), figsize=(5.2 * len(maps), 5.0), squeeze=False,
                             dpi=DPI)
    panels = []
    for ax, (title, features, labels) in zip(axes[0], maps):
        shown = np.arange(len(labels))
        if len(shown) > max_points:
            shown = np.sort(np.random.default_rng(seed).choice(shown, max_points, replace=False))
        xy, classes = tsne(features[shown], seed), np.unique(labels[shown])
        rank = np.searchsorted(classes, labels[shown])
        if len(classes) <= LEGEND_MAX_CLASSES:
            cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
            for c, label in enumerate(classes):
                keep = rank == c
                ax.scatter(xy[keep, 0], xy[keep, 1], s=7, color=cmap(c), label=str(label))
            ax.legend(title="class", fontsize=7, title_fontsize=8, markerscale=2,
                      loc="best", framealpha=0.8)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=4, c=rank, cmap="turbo")
        sampled = f" ({len(shown)} of {len(labels)})" if len(shown) < len(labels) else ""
        ax.set_title(f"{title}: {len(shown)} test images{sampled}, {len(classes)} classes",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        panels.append((ax, {"title": title, "points": len(shown), "classes": len(classes),
                            "legend": len(classes) <= LEGEND_MAX_CLASSES}))
    fig.suptitle("t-SNE of the test embeddings, coloured by class", fontsize=10)
    return save_with_panels(fig, path, panels, seed=seed)
