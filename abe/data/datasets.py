"""The benchmark datasets, read from their official annotation files in place, with the paper's
zero-shot splits (train and test classes disjoint; ABE_SPEC.md section 4).

Each loader returns ``{split name: [Record, ...]}`` in annotation-file order. Labels are
contiguous class indices within a split, in sorted order of the original class ids; In-shop's
query and gallery share one label space so that equal labels mean the same item.
"""
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from abe.data.files import NotReadable, read_regular_file
from abe.errors import UserError

EXPECTED_COUNTS = {
    "cub": {"train": 5864, "test": 5924},
    "cars": {"train": 8054, "test": 8131},
    "sop": {"train": 59551, "test": 60502},
    "inshop": {"train": 25882, "query": 14218, "gallery": 12612},
}

CUB_LAST_TRAIN_CLASS, CARS_LAST_TRAIN_CLASS = 100, 98
CUB_CLASSES, CARS_CLASSES = 200, 196
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# The largest official annotation file (SOP's Ebay_test.txt) is ~4 MB; anything far larger is
# not an annotation file, and reading it whole would only exhaust memory.
MAX_ANNOTATION_BYTES = 256 << 20


@dataclass(frozen=True)
class Record:
    path: Path
    class_id: str  # the class as the annotation file names it
    label: int  # contiguous index within the split (-1 for a rejected entry)
    box: tuple = None  # (x0, y0, x1, y1) pixel edges, for --bbox
    rejected: str = None  # why the entry is never opened (its path leaves the dataset root)


class DatasetError(UserError):
    """A wrong root or a broken annotation file; the message is one line for users."""


def load(name, root, bbox=False):
    """The splits of dataset ``name`` (cub, cars, sop, inshop, folder) found under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"cannot read dataset root {root} (permission denied)")
    if bbox and name not in ("cub", "cars"):
        raise DatasetError(f"--bbox is only defined for cub and cars, not {name}")
    splits = LOADERS[name](root, bbox) if name in ("cub", "cars") else LOADERS[name](root)
    for split, records in splits.items():
        if not records:
            raise DatasetError(f"the annotation files under {root} list no {split} images")
    return splits


def count_warnings(name, counts):
    """One line per split whose image count differs from the spec's table (both numbers)."""
    expected = EXPECTED_COUNTS.get(name, {})
    return [f"warning: {name} {split} has {counts[split]} images, the spec expects {count}"
            for split, count in expected.items() if counts[split] != count]


def confine(base, relative):
    """(base / relative, None), or (that path, why it is rejected) when the annotation's path is
    absolute or leads out of ``base`` with '..' (judged on the text, after normalisation: a
    symlinked folder inside the root, e.g. images/ on another disk, stays usable)."""
    relative = str(relative)
    path = Path(base) / relative
    if any(ord(c) < 32 or c == "\x7f" for c in relative):
        return path, "rejected: the annotation's path contains control characters"
    normal = os.path.normpath(relative)
    if os.path.isabs(normal):
        return Path(relative), "outside the dataset root: the annotation's path is absolute"
    if normal == ".." or normal.startswith(".." + os.sep):
        return path, "outside the dataset root: the annotation's path leads out of it with '..'"
    return path, None


def _read(path):
    """The bytes of an annotation file, never of a FIFO or device."""
    try:
        return read_regular_file(path, MAX_ANNOTATION_BYTES)
    except FileNotFoundError:
        raise DatasetError(f"missing annotation file {path} (is --root the dataset's folder?)") from None
    except NotReadable as error:
        raise DatasetError(f"annotation file {path}: {error}") from None


def read_rows(path, columns, skip=0):
    """(line number, fields) of each non-blank row of a whitespace-separated annotation file,
    each row with exactly ``columns`` fields; one-line errors for binary or malformed files."""
    data = _read(path)
    try:
        if b"\0" in data:
            raise UnicodeError("NUL bytes")
        lines = data.decode("utf-8").splitlines()
    except UnicodeError as error:
        reason = getattr(error, "reason", None) or str(error)
        raise DatasetError(f"{path} is binary, not a text annotation file ({reason})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if number <= skip or not line.strip():
            continue
        fields = line.split()
        if len(fields) != columns:
            raise DatasetError(f"{path} line {number}: expected {columns} fields, got {len(fields)}")
        rows.append((number, fields))
    return rows


def _unique(path, rows):
    """{id: value} of two-column ``rows``; a repeated id is an error naming its line."""
    table = {}
    for number, (key, value) in rows:
        if key in table:
            raise DatasetError(f"{path} line {number}: id {key} is listed twice")
        table[key] = value
    return table


def _class_number(value, last, where):
    """An official numeric class id (1..last) as its canonical string, or a one-line error."""
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise DatasetError(f"{where}: class id {value!r} is not a number") from None
    if not 1 <= number <= last:
        raise DatasetError(f"{where}: class id {number} is outside 1-{last}")
    return str(number)


def _box(values, where):
    """(x0, y0, x1, y1) of finite numbers, or a one-line error."""
    try:
        box = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: bounding box {list(values)!r} is not numeric") from None
    if not all(math.isfinite(v) for v in box):
        raise DatasetError(f"{where}: bounding box {list(values)!r} is not finite")
    return box


def _class_order(class_ids):
    """Sorted distinct class ids (numerically when they are numbers) -> contiguous labels."""
    distinct = sorted(set(class_ids), key=lambda c: (0, int(c), c) if c.isdigit() else (1, 0, c))
    return {class_id: label for label, class_id in enumerate(distinct)}


def _sample(base, relative, class_id, box=None):
    """A (path, class_id, box, rejected) sample of an annotation entry, confined to ``base``."""
    path, rejected = confine(base, relative)
    return path, class_id, box, rejected


def _labelled(samples, label_of=None):
    """Records of samples, labelled by ``label_of`` or their own class order; rejected entries
    take no part in the labels (label -1)."""
    label_of = label_of or _class_order(c for _, c, _, rejected in samples if not rejected)
    return [Record(path, class_id, -1 if rejected else label_of[class_id], box, rejected)
            for path, class_id, box, rejected in samples]


def _split_classes(samples, is_train_class):
    """The zero-shot split: samples of classes passing ``is_train_class`` train, others test."""
    train = [s for s in samples if is_train_class(s[1])]
    test = [s for s in samples if not is_train_class(s[1])]
    return {"train": _labelled(train), "test": _labelled(test)}


def load_cub(root, bbox=False):
    """CUB-200-2011: images.txt + image_class_labels.txt (+ bounding_boxes.txt, x y w h)."""
    images, labels = root / "images.txt", root / "image_class_labels.txt"
    paths = _unique(images, read_rows(images, 2))
    classes = {image_id: _class_number(class_id, CUB_CLASSES, f"{labels} line {number}")
               for number, (image_id, class_id) in read_rows(labels, 2)}
    boxes = {}
    if bbox:
        path = root / "bounding_boxes.txt"
        for number, (image_id, *xywh) in read_rows(path, 5):
            x, y, w, h = _box(xywh, f"{path} line {number}")
            boxes[image_id] = (x, y, x + w, y + h)
    samples = []
    for image_id, relative in paths.items():
        if image_id not in classes:
            raise DatasetError(f"{labels} has no class for image {image_id}")
        samples.append(_sample(root / "images", relative, classes[image_id], boxes.get(image_id)))
    return _split_classes(samples, lambda class_id: int(class_id) <= CUB_LAST_TRAIN_CLASS)


def _read_mat(path):
    """The variables of a MATLAB v5 file; one-line errors for anything else (text, empty,
    truncated, v7.3/HDF5). scipy raises many exception types on damaged files, hence the
    broad catch around the one call that parses untrusted bytes."""
    data = _read(path)
    header = data[:128]
    if header.startswith(b"MATLAB 7.3") or header[124:128] in (b"\x00\x02IM", b"\x02\x00MI"):
        raise DatasetError(f"{path} is a MATLAB v7.3 (HDF5) file; the official CARS-196 "
                           "cars_annos.mat is MATLAB v5: use the original download")
    if len(header) < 128 or not header.startswith(b"MATLAB 5.0 MAT-file"):
        raise DatasetError(f"{path} is not a MATLAB v5 file (the CARS-196 cars_annos.mat is one)")
    from scipy.io import loadmat  # slow to import, and only CARS needs it

    try:
        return loadmat(io.BytesIO(data), squeeze_me=True)
    except Exception as error:  # noqa: BLE001  (see the docstring)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DatasetError(f"{path} is damaged or truncated ({reason})") from None


def load_cars(root, bbox=False):
    """CARS-196: cars_annos.mat, a struct array ``annotations`` (relative_im_path, bbox_x1,
    bbox_y1, bbox_x2, bbox_y2 (1-based, inclusive), class, test)."""
    path = root / "cars_annos.mat"
    variables = _read_mat(path)
    try:
        entries = list(variables["annotations"].ravel())
        samples = []
        for number, entry in enumerate(entries, 1):
            where = f"{path} annotation {number}"
            box = None
            if bbox:
                x1, y1, x2, y2 = _box([entry[f] for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")],
                                      where)
                box = (x1 - 1, y1 - 1, x2, y2)
            class_id = _class_number(entry["class"], CARS_CLASSES, where)
            samples.append(_sample(root, str(entry["relative_im_path"]), class_id, box))
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as error:
        raise DatasetError(f"{path} is not the CARS-196 annotation file ({error!r})") from None
    return _split_classes(samples, lambda class_id: int(class_id) <= CARS_LAST_TRAIN_CLASS)


def load_sop(root):
    """Stanford Online Products: Ebay_train.txt / Ebay_test.txt (header, then
    image_id class_id super_class_id path); the files are the zero-shot split."""
    splits = {}
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        rows = read_rows(root / name, 4, skip=1)
        splits[split] = _labelled([_sample(root, rel, class_id)
                                   for _, (_, class_id, _, rel) in rows])
    return splits


def load_inshop(root):
    """In-shop Clothes: Eval/list_eval_partition.txt (a count line, a header line, then
    image_name item_id evaluation_status); images under ``root`` or ``root/Img``."""
    path = root / "Eval" / "list_eval_partition.txt"
    rows = read_rows(path, 3, skip=2)
    image_root = root / "Img" if not (root / "img").is_dir() and (root / "Img").is_dir() else root
    by_status = {"train": [], "query": [], "gallery": []}
    for number, (name, item_id, status) in rows:
        if status not in by_status:
            raise DatasetError(f"{path} line {number}: unknown evaluation_status {status!r}")
        by_status[status].append(_sample(image_root, name, item_id))
    shared = _class_order(item_id for status in ("query", "gallery")
                          for _, item_id, _, rejected in by_status[status] if not rejected)
    return {"train": _labelled(by_status["train"]),
            "query": _labelled(by_status["query"], shared),
            "gallery": _labelled(by_status["gallery"], shared)}


def load_folder(root):
    """A folder per class (``root/<class>/<image>``); the first half of the classes (sorted)
    train, the rest test."""
    samples = [(image, folder.name, None, None)
               for folder in sorted(p for p in root.iterdir() if p.is_dir())
               for image in sorted(folder.iterdir()) if image.suffix.lower() in IMAGE_SUFFIXES]
    if not samples:
        raise DatasetError(f"no class folders with images under {root}")
    order = _class_order(class_id for _, class_id, _, _ in samples)
    return _split_classes(samples, lambda class_id: order[class_id] < len(order) // 2)


LOADERS = {"cub": load_cub, "cars": load_cars, "sop": load_sop, "inshop": load_inshop,
           "folder": load_folder}
