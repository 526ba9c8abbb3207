#!/usr/bin/env python3
"""Attention masks of each learner over a few test images (paper Fig. 6), as a PNG grid.

    plot_attention.py --deploy RUN/deploy.prototxt --weights RUN/snapshots/best.caffemodel \\
                      --test-lmdb data/cub/test_lmdb --images 4 --out attention.png
"""
import argparse
import os
import sys
from pathlib import Path

from abe.eval import embeddings, plots

os.environ.setdefault("GLOG_minloglevel", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deploy", type=Path, required=True, help="ABE deploy prototxt")
    parser.add_argument("--weights", type=Path, required=True, help=".caffemodel")
    parser.add_argument("--test-lmdb", type=Path, required=True, help="images to show")
    parser.add_argument("--images", type=int, default=4, help="how many (of distinct classes)")
    parser.add_argument("--out", type=Path, required=True, help="PNG path")
    args = parser.parse_args(argv)
    for path in (args.deploy, args.weights, args.test_lmdb):
        if not path.exists():
            parser.exit(2, f"{parser.prog}: error: {path} does not exist\n")
    import caffe

    caffe.set_mode_cpu()
    net = caffe.Net(str(args.deploy), str(args.weights), caffe.TEST)
    try:
        images, masks = embeddings.attention_examples(net, args.test_lmdb, args.images)
    except embeddings.FeaturesError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(plots.attention_masks(images, masks, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
