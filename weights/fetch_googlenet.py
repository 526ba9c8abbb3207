#!/usr/bin/env python3
"""Download bvlc_googlenet.caffemodel (BVLC's ImageNet GoogLeNet) and verify its sha1.

Tries BVLC's server first, then every known public copy, each checked against BVLC's sha1;
says which one served it. Offline: one line listing what was tried, exit 1. A site's own copy:
--url (repeatable) or ABE_GOOGLENET_URLS (space-separated), tried instead of the known ones.
"""
import functools
import os
import sys

from tqdm import tqdm

from abe import cli
from abe.net.pretrained import GOOGLENET_MIRRORS, GOOGLENET_SHA1, default_weights, fetch


def main(argv=None):
    parser = cli.Parser(prog="fetch_googlenet", description=__doc__)
    parser.add_argument("--out", default=str(default_weights()),
                        help="where to put the file (default: $ABE_WEIGHTS/bvlc_googlenet.caffemodel, "
                             "else weights/bvlc_googlenet.caffemodel)")
    parser.add_argument("--url", action="append",
                        help="download address, tried in the order given (repeatable; default: "
                             "$ABE_GOOGLENET_URLS, else " + ", ".join(GOOGLENET_MIRRORS) + ")")
    parser.add_argument("--sha1", default=GOOGLENET_SHA1, help="expected sha1 of the file")
    args = parser.parse_args(argv)
    urls = args.url or os.environ.get("ABE_GOOGLENET_URLS", "").split() or GOOGLENET_MIRRORS
    path, url = fetch(args.out, urls=urls, sha1=args.sha1,
                      progress=functools.partial(tqdm, disable=None))  # no bar off a terminal
    print(f"fetch_googlenet: {'served by ' + url if url else 'already there'}, sha1 verified",
          file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "fetch_googlenet"))
