"""Dataset splits to Caffe LMDBs: parallel decode/resize workers, one writer, a skip report.

Workers return finished records in annotation order (``imap``), so the LMDB is the same for any
number of workers and for a rerun after an interrupted run. They are started by a fork server
(a clean process with this module preloaded): forking the caller itself can deadlock a worker
on a lock that one of the caller's threads (OpenCV's pool, tqdm's monitor) held at the fork.
"""
import multiprocessing
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
from tqdm import tqdm

from abe.data.imaging import BadImage, crop_box, decode_bgr, encode_jpeg, resize_and_pad
from abe.data.lmdb_store import LmdbWriter, make_datum

ENCODINGS = ("jpeg", "raw")
DEFAULT_QUALITY = 95


@dataclass
class SplitReport:
    name: str
    written: int = 0
    skipped: list = field(default_factory=list)  # (path, reason)


def prepare_record(record, size, encoding, quality):
    """The serialized Datum of one record, or the one-line reason it was skipped."""
    try:
        data = Path(record.path).read_bytes()
    except OSError as error:
        return None, f"unreadable: {error.strerror or error}"
    try:
        image = decode_bgr(data)
    except BadImage as error:
        return None, str(error)
    if record.box is not None:
        image = crop_box(image, record.box)
    square = resize_and_pad(image, size)
    jpeg = encode_jpeg(square, quality) if encoding == "jpeg" else None
    return make_datum(square, record.label, jpeg), None


def _init_worker():
    cv2.setNumThreads(1)  # parallelism comes from the worker processes


def build_split(records, path, *, name, size=256, encoding="jpeg", quality=DEFAULT_QUALITY,
                workers=1, progress=True):
    """Write ``records`` to the LMDB ``path`` (atomically); return its SplitReport.

    The workers come from a fork server, so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    report = SplitReport(name)
    writer = LmdbWriter(path)
    work = partial(prepare_record, size=size, encoding=encoding, quality=quality)
    chunk = max(1, min(64, len(records) // (workers * 8)))
    try:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        with context.Pool(workers, _init_worker) as pool:
            results = pool.imap(work, records, chunksize=chunk)
            for record, (value, reason) in tqdm(zip(records, results), total=len(records),
                                                desc=name, unit="img", disable=not progress):
                if value is None:
                    report.skipped.append((record.path, reason))
                else:
                    writer.append(value, record.path, record.class_id, record.label)
        report.written = len(writer)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return report


def write_report(path, reports, warnings):
    """A human-readable summary: counts per split, every skipped file with its reason."""
    lines = [f"{r.name}: {r.written} written, {len(r.skipped)} skipped" for r in reports]
    lines += warnings
    for report in reports:
        lines += [f"skipped\t{report.name}\t{p}\t{reason}" for p, reason in report.skipped]
    tmp = Path(str(path) + ".partial")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return lines
