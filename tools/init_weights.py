#!/usr/bin/env python3
"""Initialize a generated train net from ImageNet-pretrained bvlc_googlenet.caffemodel.

    init_weights.py --net prototxt/abe8_512/train.prototxt --out runs/abe8/init.caffemodel

Copies every BVLC-named layer by name and every renamed copy of a BVLC block (attention/...,
learner{m}/...) from that block; the attention 1x1 convolutions and the embedding FC keep
their xavier initialization. Prints where each layer came from. A shape mismatch stops it
with one line and nothing written.
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from abe import cli  # noqa: E402
from abe.errors import UserError  # noqa: E402
from abe.net.init_weights import initialize  # noqa: E402
from abe.net.pretrained import default_weights  # noqa: E402

DEFAULT_WEIGHTS = default_weights()
PROG = "init_weights.py"


def main(argv=None):
    parser = cli.Parser(prog=PROG, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", type=Path, required=True, help="generated train.prototxt")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                        help="pretrained .caffemodel (default $ABE_WEIGHTS or weights/, "
                             "see weights/fetch_googlenet.py)")
    parser.add_argument("--out", type=Path, required=True, help=".caffemodel to write")
    parser.add_argument("--quiet", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)
    for path in (args.net, args.weights):
        if not path.is_file():
            raise UserError(f"{path} is not a file")
    if not args.out.parent.is_dir():
        raise UserError(f"{args.out.parent} is not a directory")
    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a directory; give the .caffemodel to write")
    report = initialize(args.net, args.weights, args.out)
    copied = [r for r in report if r.source]
    fresh = [r for r in report if not r.source]
    if not args.quiet:
        for r in report:
            origin = f"<- {args.weights.name}:{r.source}" if r.source else f"fresh ({r.filler})"
            print(f"{r.layer:<48} {r.count:>9}  {origin}")
    print(f"{len(copied)} layers ({sum(r.count for r in copied)} parameters) copied from "
          f"{args.weights}, {len(fresh)} layers ({sum(r.count for r in fresh)} parameters) "
          f"initialized fresh; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
