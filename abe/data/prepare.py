"""Dataset splits to Caffe LMDBs: parallel decode/resize workers, one writer, a skip report.

Workers return finished records in annotation order (``imap``), so the LMDB is the same for any
number of workers and for a rerun after an interrupted run. They are started by a fork server
(a clean process with this module preloaded): forking the caller itself can deadlock a worker
on a lock that one of the caller's threads (OpenCV's pool, tqdm's monitor) held at the fork.
No worker outlives the caller, even one blocked in a read or stopped: the kernel kills a worker
when the fork server exits (PR_SET_PDEATHSIG), and the fork server exits when the caller dies
(SIGKILL included) once no worker holds its "alive" pipe, so each worker lets go of its copy.
A watchdog thread covers platforms without prctl.
"""
import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
from tqdm import tqdm

from abe.data.imaging import (DEFAULT_QUALITY, BadImage, crop_box, decode_bgr, encode_jpeg,
                              read_image_file, resize_and_pad)
from abe.data.lmdb_store import LmdbWriter, make_datum

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_S = 0.5  # how often a worker's watchdog checks that the caller is alive


@dataclass
class SplitReport:
    name: str
    written: int = 0
    skipped: list = field(default_factory=list)  # (path, reason)


def prepare_record(record, size, encoding, quality):
    """The serialized Datum of one record, or the one-line reason it was skipped."""
    if record.rejected:
        return None, record.rejected
    try:
        image = decode_bgr(read_image_file(record.path))
    except BadImage as error:
        return None, str(error)
    if record.box is not None:
        image = crop_box(image, record.box)
    square = resize_and_pad(image, size)
    jpeg = encode_jpeg(square, quality) if encoding == "jpeg" else None
    return make_datum(square, record.label, jpeg), None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _die_with_caller(caller):
    """Tie this worker's life to ``caller``, the process that started the build (see above)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    alive_fd = getattr(multiprocessing.forkserver._forkserver, "_forkserver_alive_fd", None)
    if alive_fd is not None:  # this worker starts no process of its own: it needs no copy
        os.close(alive_fd)
        multiprocessing.forkserver._forkserver._forkserver_alive_fd = None
    if not _alive(caller):  # died before the above took effect
        os._exit(1)

    def watchdog():
        while _alive(caller):
            time.sleep(WATCHDOG_S)
        os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()


def _init_worker(caller):
    _die_with_caller(caller)
    cv2.setNumThreads(1)  # parallelism comes from the worker processes
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's: it stops the pool


def _write_split(records, writer, name, work, workers, progress):
    report = SplitReport(name)
    chunk = max(1, min(64, len(records) // (workers * 8)))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with context.Pool(workers, _init_worker, (os.getpid(),)) as pool:
        results = pool.imap(work, records, chunksize=chunk)
        for record, (value, reason) in tqdm(zip(records, results), total=len(records), desc=name,
                                            unit="img", disable=not progress, file=sys.stdout):
            if value is None:
                report.skipped.append((record.path, reason))
            else:
                writer.append(value, record.path, record.class_id, record.label)
    report.written = len(writer)
    writer.finish()
    return report


def build_splits(jobs, *, size=256, encoding="jpeg", quality=DEFAULT_QUALITY, workers=1,
                 progress=True):
    """Write each ``(name, records, path)`` of ``jobs`` to its LMDB; return (reports, published).

    All are built under ``.partial`` names and published together only when every split holds
    at least one image: a failure or an empty split leaves the previous LMDBs as they were.
    The workers come from a fork server, so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    work = partial(prepare_record, size=size, encoding=encoding, quality=quality)
    writers, reports = [], []
    try:
        for name, records, path in jobs:
            writers.append(LmdbWriter(path))
            reports.append(_write_split(records, writers[-1], name, work, workers, progress))
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    published = all(report.written for report in reports)
    for writer in writers:
        writer.publish() if published else writer.abort()
    return reports, published


def build_split(records, path, *, name, **options):
    """One split (``build_splits`` options); its SplitReport. An empty result is not published."""
    reports, _ = build_splits([(name, records, path)], **options)
    return reports[0]


def report_path_text(path):
    """A path as one tab-free line of the report (control characters escaped)."""
    text = str(path)
    return text.encode("unicode_escape").decode() if any(ord(c) < 32 for c in text) else text


def write_report(path, reports, warnings):
    """A human-readable summary: counts per split, every skipped file with its reason."""
    lines = [f"{r.name}: {r.written} written, {len(r.skipped)} skipped" for r in reports]
    lines += warnings
    for report in reports:
        lines += [f"skipped\t{report.name}\t{report_path_text(p)}\t{reason}"
                  for p, reason in report.skipped]
    tmp = Path(str(path) + ".partial")
    try:
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return lines
