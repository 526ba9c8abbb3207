"""Caffe ``Datum`` LMDBs: written atomically with a sidecar index, read back as BGR arrays.

An LMDB folder is built under ``<name>.partial`` and renamed to ``<name>`` only after its last
record and its index are on disk, so a folder with the final name is always complete. Keys are
the zero-padded record number, so LMDB's sorted order is the order records were written in.
The index (``index.tsv`` inside the folder, written with it) traces every key back to its file.

The map starts small and doubles whenever LMDB reports it full, then the batch is written again:
what BVLC Caffe's own writer (``db_lmdb.cpp``) does. A fixed huge map would need that much
address space, which ``ulimit -v`` (common on cluster login nodes) refuses.
"""
import csv
import os
import shutil
from pathlib import Path

import lmdb
import numpy as np
from caffe.proto import caffe_pb2

from abe.data.imaging import decode_jpeg
from abe.errors import EnvironmentFailure

INDEX_NAME = "index.tsv"
INDEX_COLUMNS = ("key", "path", "class_id", "label")
INITIAL_MAP_SIZE = 10 << 20  # LMDB's own default, which BVLC Caffe starts from
COMMIT_EVERY = 500


def record_key(number):
    return f"{number:08d}".encode()


def make_datum(image, label, encoded_jpeg=None):
    """A Datum of an H x W x 3 BGR square: raw C x H x W bytes, or the given JPEG bytes."""
    datum = caffe_pb2.Datum()
    datum.height, datum.width, datum.channels = image.shape[0], image.shape[1], 3
    datum.label = int(label)
    if encoded_jpeg is None:
        datum.data = np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes()
    else:
        datum.data = encoded_jpeg
        datum.encoded = True
    return datum.SerializeToString()


def datum_header(value):
    """(label, height, width) of a serialized Datum, without decoding its pixels."""
    datum = caffe_pb2.Datum()
    datum.ParseFromString(value)
    return datum.label, datum.height, datum.width


def parse_datum(value):
    """(H x W x 3 BGR uint8 array, label) of a serialized Datum, raw or encoded."""
    datum = caffe_pb2.Datum()
    datum.ParseFromString(value)
    if datum.encoded:
        return decode_jpeg(datum.data), datum.label
    chw = np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width)
    return chw.transpose(1, 2, 0), datum.label


class LmdbWriter:
    """Appends records to ``<path>.partial``; ``finish()`` writes the index, ``publish()`` gives
    the folder its final name. LMDB failures (a full disk) become ``EnvironmentFailure``."""

    def __init__(self, path, map_size=INITIAL_MAP_SIZE):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        shutil.rmtree(self.partial, ignore_errors=True)  # leftover of an interrupted run
        self.map_size = map_size
        self.pending = []  # records of the batch not yet committed
        self.index = []
        self.env = self._lmdb(lambda: lmdb.open(str(self.partial), map_size=map_size,
                                                subdir=True, lock=False))

    def __len__(self):
        return len(self.index)

    def _lmdb(self, call):
        try:
            return call()
        except lmdb.Error as error:
            raise self._failure(error) from None

    def _failure(self, error):
        """A one-line EnvironmentFailure. LMDB reports a full disk as an I/O error, so the line
        gives the free space; running out of memory is usually a ``ulimit -v``."""
        if isinstance(error, lmdb.MemoryError):
            hint = f"map {self.map_size >> 20} MiB; is the address space limited by ulimit -v?"
        else:
            try:
                hint = f"{shutil.disk_usage(self.partial).free:,} bytes free on its disk"
            except OSError:
                hint = "free space unknown"
        return EnvironmentFailure(f"cannot write the LMDB {self.partial}: {error} ({hint})")

    def append(self, value, path, class_id, label):
        key = record_key(len(self.index))
        self.pending.append((key, value))
        self.index.append((key.decode(), str(path), str(class_id), int(label)))
        if len(self.pending) >= COMMIT_EVERY:
            self._flush()

    def _flush(self):
        """Commit the pending batch, doubling the map and retrying while LMDB says it is full."""
        while True:
            try:
                with self.env.begin(write=True) as txn:  # aborted if a put fails
                    for key, value in self.pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as error:
                raise self._failure(error) from None
        self.pending.clear()

    def _grow(self):
        self._lmdb(lambda: self.env.set_mapsize(self.map_size * 2))
        self.map_size *= 2

    def finish(self):
        """Commit everything and write the index; the folder keeps its ``.partial`` name."""
        self._flush()
        self._lmdb(self.env.sync)
        self.env.close()
        self.env = None
        with open(self.partial / INDEX_NAME, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(INDEX_COLUMNS)
            writer.writerows(self.index)

    def publish(self):
        """Give the finished folder its final name (replacing an earlier build of it)."""
        replaced = self.path.with_name(self.path.name + ".old")
        shutil.rmtree(replaced, ignore_errors=True)
        if self.path.exists():
            os.replace(self.path, replaced)
        os.replace(self.partial, self.path)
        shutil.rmtree(replaced, ignore_errors=True)
        return self.path

    def commit(self):
        """``finish()`` then ``publish()``."""
        self.finish()
        return self.publish()

    def abort(self):
        """Drop everything written; nothing is left under either name."""
        if self.env is not None:
            self.env.close()
            self.env = None
        shutil.rmtree(self.partial, ignore_errors=True)


def open_readonly(path):
    path = Path(path)
    if not (path / "data.mdb").is_file():
        raise FileNotFoundError(f"no LMDB at {path} (missing {path / 'data.mdb'})")
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True)


def iter_records(path):
    """(key, serialized Datum) of every record, in key order."""
    with open_readonly(path) as env, env.begin(buffers=False) as txn:
        yield from txn.cursor()


def read_index(path):
    """The sidecar index as a list of dicts (key, path, class_id, label)."""
    with open(Path(path) / INDEX_NAME, newline="") as f:
        return [dict(row, label=int(row["label"])) for row in csv.DictReader(f, delimiter="\t")]
