"""The REAL official annotation files of CUB-200-2011 and CARS-196 (../shared/real_annotations,
read in place, never copied into the repository) through abe.data.datasets: the spec's
zero-shot split counts, class ranges, boxes, and every path inside the dataset root; then
make_lmdb end to end on the real CUB files with stand-in images behind a symlinked images/."""
import numpy as np
import pytest
from conftest import REPO

from hostile import run_entry
from miniature import image_bytes, photo_rgb

from abe.data import datasets
from abe.data.lmdb_store import read_index

REAL = REPO.parent / "shared" / "real_annotations"
CUB, CARS = REAL / "CUB_200_2011", REAL / "CARS196"

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} is absent (the real annotation "
                                "files live beside the repository, in ../shared)")


def assert_inside(records, base):
    for record in records:
        assert record.rejected is None, record
        assert record.path.is_relative_to(base) and ".." not in record.path.parts, record


@pytest.fixture(scope="module")
def cub():
    return datasets.load("cub", CUB, bbox=True)


def test_cub_zero_shot_split(cub):
    assert {split: len(records) for split, records in cub.items()} == datasets.EXPECTED_COUNTS["cub"]
    assert {int(r.class_id) for r in cub["train"]} == set(range(1, 101))
    assert {int(r.class_id) for r in cub["test"]} == set(range(101, 201))
    for records in cub.values():
        assert sorted({r.label for r in records}) == list(range(100))
        assert_inside(records, CUB / "images")


def test_cub_boxes_are_x_y_width_height(cub):
    rows = {image_id: xywh for _, (image_id, *xywh) in datasets.read_rows(CUB / "bounding_boxes.txt", 5)}
    paths = {path: image_id for _, (image_id, path) in datasets.read_rows(CUB / "images.txt", 2)}
    records = cub["train"] + cub["test"]
    assert len(rows) == len(records) == 11788
    for record in records:
        x, y, w, h = map(float, rows[paths[str(record.path.relative_to(CUB / "images"))]])
        assert record.box == (x, y, x + w, y + h) and w > 0 and h > 0


def test_cub_classes_txt_names_each_image_folder_and_the_classification_split_is_not_used(cub):
    names = dict(fields for _, fields in datasets.read_rows(CUB / "classes.txt", 2))
    assert len(names) == 200
    records = cub["train"] + cub["test"]
    assert all(record.path.parent.name == names[record.class_id] for record in records)
    # train_test_split.txt is the classification split (1 = train): not the zero-shot one.
    paths = dict(fields for _, fields in datasets.read_rows(CUB / "images.txt", 2))
    flags = dict(fields for _, fields in datasets.read_rows(CUB / "train_test_split.txt", 2))
    classification_train = {CUB / "images" / paths[i] for i, flag in flags.items() if flag == "1"}
    assert len(classification_train) == 5994 and len(flags) == 11788
    assert {r.path for r in cub["train"]} != classification_train


def test_cars_zero_shot_split_and_boxes():
    cars = datasets.load("cars", CARS, bbox=True)
    assert {split: len(records) for split, records in cars.items()} == datasets.EXPECTED_COUNTS["cars"]
    assert {int(r.class_id) for r in cars["train"]} == set(range(1, 99))
    assert {int(r.class_id) for r in cars["test"]} == set(range(99, 197))
    records = cars["train"] + cars["test"]
    assert sorted(r.path.name for r in records) == [f"{i:06d}.jpg" for i in range(1, 16186)]
    assert_inside(records, CARS / "car_ims")
    assert all(x1 > x0 >= 0 and y1 > y0 >= 0 for x0, y0, x1, y1 in (r.box for r in records))
    assert min(r.box[0] for r in records) == 0  # 1-based pixel numbers became 0-based edges


def test_make_lmdb_on_the_real_cub_files_with_a_symlinked_images_folder(tmp_path, cub):
    """The real annotation files (linked, not copied) and one stand-in photo for the first image
    of each class, in a folder on "another disk" that images/ links to."""
    root, disk = tmp_path / "CUB_200_2011", tmp_path / "other_disk"
    root.mkdir()
    for name in ("images.txt", "image_class_labels.txt", "bounding_boxes.txt", "classes.txt"):
        (root / name).symlink_to(CUB / name)
    (root / "images").symlink_to(disk)
    photo = image_bytes("plain", photo_rgb(np.random.default_rng(0), 40, 30))
    firsts = {}
    for split, records in cub.items():
        for record in records:
            firsts.setdefault(record.class_id, (split, record.path.relative_to(CUB / "images")))
    for _, relative in firsts.values():
        (disk / relative).parent.mkdir(parents=True, exist_ok=True)
        (disk / relative).write_bytes(photo)
    proc = run_entry(["data_prep/make_lmdb.py", "--dataset", "cub", "--root", root,
                      "--out", tmp_path / "out", "--size", "32", "--workers", "2"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    for split in ("train", "test"):
        index = read_index(tmp_path / "out" / f"{split}_lmdb")
        want = [root / "images" / rel for s, rel in firsts.values() if s == split]
        assert sorted(row["path"] for row in index) == sorted(map(str, want))
        assert sorted(row["label"] for row in index) == list(range(100))
    assert "train: 100 written, 5764 skipped" in proc.stdout
    assert "test: 100 written, 5824 skipped" in proc.stdout
