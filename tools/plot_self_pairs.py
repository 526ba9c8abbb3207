#!/usr/bin/env python3
"""Self-pair cosine similarity (paper Fig. 5): for each pair of learners, the histogram of the
cosine similarity between one image's embeddings from the two learners. With the divergence
loss it sits near 0, without it near 1.

    plot_self_pairs.py --features feats.npz --out self_pairs.png

feats.npz is eval_recall.py --save-features output (arrays learner0, learner1, ...).
"""
import argparse
import sys
from pathlib import Path

from abe import cli
from abe.errors import UserError
from abe.eval import embeddings, plots

PROG = "plot_self_pairs.py"


def main(argv=None):
    parser = cli.Parser(prog=PROG, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True, help="features .npz")
    parser.add_argument("--out", type=Path, required=True, help="PNG path")
    parser.add_argument("--title", default="self-pair cosine similarity")
    args = parser.parse_args(argv)
    features = embeddings.load(args.features)
    if len(features["learners"]) < 2:
        raise UserError(f"{args.features} holds fewer than two learners")
    print(plots.self_pair_histograms(features["learners"], args.out, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
