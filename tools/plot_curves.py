#!/usr/bin/env python3
"""Training curves of a run: each loss term and Recall@K against iteration (PNG).

    plot_curves.py runs/cub8                 # reads runs/cub8/history.csv, writes curves.png
"""
import argparse
import sys
from pathlib import Path

from abe.eval import plots
from abe.train import training


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run folder holding history.csv")
    parser.add_argument("--out", type=Path, help="PNG path (default RUN/curves.png)")
    args = parser.parse_args(argv)
    history = args.run_dir / "history.csv"
    if not history.is_file():
        parser.exit(2, f"{parser.prog}: error: {history} does not exist\n")
    print(plots.training_curves(training.read_history(history),
                                args.out or args.run_dir / "curves.png", title=args.run_dir.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
