#!/usr/bin/env python3
"""Parameters and multiply-accumulates per image of deploy nets, as the paper's Table 1 counts.

    model_stats.py prototxt/*/deploy.prototxt

Parameters: each learnable blob once, however many layers share it. MACs: convolution and
inner-product layers, per input image (ABE's shared G counts once per learner).
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from abe import cli  # noqa: E402
from abe.errors import UserError  # noqa: E402
from abe.net.checks import check_prototxt  # noqa: E402
from abe.net.model_stats import model_stats  # noqa: E402

PROG = "model_stats.py"


def main(argv=None):
    parser = cli.Parser(prog=PROG, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("deploy", type=Path, nargs="+", help="deploy prototxt (Input blob data)")
    args = parser.parse_args(argv)
    names = {}
    for path in args.deploy:  # every file checked before any is built
        if not path.is_file():
            raise UserError(f"{path} is not a file")
        net = check_prototxt(path)
        if not any(layer.type == "Input" for layer in net.layer):
            raise UserError(f"{path} has no Input layer: give a deploy prototxt")
        names[path] = net.name
    print(f"{'model':<16} {'params':>14} {'MACs/image':>16}  file")
    for path in args.deploy:
        stats = model_stats(path)
        print(f"{names[path]:<16} {stats.params / 1e7:>8.2f} x10^7 "
              f"{stats.macs / 1e9:>10.2f} x10^9  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
