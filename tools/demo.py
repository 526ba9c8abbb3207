#!/usr/bin/env python3
"""The offline demo (`make demo`): ABE-M trained for a few minutes on this CPU.

Prepares scikit-learn's bundled handwritten digits as LMDBs (train: digits 0-4, test: the
unseen digits 5-9), trains a reduced ABE-M (the configuration is printed) with the divergence
loss, and reports Recall@K of the untrained and the trained network on the unseen digits.
Writes runs/demo/report.json, history.csv, curves.png, self_pairs.png, attention.png,
retrievals.png, retrievals_learners.png and embedding_map.png.
"""
import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from abe.train import demo  # noqa: E402
from abe.eval import evaluation  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path,
                        default=Path(os.environ.get("ABE_RUNS") or REPO / "runs") / "demo",
                        help="default $ABE_RUNS/demo, else runs/demo")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ABE_DATA") or REPO / "data"),
                        help="where the digits LMDBs go (default $ABE_DATA, else data/)")
    defaults = demo.DemoConfig()
    for f in fields(demo.DemoConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name), help=f"default %(default)s")
    args = parser.parse_args(argv)
    config = demo.DemoConfig(**{f.name: getattr(args, f.name) for f in fields(demo.DemoConfig)})
    report = demo.run(args.run_dir, args.data_dir, config)
    for name in ("untrained", "trained"):
        print(f"\n{name}:\n{evaluation.format_table(report[name])}")
    print(f"\nRecall@1 gain: {report['recall@1_gain_points']:+.2f} points; "
          f"mean self-pair cosine similarity of the trained learners: "
          f"{report['self_pair_cosine_mean']:.3f}; wall time {report['wall_s']:.0f} s")
    print(f"report: {args.run_dir / 'report.json'}; plots: curves.png, self_pairs.png, "
          f"attention.png, retrievals.png, retrievals_learners.png, embedding_map.png in "
          f"{args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
