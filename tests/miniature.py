"""Miniature copies of the four benchmark datasets, in their official layouts and annotation
formats (same file names, columns, headers, spacing and .mat struct), with small images of known
sizes and the awkward files real downloads contain: grayscale, CMYK, 16-bit and alpha images
(to be converted) and zero-byte, truncated, corrupt and missing ones (to be skipped)."""
import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy.io import savemat

SKIPPED_KINDS = ("zero-byte", "truncated", "corrupt", "missing")
CONVERTED_KINDS = ("gray", "cmyk", "gray16", "color16", "alpha")


@dataclass
class Miniature:
    root: Path
    image_root: Path  # the index's paths are image_root / relative path
    # split -> list of (relative path, class id, (width, height) of the whole image)
    expected: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # relative paths that must be skipped
    boxes: dict = field(default_factory=dict)  # relative path -> (x0, y0, x1, y1)


# RGB colours far from the padding colour both in colour and in gray (luma < 65 or > 165).
PALETTE = np.array([(20, 20, 20), (120, 20, 20), (20, 20, 120), (20, 60, 20),
                    (230, 230, 230), (230, 230, 20), (20, 230, 230), (230, 230, 120)])


def photo_rgb(rng, width, height):
    """An RGB test picture: a horizontal gradient between two colours of PALETTE."""
    start, end = PALETTE[rng.choice(len(PALETTE), size=2)]
    ramp = np.linspace(0, 1, width)[None, :, None]
    rgb = start + (end - start) * ramp
    return np.broadcast_to(rgb, (height, width, 3)).round().astype(np.uint8)


def image_bytes(kind, rgb):
    """The file bytes of ``rgb`` saved as ``kind`` (a plain JPEG or one of the odd formats)."""
    buffer = io.BytesIO()
    if kind in ("plain", "truncated"):  # no chroma subsampling: sharp edges to measure
        Image.fromarray(rgb).save(buffer, "JPEG", quality=95, subsampling=0)
    elif kind == "gray":
        Image.fromarray(rgb).convert("L").save(buffer, "JPEG", quality=95)
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(buffer, "JPEG", quality=95)
    elif kind == "alpha":
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        Image.fromarray(np.dstack([rgb, alpha])).save(buffer, "PNG")
    elif kind in ("gray16", "color16"):
        wide = rgb.astype(np.uint16) * 257
        if kind == "gray16":
            wide = wide[..., 0]
        else:
            wide = wide[..., ::-1]  # OpenCV writes BGR
        return cv2.imencode(".png", wide)[1].tobytes()
    elif kind == "zero-byte":
        return b""
    elif kind == "corrupt":
        return b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    else:
        raise ValueError(kind)
    data = buffer.getvalue()
    return data[: len(data) // 2] if kind == "truncated" else data


def bomb_png(width, height):
    """A complete, valid 1-bit grayscale PNG of ``width`` x ``height`` white pixels: tiny on disk
    (the rows compress to almost nothing), ``width * height`` pixels once decoded."""
    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter type 0, then the packed pixels
    compressor = zlib.compressobj(1)
    block = row * 1000
    idat = b"".join(compressor.compress(block) for _ in range(height // 1000))
    idat += compressor.compress(row * (height % 1000)) + compressor.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class _Writer:
    """Places images under a dataset root and records what the LMDBs must then hold."""

    SIZES = [(48, 32), (30, 45), (40, 40), (64, 20), (21, 50), (37, 29)]

    def __init__(self, root, seed, image_root=None):
        self.mini = Miniature(Path(root), Path(image_root or root))
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def next_size(self):
        return self.SIZES[self.count % len(self.SIZES)]

    def image(self, relative, split, class_id, kind="plain", box=None):
        width, height = self.next_size()
        self.count += 1
        if kind != "missing":
            path = self.mini.image_root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image_bytes(kind, photo_rgb(self.rng, width, height)))
        if kind in SKIPPED_KINDS:
            self.mini.skipped.append(relative)
            return
        if box is not None:
            self.mini.boxes[relative] = box
        self.mini.expected.setdefault(split, []).append((relative, str(class_id), (width, height)))


def _kinds(count, odd):
    """``count`` image kinds, the odd ones first, then plain JPEGs."""
    return list(odd) + ["plain"] * (count - len(odd))


def make_cub(root, seed=0):
    """CUB_200_2011: images.txt, image_class_labels.txt, bounding_boxes.txt (x y w h, floats),
    train_test_split.txt, classes.txt and images/<class folder>/<name>.jpg."""
    writer = _Writer(root, seed)
    classes = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross",
               100: "100.Brown_Pelican", 101: "101.White_Pelican",
               150: "150.Sage_Thrasher", 200: "200.Common_Yellowthroat"}
    odd = {1: SKIPPED_KINDS, 101: CONVERTED_KINDS}
    lines = {name: [] for name in ("images", "labels", "boxes", "split")}
    image_id = 0
    for class_id, folder in classes.items():
        for kind in _kinds(len(odd.get(class_id, ())) + 3, odd.get(class_id, ())):
            image_id += 1
            relative = f"{folder}/{folder.split('.')[1]}_{image_id:04d}_{image_id + 700}.jpg"
            split = "train" if class_id <= 100 else "test"
            width, height = writer.next_size()
            box = (3, 2, width - 4, height - 5)
            writer.image(f"images/{relative}", split, class_id, kind, box=box)
            lines["images"].append(f"{image_id} {relative}")
            lines["labels"].append(f"{image_id} {class_id}")
            lines["boxes"].append(f"{image_id} {box[0]:.1f} {box[1]:.1f} "
                                  f"{box[2] - box[0]:.1f} {box[3] - box[1]:.1f}")
            lines["split"].append(f"{image_id} {image_id % 2}")  # the classification split
    root = Path(root)
    for name, file in (("images", "images.txt"), ("labels", "image_class_labels.txt"),
                       ("boxes", "bounding_boxes.txt"), ("split", "train_test_split.txt")):
        (root / file).write_text("\n".join(lines[name]) + "\n")
    (root / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in classes.items()))
    return writer.mini


def make_cars(root, seed=1):
    """CARS-196: cars_annos.mat (struct array ``annotations``: relative_im_path, bbox_x1,
    bbox_y1, bbox_x2, bbox_y2 (1-based, inclusive), class, test; cell ``class_names``) and
    car_ims/000001.jpg ... ."""
    writer = _Writer(root, seed)
    class_ids = [1, 2, 98, 99, 150, 196]
    odd = {2: ("gray", "zero-byte"), 196: ("cmyk", "truncated")}
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    entries = []
    for class_id in class_ids:
        for kind in _kinds(3, odd.get(class_id, ())):
            relative = f"car_ims/{len(entries) + 1:06d}.jpg"
            width, height = writer.next_size()
            x1, y1, x2, y2 = 2, 3, width - 1, height - 2  # 1-based inclusive pixel numbers
            writer.image(relative, "train" if class_id <= 98 else "test", class_id, kind,
                         box=(x1 - 1, y1 - 1, x2, y2))
            small = lambda v: np.array([[v]], np.uint8 if v < 256 else np.uint16)
            entries.append((np.array([relative]), small(x1), small(y1), small(x2), small(y2),
                            small(class_id), small(len(entries) % 2)))
    annotations = np.empty((1, len(entries)), dtype=[(f, object) for f in fields])
    for i, entry in enumerate(entries):
        annotations[0, i] = entry
    class_names = np.empty((1, 196), dtype=object)
    class_names[0, :] = [f"Make Model {k} 2012" for k in range(1, 197)]
    savemat(str(Path(root) / "cars_annos.mat"),
            {"annotations": annotations, "class_names": class_names})
    return writer.mini


def make_sop(root, seed=2):
    """Stanford_Online_Products: Ebay_train.txt / Ebay_test.txt (header line, then
    image_id class_id super_class_id path) and <super class>_final/<id>_<n>.JPG."""
    writer = _Writer(root, seed)
    root = Path(root)
    supers = {1: "bicycle_final", 2: "cabinet_final", 11: "table_final", 12: "toaster_final"}
    layout = {"train": [(1, 1, 3), (2, 1, 2), (11318, 12, 2), (40, 2, 1)],
              "test": [(11319, 1, 2), (11320, 11, 3), (22634, 12, 2)]}
    odd = {40: ("alpha",), 11320: ("corrupt",)}
    image_id = 0
    for split, classes in layout.items():
        lines = ["image_id class_id super_class_id path"]
        for class_id, super_id, count in classes:
            for n, kind in enumerate(_kinds(count, odd.get(class_id, ()))):
                image_id += 1
                relative = f"{supers[super_id]}/{111085122800 + class_id}_{n}.JPG"
                writer.image(relative, split, class_id, kind)
                lines.append(f"{image_id} {class_id} {super_id} {relative}")
        (root / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "Ebay_info.txt").write_text("image_id class_id super_class_id path\n")
    return writer.mini


def make_inshop(root, seed=3, image_folder="Img"):
    """In-shop Clothes: Eval/list_eval_partition.txt (count line, header line, then
    image_name item_id evaluation_status, space-padded columns) and images under Img/img/..."""
    root = Path(root)
    writer = _Writer(root, seed, image_root=root / image_folder)
    layout = [("train", "id_00000002", "WOMEN/Dresses", 3), ("train", "id_00000080", "MEN/Denim", 2),
              ("query", "id_00000001", "WOMEN/Blouses_Shirts", 2),
              ("gallery", "id_00000001", "WOMEN/Blouses_Shirts", 2),
              ("query", "id_00007982", "MEN/Tees_Tanks", 1),
              ("gallery", "id_00007982", "MEN/Tees_Tanks", 3),
              ("gallery", "id_00000007", "WOMEN/Skirts", 1)]
    odd = {("gallery", "id_00000007"): ("color16",), ("train", "id_00000080"): ("missing",)}
    rows = []
    for status, item, category, count in layout:
        for n, kind in enumerate(_kinds(count, odd.get((status, item), ()))):
            name = f"img/{category}/{item}/{n + 1:02d}_{n % 4 + 1}_{status}.jpg"
            writer.image(name, status, item, kind)
            rows.append(f"{name:<60}{item:<15}{status}")
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    (root / "Eval" / "list_eval_partition.txt").write_text(text)
    return writer.mini


MAKERS = {"cub": make_cub, "cars": make_cars, "sop": make_sop, "inshop": make_inshop}


def digits_lmdbs(root, every=4, size=40):
    """Every ``every``-th image of the bundled digits as {split: LMDB path} under ``root``
    (train 0-4, test 5-9), the layout train.sh finds in DATA/lmdb/digits/."""
    from abe.data import datasets
    from abe.data.digits import export_digits
    from abe.data.prepare import build_split

    splits = datasets.load("folder", export_digits(Path(root) / "png"))
    lmdbs = {split: Path(root) / f"{split}_lmdb" for split in splits}
    for split, records in splits.items():
        build_split(records[::every], lmdbs[split], name=split, size=size, workers=1,
                    progress=False)
    return lmdbs
