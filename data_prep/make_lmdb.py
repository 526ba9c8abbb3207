#!/usr/bin/env python
"""Build the Caffe LMDBs of one dataset from its official download, with the zero-shot split.

    python data_prep/make_lmdb.py --dataset cub --root CUB_200_2011 --out data/cub

writes OUT/train_lmdb and OUT/test_lmdb (In-shop: OUT/train_lmdb, OUT/query_lmdb,
OUT/gallery_lmdb) and OUT/report.txt (counts, warnings, every skipped file and why).
``--dataset digits`` first writes scikit-learn's bundled digits under --root as PNG files.
"""
import os
import sys
from pathlib import Path

from abe import cli
from abe.data import datasets
from abe.data.imaging import DEFAULT_QUALITY, ENCODINGS
from abe.errors import UserError

PROG = "make_lmdb"
SIZES = (8, 2048)  # the paper's squares are 256; larger ones only cost disk
MAX_WORKERS = 4 * (os.cpu_count() or 1)  # decoding is CPU-bound: more only costs memory


def parse_args(argv=None):
    parser = cli.Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=["cub", "cars", "sop", "inshop", "digits"])
    parser.add_argument("--root", required=True, type=Path,
                        help="the folder the official archive unpacks to (CUB: the one holding images.txt)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help=f"decode/resize processes, 1-{MAX_WORKERS} (default: all cores)")
    parser.add_argument("--bbox", action="store_true", help="crop CUB/CARS to their bounding boxes")
    parser.add_argument("--size", type=int, default=256,
                        help=f"side of the padded square, {SIZES[0]}-{SIZES[1]} (default 256)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="jpeg",
                        help="datum payload: JPEG bytes (default, ~7x smaller) or raw pixels")
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY,
                        help=f"JPEG quality, 1-100 (default {DEFAULT_QUALITY})")
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be within 1-{MAX_WORKERS} (4 per core here), not {args.workers}")
    if not SIZES[0] <= args.size <= SIZES[1]:
        parser.error(f"--size must be within {SIZES[0]}-{SIZES[1]} pixels, not {args.size}")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be within 1-100, not {args.quality}")
    return args


def make_lmdbs(args):
    name = args.dataset
    if name == "digits":
        from abe.data.digits import export_digits

        export_digits(args.root)
        name = "folder"
    splits = datasets.load(name, args.root, bbox=args.bbox)
    # Imported once the input is accepted: refusing bad input needs neither Caffe nor workers.
    from abe.data.prepare import build_splits, write_report

    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(split, records, args.out / f"{split}_lmdb") for split, records in splits.items()]
    try:
        reports, published = build_splits(jobs, size=args.size, encoding=args.encoding,
                                          quality=args.quality, workers=args.workers,
                                          progress=True)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; unfinished LMDBs removed, rerun to build them", file=sys.stderr)
        return 130
    written = {r.name: r.written for r in reports}
    warnings = datasets.count_warnings(name, written)
    failed_report = args.out / "report.failed.txt"
    if not published:  # the earlier LMDBs and their report.txt stay as they were
        write_report(failed_report, reports, warnings)
        empty = next(r for r in reports if not r.written)
        raise UserError(f"no image of the {empty.name} split could be read ({len(empty.skipped)} "
                        f"skipped, reasons in {failed_report}); no LMDB written")
    failed_report.unlink(missing_ok=True)
    report = args.out / "report.txt"
    lines = write_report(report, reports, warnings)
    print("\n".join(line for line in lines if not line.startswith("skipped\t")))
    skipped = sum(len(r.skipped) for r in reports)
    if skipped:
        print(f"{skipped} unreadable images skipped; listed in {report}")
    return 0


def main(argv=None):
    return cli.run(lambda: make_lmdbs(parse_args(argv)), PROG)


if __name__ == "__main__":
    sys.exit(main())
