"""The offline demo: real ABE-M training on scikit-learn's bundled digits, on a CPU, in minutes.

Everything is the real pipeline (LMDBs written by ``abe.prepare``, the pair data layer, the
generated ABE-M net with the divergence loss, Caffe's SGDSolver, Recall@K on classes never
seen in training); only the scale is reduced, and ``DemoConfig`` says how.
"""
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from abe.eval import embeddings, evaluation, plots, retrieval
from abe.net import netgen
from abe.train import training


@dataclass(frozen=True)
class DemoConfig:
    """The reduced configuration (the paper's: 224 crop, M=8, 512-d, batch 64, ImageNet init)."""
    image_size: int = 40  # side of the padded square in the LMDB (paper: 256)
    crop: int = 32  # random/center crop fed to the net (paper: 224); the scans are 8x8
    M: int = 2  # learners (paper: 8)
    embed_dim: int = 32  # ensemble embedding (paper: 512)
    batch: int = 32  # images per iteration = 16 pairs (paper: 64)
    max_iter: int = 200
    eval_every: int = 50
    base_lr: float = 1e-4
    lr_mult_new: float = 10.0
    weight_decay: float = 2e-4
    lambda_div: float = 1.0
    seed: int = 0

    def describe(self):
        return (f"reduced configuration: ABE-{self.M}^{self.embed_dim} on digits (train 0-4, "
                f"test 5-9), {self.crop}x{self.crop} crops of {self.image_size}x"
                f"{self.image_size} images, batch {self.batch}, {self.max_iter} iterations, "
                f"base_lr {self.base_lr}, lambda_div {self.lambda_div}, from scratch (no "
                f"ImageNet weights offline). The paper: ABE-8^512, 224 crops, batch 64, "
                f"ImageNet-pretrained GoogLeNet.")


def prepare_digits(out, image_size, workers=2, progress=True):
    """``out/train_lmdb`` (digits 0-4) and ``out/test_lmdb`` (digits 5-9) unless present."""
    from abe.data import datasets
    from abe.data.digits import export_digits
    from abe.data.prepare import build_split

    out = Path(out)
    lmdbs = {split: out / f"{split}_lmdb" for split in ("train", "test")}
    if all(path.exists() for path in lmdbs.values()):
        return lmdbs
    splits = datasets.load("folder", export_digits(out / "png"))
    for split, records in splits.items():
        build_split(records, lmdbs[split], name=split, size=image_size, workers=workers,
                    progress=progress)
    return lmdbs


def run(run_dir, data_dir, config=DemoConfig(), progress=True, log=print):
    """Train and evaluate; writes run_dir/report.json and the plots; returns the report."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    log(config.describe())
    lmdbs = prepare_digits(Path(data_dir) / f"digits_{config.image_size}", config.image_size,
                           progress=progress)
    settings = training.TrainSettings(
        run_dir=str(run_dir), max_iter=config.max_iter, eval_every=config.eval_every,
        snapshot_every=config.max_iter, log_every=10, test_lmdbs=[str(lmdbs["test"])],
        ks=[1, 2, 4, 8], seed=config.seed)
    net_cfg = netgen.NetConfig(M=config.M, embed_dim=config.embed_dim, batch=config.batch,
                               crop=config.crop, source=str(lmdbs["train"]),
                               lambda_div=config.lambda_div, lr_mult_new=config.lr_mult_new)
    solver_cfg = netgen.SolverConfig(base_lr=config.base_lr, lr_policy="fixed",
                                     max_iter=config.max_iter,
                                     weight_decay=config.weight_decay)
    training.clear_run(run_dir)
    training.prepare_run(settings, net_cfg=net_cfg, solver_cfg=solver_cfg)
    trainer = training.Trainer(settings, progress=progress)
    untrained_features = evaluation.embed_test_set(trainer.test_net, settings.test_lmdbs,
                                                   progress=False)
    evaluations = {}
    trainer.run(on_eval=lambda it, result: evaluations.setdefault(it, result))
    untrained, trained = evaluations[0], evaluations[config.max_iter]
    features = evaluation.embed_test_set(trainer.test_net, settings.test_lmdbs, progress=False)
    write_plots(run_dir, trainer, features, untrained_features)
    report = {
        "untrained": untrained, "trained": trained,
        "recall@1_gain_points": 100 * (trained["recall"]["1"] - untrained["recall"]["1"]),
        "self_pair_cosine_mean": float(np.mean(np.concatenate(
            list(plots.self_pair_cosines(features["learners"]).values())))),
        "config": asdict(config), "description": config.describe(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    training.write_atomic(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def write_plots(run_dir, trainer, features, untrained_features, n_images=4):
    """curves.png, self_pairs.png, attention.png, retrievals.png (+ _learners) and
    embedding_map.png (untrained next to trained) of a finished run."""
    run_dir = Path(run_dir)
    test_lmdb = trainer.settings.test_lmdbs[0]
    plots.training_curves(training.read_history(trainer.files.history), run_dir / "curves.png")
    plots.self_pair_histograms(features["learners"], run_dir / "self_pairs.png")
    examples = embeddings.attention_examples(trainer.test_net, test_lmdb, n_images)
    plots.attention_masks(*examples, run_dir / "attention.png")
    retrieval.write_figures(features, [test_lmdb], run_dir / "retrievals.png")
    labels = features["labels"]
    plots.embedding_map([("untrained", untrained_features["features"], labels),
                         ("trained", features["features"], labels)],
                        run_dir / "embedding_map.png")
