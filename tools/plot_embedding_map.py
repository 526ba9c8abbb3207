#!/usr/bin/env python3
"""A map of the embedding space: 2-D t-SNE (scikit-learn) of the test embeddings, coloured by
class (a legend when there are few classes), optionally the untrained net's next to it.

    plot_embedding_map.py --features RUN/features.npz --out RUN/embedding_map.png
    plot_embedding_map.py --features trained.npz --before untrained.npz --out map.png

Features files are eval_recall.py --save-features output. More than --max-points images are
sampled (seeded). Also writes a .json beside the PNG describing its panels.
"""
import argparse
import sys
from pathlib import Path

from abe import cli
from abe.errors import UserError
from abe.eval import embeddings, plots


def main(argv=None):
    parser = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True, help="features .npz (trained)")
    parser.add_argument("--before", type=Path, help="features .npz of the untrained net")
    parser.add_argument("--out", type=Path, required=True, help="PNG path")
    parser.add_argument("--max-points", type=int, default=2000, help="default 2000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.max_points < 10:
        parser.error("--max-points must be at least 10")
    maps = []
    for title, path in (("untrained", args.before), ("trained", args.features)):
        if path is None:
            continue
        try:
            features = embeddings.load(path)
        except embeddings.FeaturesError as error:
            raise UserError(str(error)) from None
        if len(features["labels"]) < 10:
            raise UserError(f"{path}: a map needs at least 10 images")
        maps.append((title if args.before else "test embeddings", features["features"],
                     features["labels"]))
    print(plots.embedding_map(maps, args.out, args.seed, args.max_points))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "plot_embedding_map.py"))
