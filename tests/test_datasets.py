"""Dataset preparation end to end: miniature official layouts -> data_prep/make_lmdb.py -> LMDBs
checked record by record (counts, labels, splits, skipped files, geometry), plus the image
conversions and the interrupted-run guarantee."""
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from miniature import MAKERS, image_bytes, photo_rgb

from abe.data import datasets
from abe.data.pair_layer import iter_test_batches, read_labels
from abe.data.imaging import PAD_BGR, BadImage, decode_bgr, resize_and_pad
from abe.data.lmdb_store import LmdbWriter, iter_records, make_datum, parse_datum, read_index

sys.path.insert(0, str(REPO / "data_prep"))
import make_lmdb  # noqa: E402  (the CLI module under test)

SPLIT_NAMES = {"cub": ["train", "test"], "cars": ["train", "test"], "sop": ["train", "test"],
               "inshop": ["train", "query", "gallery"]}


def content_size(image, tolerance=45):
    """(width, height) of the part of a padded square that is not padding colour."""
    differs = np.abs(image.astype(int) - np.array(PAD_BGR)).max(axis=2) > tolerance
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    return cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1


def expected_size(width, height, size=256):
    scale = size / max(width, height)
    return round(width * scale), round(height * scale)


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "data_prep" / "make_lmdb.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module", params=sorted(MAKERS))
def prepared(request, tmp_path_factory):
    """A miniature dataset and the output of make_lmdb on it (2 workers), with its stdout."""
    name = request.param
    base = tmp_path_factory.mktemp(name)
    mini = MAKERS[name](base / "download")
    argv = ["--dataset", name, "--root", str(base / "download"), "--out", str(base / "out"),
            "--workers", "2"]
    return name, mini, base / "out", argv


def test_lmdbs_hold_the_zero_shot_splits_record_by_record(prepared, capsys):
    name, mini, out, argv = prepared
    assert make_lmdb.main(argv) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}_lmdb" for s in SPLIT_NAMES[name]] + ["report.txt"])  # nothing .partial left
    classes_seen = []
    for split in SPLIT_NAMES[name]:
        index = read_index(out / f"{split}_lmdb")
        expected = mini.expected[split]
        # Every readable image, in annotation order, traced back to its file and class.
        assert [row["path"] for row in index] == [str(mini.image_root / rel) for rel, _, _ in expected]
        assert [row["class_id"] for row in index] == [cls for _, cls, _ in expected]
        # Labels: contiguous, in sorted order of the original ids, and what the datums hold.
        labels = read_labels(out / f"{split}_lmdb")
        assert list(labels) == [row["label"] for row in index]
        assert labels.dtype == np.int64
        by_class = {row["class_id"]: row["label"] for row in index}
        assert len(set(by_class.values())) == len(by_class)
        if split != "query" and split != "gallery":
            assert sorted(by_class.values()) == list(range(len(by_class)))
        classes_seen.append(set(by_class))
        # Geometry: 256 x 256 BGR, aspect ratio preserved within one pixel, pad colour around.
        for (key, value), (_, _, (width, height)) in zip(iter_records(out / f"{split}_lmdb"), expected):
            image, _ = parse_datum(value)
            assert image.shape == (256, 256, 3)
            got_w, got_h = content_size(image)
            want_w, want_h = expected_size(width, height)
            assert abs(got_w - want_w) <= 1 and abs(got_h - want_h) <= 1, (key, got_w, got_h)
            assert np.abs(image[0, 0].astype(int) - PAD_BGR).max() <= 3 or min(want_w, want_h) == 256
    # Zero-shot: training classes never appear at test time.
    assert not classes_seen[0] & set().union(*classes_seen[1:])
    # Bad files: each one skipped, named in the report, counted on screen.
    report = (out / "report.txt").read_text()
    skipped = [line.split("\t")[2] for line in report.splitlines() if line.startswith("skipped\t")]
    assert sorted(skipped) == sorted(str(mini.image_root / rel) for rel in mini.skipped)
    assert f"{len(mini.skipped)} unreadable images skipped" in printed
    # Counts differ from the spec's full-dataset table: a warning with both numbers.
    for split in SPLIT_NAMES[name]:
        count, spec = len(mini.expected[split]), datasets.EXPECTED_COUNTS[name][split]
        assert f"warning: {name} {split} has {count} images, the spec expects {spec}" in printed


def test_split_rules_of_the_spec(prepared):
    name, mini, out, _ = prepared
    ids = {split: {cls for _, cls, _ in mini.expected[split]} for split in SPLIT_NAMES[name]}
    if name == "cub":
        assert all(int(c) <= 100 for c in ids["train"]) and all(int(c) > 100 for c in ids["test"])
    elif name == "cars":
        assert all(int(c) <= 98 for c in ids["train"]) and all(int(c) >= 99 for c in ids["test"])
    loaded = datasets.load(name, mini.root)
    assert {s: {r.class_id for r in loaded[s]} for s in loaded} == ids
    if name == "inshop":  # query and gallery share one label space: same item <=> same label
        pairs = {(r.class_id, r.label) for s in ("query", "gallery") for r in loaded[s]}
        assert len({c for c, _ in pairs}) == len(pairs) == len({lab for _, lab in pairs})


@pytest.mark.parametrize("name", ["cub", "cars"])
def test_bbox_crops_to_the_annotated_box(name, tmp_path):
    mini = MAKERS[name](tmp_path / "download")
    assert make_lmdb.main(["--dataset", name, "--root", str(tmp_path / "download"),
                           "--out", str(tmp_path / "out"), "--workers", "1", "--bbox"]) == 0
    for split in ("train", "test"):
        for (_, value), (rel, _, _) in zip(iter_records(tmp_path / "out" / f"{split}_lmdb"),
                                          mini.expected[split]):
            x0, y0, x1, y1 = mini.boxes[rel]
            want_w, want_h = expected_size(x1 - x0, y1 - y0)
            got_w, got_h = content_size(parse_datum(value)[0])
            assert abs(got_w - want_w) <= 1 and abs(got_h - want_h) <= 1


def test_missing_annotation_file_or_wrong_root_is_one_line_exit_2(tmp_path):
    mini = MAKERS["cars"](tmp_path / "cars")
    (mini.root / "cars_annos.mat").unlink()
    for root, named in ((mini.root, "cars_annos.mat"), (tmp_path / "nowhere", "nowhere")):
        result = run_cli("--dataset", "cars", "--root", root, "--out", tmp_path / "out")
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and named in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_broken_annotation_line_is_named(tmp_path, capsys):
    mini = MAKERS["cub"](tmp_path / "cub")
    labels = mini.root / "image_class_labels.txt"
    broken_line = len(labels.read_text().splitlines()) + 1
    with open(labels, "a") as f:
        f.write("99 7 extra\n")
    assert make_lmdb.main(["--dataset", "cub", "--root", str(mini.root), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"image_class_labels.txt line {broken_line}: expected 2 fields" in error


def test_the_lmdb_map_doubles_when_full_and_caffe_reads_what_was_written(tmp_path, caffe):
    """From a 1 MiB map, 60 raw 256 x 256 datums (11.3 MiB) need four doublings; BVLC Caffe's
    own C++ Data layer then reads the LMDB with its default map size."""
    images = [np.full((256, 256, 3), (i, 2 * i, 3 * i), np.uint8) for i in range(60)]
    values = [make_datum(image, i % 7) for i, image in enumerate(images)]
    writer = LmdbWriter(tmp_path / "grown_lmdb", map_size=1 << 20)
    for i, value in enumerate(values):
        writer.append(value, f"img{i}.jpg", i % 7, i % 7)
    writer.commit()
    assert writer.map_size >= 16 << 20
    assert [value for _, value in iter_records(tmp_path / "grown_lmdb")] == values
    net_file = tmp_path / "data.prototxt"
    net_file.write_text(f'''layer {{ name: "data" type: "Data" top: "data" top: "label"
  data_param {{ source: "{tmp_path / 'grown_lmdb'}" batch_size: 60 backend: LMDB }} }}''')
    net = caffe.Net(str(net_file), caffe.TEST)
    net.forward()
    assert (net.blobs["label"].data == np.arange(60) % 7).all()
    assert (net.blobs["data"].data.transpose(0, 2, 3, 1) == np.array(images)).all()


def test_digits_are_prepared_through_the_same_pipeline(tmp_path, capsys):
    assert make_lmdb.main(["--dataset", "digits", "--root", str(tmp_path / "digits"),
                           "--out", str(tmp_path / "out"), "--size", "32", "--workers", "2"]) == 0
    train, test = (read_index(tmp_path / "out" / f"{s}_lmdb") for s in ("train", "test"))
    assert {row["class_id"] for row in train} == set("01234")
    assert {row["class_id"] for row in test} == set("56789")
    assert len(train) + len(test) == 1797 and len(train) == 901
    assert [row["label"] for row in test] == [int(row["class_id"]) - 5 for row in test]
    image, _ = parse_datum(next(iter_records(tmp_path / "out" / "test_lmdb"))[1])
    assert image.shape == (32, 32, 3) and (image[..., 0] == image[..., 2]).all()  # gray scans


def test_raw_and_jpeg_datums_read_alike(tmp_path):
    mini = MAKERS["sop"](tmp_path / "sop")
    for encoding in ("raw", "jpeg"):
        assert run_cli("--dataset", "sop", "--root", mini.root, "--out", tmp_path / encoding,
                       "--encoding", encoding, "--size", "64").returncode == 0
    raw, jpeg = (list(iter_test_batches(tmp_path / e / "test_lmdb", 4, crop=56))
                 for e in ("raw", "jpeg"))
    assert [len(b[1]) for b in raw] == [len(b[1]) for b in jpeg] == [4, 2]
    for (raw_images, raw_labels), (jpeg_images, jpeg_labels) in zip(raw, jpeg):
        assert (raw_labels == jpeg_labels).all()
        assert np.abs(raw_images - jpeg_images).mean() < 2.0  # JPEG at quality 95
    raw_bytes = sum(len(v) for _, v in iter_records(tmp_path / "raw" / "test_lmdb"))
    jpeg_bytes = sum(len(v) for _, v in iter_records(tmp_path / "jpeg" / "test_lmdb"))
    assert jpeg_bytes < raw_bytes


@pytest.mark.parametrize("kind", ["gray", "cmyk", "gray16", "color16", "alpha", "plain"])
def test_every_image_mode_becomes_3_channel_bgr(kind):
    rgb = photo_rgb(np.random.default_rng(5), 24, 16)
    image = decode_bgr(image_bytes(kind, rgb))
    assert image.shape == (16, 24, 3) and image.dtype == np.uint8
    want = rgb[..., ::-1].astype(int)
    if kind == "gray":
        want = np.repeat(np.round(rgb @ [0.299, 0.587, 0.114])[..., None], 3, axis=2)
    elif kind == "gray16":
        want = np.repeat(rgb[..., :1].astype(int), 3, axis=2)
    assert np.abs(image.astype(int) - want).mean() < 6


def test_transparent_pixels_take_the_padding_colour():
    from PIL import Image
    import io

    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0], rgba[:, :3, 3] = 255, 255  # left half opaque red, right half transparent
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, "PNG")
    image = decode_bgr(buffer.getvalue())
    assert (image[:, :3] == (0, 0, 255)).all() and (image[:, 3:] == PAD_BGR).all()


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "corrupt"])
def test_unreadable_files_raise_bad_image(kind):
    with pytest.raises(BadImage):
        decode_bgr(image_bytes(kind, photo_rgb(np.random.default_rng(0), 300, 200)))


@pytest.mark.parametrize("width,height", [(500, 375), (375, 500), (256, 256), (1, 300), (3, 2)])
def test_resize_keeps_aspect_within_a_pixel_and_pads_to_the_square(width, height):
    image = np.full((height, width, 3), 10, np.uint8)
    square = resize_and_pad(image, 256)
    assert square.shape == (256, 256, 3)
    got_w, got_h = content_size(square)
    assert (got_w, got_h) == expected_size(width, height)


GROW_UNDER_A_TIGHT_LIMIT = """
import resource, sys
import numpy as np
from abe import cli
from abe.data.lmdb_store import LmdbWriter, make_datum
value = make_datum(np.zeros((256, 256, 3), np.uint8), 0)
in_use = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (in_use + (256 << 20),) * 2)
def build():
    writer = LmdbWriter(sys.argv[1])
    try:
        for i in range(2000):  # 375 MiB of raw datums
            writer.append(value, f"{i}.jpg", 0, 0)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
sys.exit(cli.run(build, "grow"))
"""


def test_an_lmdb_that_outgrows_the_address_space_limit_is_one_line_exit_1(tmp_path):
    result = subprocess.run([sys.executable, "-c", GROW_UNDER_A_TIGHT_LIMIT, str(tmp_path / "big_lmdb")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "ulimit -v" in result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []
