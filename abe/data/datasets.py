"""The benchmark datasets, read from their official annotation files in place, with the paper's
zero-shot splits (train and test classes disjoint; ABE_SPEC.md section 4).

Each loader returns ``{split name: [Record, ...]}`` in annotation-file order. Labels are
contiguous class indices within a split, in sorted order of the original class ids; In-shop's
query and gallery share one label space so that equal labels mean the same item.
"""
from dataclasses import dataclass
from pathlib import Path

from scipy.io import loadmat

EXPECTED_COUNTS = {
    "cub": {"train": 5864, "test": 5924},
    "cars": {"train": 8054, "test": 8131},
    "sop": {"train": 59551, "test": 60502},
    "inshop": {"train": 25882, "query": 14218, "gallery": 12612},
}

CUB_LAST_TRAIN_CLASS, CARS_LAST_TRAIN_CLASS = 100, 98
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Record:
    path: Path
    class_id: str  # the class as the annotation file names it
    label: int  # contiguous index within the split
    box: tuple = None  # (x0, y0, x1, y1) pixel edges, for --bbox


class DatasetError(ValueError):
    """A wrong root or a broken annotation file; the message is one line for users."""


def load(name, root, bbox=False):
    """The splits of dataset ``name`` (cub, cars, sop, inshop, folder) found under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a folder")
    if bbox and name not in ("cub", "cars"):
        raise DatasetError(f"--bbox is only defined for cub and cars, not {name}")
    return LOADERS[name](root, bbox) if name in ("cub", "cars") else LOADERS[name](root)


def count_warnings(name, counts):
    """One line per split whose image count differs from the spec's table (both numbers)."""
    expected = EXPECTED_COUNTS.get(name, {})
    return [f"warning: {name} {split} has {counts[split]} images, the spec expects {count}"
            for split, count in expected.items() if counts[split] != count]


def _require(path):
    if not path.is_file():
        raise DatasetError(f"missing annotation file {path} (is --root the dataset's folder?)")
    return path


def _rows(path, columns, skip=0):
    """Whitespace-separated rows of an annotation file, each with exactly ``columns`` fields."""
    _require(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path} is not a text annotation file ({error.reason})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if number <= skip or not line.strip():
            continue
        fields = line.split()
        if len(fields) != columns:
            raise DatasetError(f"{path} line {number}: expected {columns} fields, got {len(fields)}")
        rows.append(fields)
    return rows


def _class_order(class_ids):
    """Sorted distinct class ids (numerically when they are numbers) -> contiguous labels."""
    distinct = sorted(set(class_ids), key=lambda c: (0, int(c), c) if c.isdigit() else (1, 0, c))
    return {class_id: label for label, class_id in enumerate(distinct)}


def _labelled(samples, label_of=None):
    """Records of (path, class_id, box) samples, labelled by ``label_of`` or their own order."""
    label_of = label_of or _class_order(class_id for _, class_id, _ in samples)
    return [Record(path, class_id, label_of[class_id], box) for path, class_id, box in samples]


def _split_classes(samples, is_train_class):
    """The zero-shot split: samples of classes passing ``is_train_class`` train, others test."""
    train = [s for s in samples if is_train_class(s[1])]
    test = [s for s in samples if not is_train_class(s[1])]
    return {"train": _labelled(train), "test": _labelled(test)}


def load_cub(root, bbox=False):
    """CUB-200-2011: images.txt + image_class_labels.txt (+ bounding_boxes.txt, x y w h)."""
    paths = dict(_rows(root / "images.txt", 2))
    classes = dict(_rows(root / "image_class_labels.txt", 2))
    boxes = {}
    if bbox:
        for image_id, x, y, w, h in _rows(root / "bounding_boxes.txt", 5):
            x, y, w, h = map(float, (x, y, w, h))
            boxes[image_id] = (x, y, x + w, y + h)
    samples = []
    for image_id, relative in paths.items():
        if image_id not in classes:
            raise DatasetError(f"{root / 'image_class_labels.txt'} has no class for image {image_id}")
        samples.append((root / "images" / relative, classes[image_id], boxes.get(image_id)))
    return _split_classes(samples, lambda class_id: int(class_id) <= CUB_LAST_TRAIN_CLASS)


def load_cars(root, bbox=False):
    """CARS-196: cars_annos.mat, a struct array ``annotations`` (relative_im_path, bbox_x1,
    bbox_y1, bbox_x2, bbox_y2 (1-based, inclusive), class, test)."""
    path = _require(root / "cars_annos.mat")
    try:
        annotations = loadmat(str(path), squeeze_me=True)["annotations"]
        samples = []
        for entry in annotations.ravel():
            box = None
            if bbox:
                x1, y1, x2, y2 = (float(entry[f]) for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
                box = (x1 - 1, y1 - 1, x2, y2)
            samples.append((root / str(entry["relative_im_path"]), str(int(entry["class"])), box))
    except (KeyError, ValueError, TypeError, OSError) as error:
        raise DatasetError(f"{path} is not the CARS-196 annotation file ({error})") from None
    return _split_classes(samples, lambda class_id: int(class_id) <= CARS_LAST_TRAIN_CLASS)


def load_sop(root):
    """Stanford Online Products: Ebay_train.txt / Ebay_test.txt (header, then
    image_id class_id super_class_id path); the files are the zero-shot split."""
    splits = {}
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        rows = _rows(root / name, 4, skip=1)
        splits[split] = _labelled([(root / rel, class_id, None) for _, class_id, _, rel in rows])
    return splits


def load_inshop(root):
    """In-shop Clothes: Eval/list_eval_partition.txt (a count line, a header line, then
    image_name item_id evaluation_status); images under ``root`` or ``root/Img``."""
    path = root / "Eval" / "list_eval_partition.txt"
    rows = _rows(path, 3, skip=2)
    image_root = root / "Img" if not (root / "img").is_dir() and (root / "Img").is_dir() else root
    by_status = {"train": [], "query": [], "gallery": []}
    for name, item_id, status in rows:
        if status not in by_status:
            raise DatasetError(f"{path}: unknown evaluation_status {status!r}")
        by_status[status].append((image_root / name, item_id, None))
    shared = _class_order(item_id for status in ("query", "gallery")
                          for _, item_id, _ in by_status[status])
    return {"train": _labelled(by_status["train"]),
            "query": _labelled(by_status["query"], shared),
            "gallery": _labelled(by_status["gallery"], shared)}


def load_folder(root):
    """A folder per class (``root/<class>/<image>``); the first half of the classes (sorted)
    train, the rest test."""
    samples = [(image, folder.name, None)
               for folder in sorted(p for p in root.iterdir() if p.is_dir())
               for image in sorted(folder.iterdir()) if image.suffix.lower() in IMAGE_SUFFIXES]
    if not samples:
        raise DatasetError(f"no class folders with images under {root}")
    order = _class_order(class_id for _, class_id, _ in samples)
    return _split_classes(samples, lambda class_id: order[class_id] < len(order) // 2)


LOADERS = {"cub": load_cub, "cars": load_cars, "sop": load_sop, "inshop": load_inshop,
           "folder": load_folder}
