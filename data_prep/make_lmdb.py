#!/usr/bin/env python
"""Build the Caffe LMDBs of one dataset from its official download, with the zero-shot split.

    python data_prep/make_lmdb.py --dataset cub --root CUB_200_2011 --out data/cub

writes OUT/train_lmdb and OUT/test_lmdb (In-shop: OUT/train_lmdb, OUT/query_lmdb,
OUT/gallery_lmdb) and OUT/report.txt (counts, warnings, every skipped file and why).
``--dataset digits`` first writes scikit-learn's bundled digits under --root as PNG files.
"""
import argparse
import os
import sys
from pathlib import Path

from abe.data import datasets
from abe.data.prepare import DEFAULT_QUALITY, ENCODINGS, build_split, write_report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=["cub", "cars", "sop", "inshop", "digits"])
    parser.add_argument("--root", required=True, type=Path,
                        help="the folder the official archive unpacks to (CUB: the one holding images.txt)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="decode/resize processes (default: all cores)")
    parser.add_argument("--bbox", action="store_true", help="crop CUB/CARS to their bounding boxes")
    parser.add_argument("--size", type=int, default=256, help="side of the padded square (default 256)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="jpeg",
                        help="datum payload: JPEG bytes (default, ~7x smaller) or raw pixels")
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality (default 95)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.size < 1 or not 1 <= args.quality <= 100:
        parser.error("--workers and --size must be positive, --quality within 1-100")
    return args


def main(argv=None):
    args = parse_args(argv)
    name = args.dataset
    try:
        if name == "digits":
            from abe.data.digits import export_digits

            export_digits(args.root)
            name = "folder"
        splits = datasets.load(name, args.root, bbox=args.bbox)
    except datasets.DatasetError as error:
        print(f"make_lmdb: {error}", file=sys.stderr)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        reports = [build_split(records, args.out / f"{split}_lmdb", name=split, size=args.size,
                               encoding=args.encoding, quality=args.quality, workers=args.workers)
                   for split, records in splits.items()]
    except KeyboardInterrupt:
        print("make_lmdb: interrupted; unfinished LMDBs removed, rerun to build them", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"make_lmdb: cannot write {args.out}: {error.strerror or error}", file=sys.stderr)
        return 2
    written = {r.name: r.written for r in reports}
    lines = write_report(args.out / "report.txt", reports, datasets.count_warnings(name, written))
    print("\n".join(line for line in lines if not line.startswith("skipped\t")))
    skipped = sum(len(r.skipped) for r in reports)
    if skipped:
        print(f"{skipped} unreadable images skipped; listed in {args.out / 'report.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
