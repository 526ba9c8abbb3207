#!/usr/bin/env python3
"""Training curves of a run: each loss term and Recall@K against iteration (PNG).

    plot_curves.py runs/cub8                 # reads runs/cub8/history.csv, writes curves.png
"""
import argparse
import sys
from pathlib import Path

from abe import cli
from abe.eval import plots

PROG = "plot_curves.py"


def main(argv=None):
    parser = cli.Parser(prog=PROG, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run folder holding history.csv")
    parser.add_argument("--out", type=Path, help="PNG path (default RUN/curves.png)")
    args = parser.parse_args(argv)
    history = plots.read_history(args.run_dir / "history.csv")
    print(plots.training_curves(history,
                                args.out or args.run_dir / "curves.png", title=args.run_dir.name))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
