#!/usr/bin/env python3
"""Attention masks of each learner over a few test images (paper Fig. 6), as a PNG grid.

    plot_attention.py --deploy RUN/deploy.prototxt --weights RUN/snapshots/best.caffemodel \\
                      --test-lmdb data/cub/test_lmdb --images 4 --out attention.png
"""
import argparse
import os
import sys
from pathlib import Path

from abe import cli
from abe.errors import UserError
from abe.eval import embeddings, evaluation, plots

os.environ.setdefault("GLOG_minloglevel", "2")
PROG = "plot_attention.py"


def main(argv=None):
    parser = cli.Parser(prog=PROG, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deploy", type=Path, required=True, help="ABE deploy prototxt")
    parser.add_argument("--weights", type=Path, required=True, help=".caffemodel")
    parser.add_argument("--test-lmdb", type=Path, required=True, help="images to show")
    parser.add_argument("--images", type=int, default=4, help="how many (of distinct classes)")
    parser.add_argument("--out", type=Path, required=True, help="PNG path")
    args = parser.parse_args(argv)
    if not 1 <= args.images <= 100:
        parser.error(f"--images must be in 1..100, got {args.images}")
    for path in (args.deploy, args.weights, args.test_lmdb):
        if not path.exists():
            raise UserError(f"{path} does not exist")
    import caffe

    from abe.net.checks import checked_net

    caffe.set_mode_cpu()
    net = checked_net(args.deploy, args.weights)
    evaluation.test_labels(args.test_lmdb)
    images, masks = embeddings.attention_examples(net, args.test_lmdb, args.images)
    print(plots.attention_masks(images, masks, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
