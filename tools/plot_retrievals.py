#!/usr/bin/env python3
"""Retrievals people look at: for a fixed, seeded set of test queries, the query and its K
nearest test images by the ensemble embedding, each framed green when of the query's class
and red otherwise, with its rank; and the same for each learner in a second figure.

    plot_retrievals.py --features RUN/features.npz --test-lmdb data/lmdb/cub/test_lmdb \\
                       --out RUN/retrievals.png [--queries 6] [--k 5] [--seed 0]
    plot_retrievals.py --features F --query-lmdb Q --gallery-lmdb G --out retrievals.png

F is eval_recall.py --save-features output for those LMDBs. Writes OUT, OUT's
<stem>_learners.png (with two or more learners), and beside each a .json naming the query and
neighbour indices (positions in the features file) and each panel's place in the PNG.
"""
import argparse
import sys
from pathlib import Path

from abe import cli
from abe.errors import UserError
from abe.eval import embeddings, retrieval


def main(argv=None):
    parser = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True, help="features .npz")
    lmdbs = parser.add_mutually_exclusive_group(required=True)
    lmdbs.add_argument("--test-lmdb", type=Path, help="the test LMDB the features came from")
    lmdbs.add_argument("--query-lmdb", type=Path, help="query LMDB (with --gallery-lmdb)")
    parser.add_argument("--gallery-lmdb", type=Path, help="gallery LMDB (with --query-lmdb)")
    parser.add_argument("--out", type=Path, required=True, help="PNG path")
    parser.add_argument("--queries", type=int, default=retrieval.DEFAULT_QUERIES,
                        help=f"queries shown (default {retrieval.DEFAULT_QUERIES})")
    parser.add_argument("--k", type=int, default=retrieval.DEFAULT_K,
                        help=f"neighbours per query (default {retrieval.DEFAULT_K})")
    parser.add_argument("--seed", type=int, default=0, help="picks the queries (default 0)")
    args = parser.parse_args(argv)
    if (args.query_lmdb is None) != (args.gallery_lmdb is None):
        parser.error("--query-lmdb and --gallery-lmdb go together")
    if args.queries < 1 or args.k < 1:
        parser.error("--queries and --k must be positive")
    try:
        features = embeddings.load(args.features)
    except embeddings.FeaturesError as error:
        raise UserError(str(error)) from None
    paths = [args.test_lmdb] if args.test_lmdb else [args.query_lmdb, args.gallery_lmdb]
    for written in retrieval.write_figures(features, paths, args.out, args.queries, args.k,
                                           args.seed):
        print(written)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "plot_retrievals.py"))
