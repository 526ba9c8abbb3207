#!/usr/bin/env python3
"""Download bvlc_googlenet.caffemodel from BVLC and verify its sha1."""
import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from abe.net.pretrained import GOOGLENET_SHA1, GOOGLENET_URL, FetchError, fetch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "bvlc_googlenet.caffemodel"),
                        help="where to put the file (default: weights/bvlc_googlenet.caffemodel)")
    parser.add_argument("--url", default=GOOGLENET_URL, help="download address (default: BVLC's)")
    parser.add_argument("--sha1", default=GOOGLENET_SHA1, help="expected sha1 of the file")
    args = parser.parse_args(argv)
    try:
        path = fetch(args.out, url=args.url, sha1=args.sha1, progress=tqdm)
    except FetchError as e:
        print(f"fetch_googlenet: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
