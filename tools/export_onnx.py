#!/usr/bin/env python3
"""Export a deploy net and its weights to ONNX, checked against Caffe before it is written.

    export_onnx.py --deploy runs/cub8/deploy.prototxt \\
                   --weights runs/cub8/snapshots/best.caffemodel --out cub8.onnx \\
                   [--test-lmdb data/lmdb/cub/test_lmdb] [--images 8] [--force]

Any net the generator makes (ABE-M, M-heads, any M, att-depth, branch, crop, with or without
the sigmoid). The ONNX model (opset 18) takes the Caffe input `data` (mean-subtracted BGR,
N x 3 x crop x crop, N free) and outputs `embedding` and each `learner{m}/embedding`.
The export runs Caffe and onnxruntime on the same real test images (the first --images of
--test-lmdb, else scikit-learn's digits prepared as the demo prepares them), prints the
largest absolute difference of every output, and writes --out only when all are below 1e-4.
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from abe import cli  # noqa: E402
from abe.export import onnx_export  # noqa: E402


def main(argv=None):
    parser = cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deploy", type=Path, required=True, help="deploy prototxt")
    parser.add_argument("--weights", type=Path, required=True, help=".caffemodel")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--test-lmdb", type=Path,
                        help="test images for the parity check (default: the digits)")
    parser.add_argument("--images", type=int, default=onnx_export.DEFAULT_IMAGES,
                        help=f"images in the parity check (default {onnx_export.DEFAULT_IMAGES})")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    report = onnx_export.export(args.deploy, args.weights, args.out, args.test_lmdb,
                                args.images, args.force)
    worst = max(report["differences"].values())
    print(f"wrote {args.out}: largest difference {worst:.3g} < {report['tolerance']:g} over "
          f"{len(report['differences'])} outputs, {report['images']} images of {report['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "export_onnx.py"))
