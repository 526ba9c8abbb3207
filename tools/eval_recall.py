#!/usr/bin/env python3
"""Recall@K (and NMI) of an embedding on a test set of unseen classes.

Model mode: embed a test LMDB with a deploy net and its weights (batches, last partial batch
included), then evaluate the ensemble embedding (blob `embedding`) and each learner
(blobs `learner{m}/embedding`):

    eval_recall.py --deploy deploy.prototxt --weights net.caffemodel --test-lmdb data/cub/test_lmdb
    eval_recall.py --deploy ... --weights ... --query-lmdb Q --gallery-lmdb G --dataset inshop

Features mode: evaluate saved features, an .npz with arrays `features` (N x D), `labels` (N),
optionally boolean `is_query` and `is_gallery` (query/gallery protocol, as In-shop) and
`learner0`, `learner1`, ... (each learner's embedding):

    eval_recall.py --features feats.npz --dataset sop

Model mode writes such a file with --save-features. Recall@K uses the dataset's Ks
(cub, cars: 1 2 4 8; sop: 1 10 100 1000; inshop: 1 10 20 30 40 50) unless --ks is given.
Every image is a query against all others (itself excluded by index); with query/gallery
LMDBs or masks, each query ranks the gallery. Ties: an item of another class at exactly the
distance of the nearest same-class item ranks before it (so duplicates never inflate Recall);
a query with no same-class item is a miss at every K. Refused with one line: a K larger than
the gallery each query ranks (there Recall@K is 100% for any embedding), NaN/inf embeddings
(learners included), weights that lack a layer of the deploy net or have other shapes. Output: an aligned table in %, or with --json
one JSON object whose "recall" maps each K (a string) to a fraction in [0, 1].
"""
import argparse
import json
import os
import sys
from pathlib import Path

from abe import cli
from abe.errors import UserError
from abe.eval import embeddings, evaluation, metrics

os.environ.setdefault("GLOG_minloglevel", "2")
PROG = "eval_recall.py"


def parse_args(argv):
    parser = cli.Parser(prog=PROG, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model mode")
    model.add_argument("--deploy", type=Path, help="deploy prototxt (input blob 'data')")
    model.add_argument("--weights", type=Path, help=".caffemodel with the trained weights")
    model.add_argument("--test-lmdb", type=Path, help="test LMDB (all-vs-all protocol)")
    model.add_argument("--query-lmdb", type=Path, help="query LMDB (query/gallery protocol)")
    model.add_argument("--gallery-lmdb", type=Path, help="gallery LMDB (query/gallery protocol)")
    model.add_argument("--batch-size", type=int, default=evaluation.DEFAULT_BATCH,
                       help=f"images per forward pass (default {evaluation.DEFAULT_BATCH})")
    model.add_argument("--gpu", type=int, help="GPU id (default: CPU; needs the CUDA build)")
    model.add_argument("--save-features", type=Path, help="also write the features to this .npz")
    feats = parser.add_argument_group("features mode")
    feats.add_argument("--features", type=Path, help=".npz with features, labels[, is_query, "
                                                     "is_gallery, learner0, ...]")
    parser.add_argument("--dataset", default="cub", choices=sorted(metrics.DATASET_KS),
                        help="picks the paper's Ks (default cub: 1 2 4 8)")
    parser.add_argument("--ks", type=int, nargs="+", help="Ks to report instead of the dataset's")
    parser.add_argument("--nmi", action="store_true", help="also NMI (k-means, #test classes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    args = parser.parse_args(argv)
    fail = parser.error
    model_args = [args.deploy, args.weights, args.test_lmdb, args.query_lmdb, args.gallery_lmdb]
    if args.features is not None:
        if any(a is not None for a in model_args) or args.save_features:
            fail("--features (features mode) cannot be combined with model-mode options")
        must_exist(fail, args.features)
    else:
        if args.deploy is None or args.weights is None:
            fail("give --features F.npz, or --deploy and --weights with a test LMDB")
        if (args.test_lmdb is None) == (args.query_lmdb is None and args.gallery_lmdb is None):
            fail("give either --test-lmdb or both --query-lmdb and --gallery-lmdb")
        if args.test_lmdb is None and (args.query_lmdb is None or args.gallery_lmdb is None):
            fail("the query/gallery protocol needs both --query-lmdb and --gallery-lmdb")
        for path in model_args:
            if path is not None:
                must_exist(fail, path)
        if args.save_features and not args.save_features.parent.is_dir():
            fail(f"--save-features: {args.save_features.parent} is not a directory")
    if args.ks is not None and min(args.ks) < 1:
        fail("--ks must be positive integers")
    if args.batch_size < 1:
        fail("--batch-size must be positive")
    args.ks = sorted(set(args.ks)) if args.ks else list(evaluation.default_ks(args.dataset))
    return args, fail


def must_exist(fail, path):
    if not path.exists():
        fail(f"{path} does not exist")


def features_from_model(args):
    """Embed the test LMDB(s) with the deploy net, after checking the net and its weights."""
    from abe.net import checks
    from abe.train.devices import require_gpus

    require_gpus([] if args.gpu is None else [args.gpu])
    lmdbs = [args.test_lmdb] if args.test_lmdb else [args.query_lmdb, args.gallery_lmdb]
    evaluation.check_test_set(lmdbs, args.ks)
    import caffe

    if args.gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_device(args.gpu)
        caffe.set_mode_gpu()
    net = checks.checked_net(args.deploy, args.weights)
    if "data" not in net.blobs or embeddings.ENSEMBLE_BLOB not in net.blobs:
        raise UserError(f"{args.deploy} needs an input blob 'data' and an output blob "
                        "'embedding'")
    features = evaluation.embed_test_set(net, lmdbs, args.batch_size)
    if args.save_features:
        embeddings.save(args.save_features, features["features"], features["labels"],
                        features["learners"], features["is_query"], features["is_gallery"])
    return features


def main(argv=None):
    args, _ = parse_args(argv)
    features = embeddings.load(args.features) if args.features else features_from_model(args)
    result = evaluation.evaluate(features, args.ks, with_nmi=args.nmi, progress=True)
    print(json.dumps(result) if args.json else evaluation.format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
