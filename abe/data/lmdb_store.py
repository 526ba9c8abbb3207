"""Caffe ``Datum`` LMDBs: written atomically with a sidecar index, read back as BGR arrays.

An LMDB folder is built under ``<name>.partial`` and renamed to ``<name>`` only after its last
record and its index are on disk, so a folder with the final name is always complete. Keys are
the zero-padded record number, so LMDB's sorted order is the order records were written in.
The index (``index.tsv`` inside the folder, written with it) traces every key back to its file.
"""
import csv
import os
import shutil
from pathlib import Path

import lmdb
import numpy as np
from caffe.proto import caffe_pb2

from abe.data.imaging import decode_jpeg

INDEX_NAME = "index.tsv"
INDEX_COLUMNS = ("key", "path", "class_id", "label")
MAP_SIZE = 1 << 40  # virtual reservation only; the file grows with what is written
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
    """Appends records to ``<path>.partial``; ``commit()`` writes the index and renames it."""

    def __init__(self, path):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        shutil.rmtree(self.partial, ignore_errors=True)  # leftover of an interrupted run
        self.env = lmdb.open(str(self.partial), map_size=MAP_SIZE, subdir=True, lock=False)
        self.txn = self.env.begin(write=True)
        self.index = []

    def __len__(self):
        return len(self.index)

    def append(self, value, path, class_id, label):
        key = record_key(len(self.index))
        self.txn.put(key, value)
        self.index.append((key.decode(), str(path), str(class_id), int(label)))
        if len(self.index) % COMMIT_EVERY == 0:
            self.txn.commit()
            self.txn = self.env.begin(write=True)

    def commit(self):
        self.txn.commit()
        self.env.sync()
        self.env.close()
        with open(self.partial / INDEX_NAME, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(INDEX_COLUMNS)
            writer.writerows(self.index)
        replaced = self.path.with_name(self.path.name + ".old")
        shutil.rmtree(replaced, ignore_errors=True)
        if self.path.exists():
            os.replace(self.path, replaced)
        os.replace(self.partial, self.path)
        shutil.rmtree(replaced, ignore_errors=True)
        return self.path

    def abort(self):
        self.txn.abort()
        self.env.close()
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
