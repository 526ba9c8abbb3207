#!/usr/bin/env python
"""Data pipeline benchmarks, on real photographs (scikit-image's bundled samples):

1. datum payload trade-off: bytes per 256 x 256 image, fidelity (PSNR) and decode time for raw
   pixels and JPEG at several qualities, with and without chroma subsampling; padding colour;
2. LMDB build throughput (data_prep's pipeline) with 1 and 2 workers (goal: >= 1.7x);
3. PairDataLayer throughput at crop 224 in a real Caffe net, JPEG and raw LMDBs, prefetching
   with 2 workers vs decoding in Caffe's thread (goal: >= 600 images/s on 2 cores).

    .venv/bin/python bench/bench_data.py [--images 384] [--batches 40]
"""
import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402

from abe.data import datasets  # noqa: E402
from abe.data.imaging import PAD_BGR, encode_jpeg, resize_and_pad  # noqa: E402
from abe.data.prepare import DEFAULT_QUALITY, build_split, prepare_record  # noqa: E402

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel",
          "hubble_deep_field", "retina"]


def photos_bgr():
    return [np.ascontiguousarray(getattr(skimage.data, name)()[..., :3][..., ::-1]) for name in PHOTOS]


def psnr(a, b):
    return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def payload_tradeoff(photos):
    squares = [resize_and_pad(photo, 256) for photo in photos]
    print(f"{'payload':<16}{'KiB/image':>10}{'PSNR dB':>9}{'decode ms':>11}")
    print(f"{'raw':<16}{256 * 256 * 3 / 1024:>10.1f}{'exact':>9}{0:>11.2f}")
    for quality in (75, 90, 95):
        for name, sampling in (("4:2:0", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420),
                               ("4:4:4", cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)):
            params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
            encoded = [cv2.imencode(".jpg", square, params)[1] for square in squares]
            start = time.perf_counter()
            for _ in range(10):
                decoded = [cv2.imdecode(e, cv2.IMREAD_COLOR) for e in encoded]
            decode_ms = (time.perf_counter() - start) / 10 / len(encoded) * 1e3
            kib = np.mean([len(e) for e in encoded]) / 1024
            fidelity = np.mean([psnr(a, b) for a, b in zip(squares, decoded)])
            print(f"{f'JPEG q{quality} {name}':<16}{kib:>10.1f}{fidelity:>9.1f}{decode_ms:>11.2f}")


def padding_tradeoff(photos):
    """JPEG bytes of portrait-cropped photos (half the square is padding) per padding colour,
    and the mean |input| the padding feeds the network after mean subtraction."""
    portraits = [photo[:, : photo.shape[1] // 2] for photo in photos]
    mean = np.array(PAD_BGR, np.float32)
    for name, colour in (("mean BGR", PAD_BGR), ("black", (0, 0, 0)), ("white", (255, 255, 255))):
        squares = [resize_and_pad(p, 256, pad=colour) for p in portraits]
        kib = np.mean([len(encode_jpeg(square, 95)) for square in squares]) / 1024
        print(f"padding {name:<9}: JPEG q95 4:4:4 {kib:5.1f} KiB/image, "
              f"|input - mean| in the padding {np.abs(np.array(colour) - mean).mean():5.1f}")


def write_photo_folder(root, photos, count, classes=32, seed=0):
    """``count`` JPEG files of 500 x 375 random crops of the photos, in class folders."""
    rng = np.random.default_rng(seed)
    for n in range(count):
        photo = photos[n % len(photos)]
        big = cv2.resize(photo, (800, 600), interpolation=cv2.INTER_LINEAR)
        top, left = rng.integers(0, 600 - 375), rng.integers(0, 800 - 500)
        folder = root / f"class{n % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{n:05d}.jpg"), big[top:top + 375, left:left + 500],
                    [cv2.IMWRITE_JPEG_QUALITY, 90])


def cpu_seconds(who=resource.RUSAGE_SELF):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def all_cpu_seconds():
    """CPU time of this process and of its children that have been waited for."""
    return cpu_seconds() + cpu_seconds(resource.RUSAGE_CHILDREN)


def build_throughput(root, out):
    splits = datasets.load("folder", root)
    records = splits["train"] + splits["test"]
    rates = {}
    for workers in (1, 2):
        start, writer_cpu = time.perf_counter(), cpu_seconds()
        build_split(records, out / f"w{workers}_lmdb", name=f"{workers} worker(s)",
                    workers=workers, progress=False)
        rates[workers] = len(records) / (time.perf_counter() - start)
        writer_ms = (cpu_seconds() - writer_cpu) / len(records) * 1e3
        print(f"LMDB build, {workers} worker(s): {rates[workers]:.0f} images/s "
              f"({len(records)} images; writer {writer_ms:.2f} CPU-ms per image)")
    print(f"LMDB build speed-up with 2 workers: {rates[2] / rates[1]:.2f}x (goal >= 1.7x)")
    # The same work without contention effects: a worker's CPU per image, measured in-process.
    worker_cpu = cpu_seconds()
    for record in records:
        prepare_record(record, 256, "jpeg", DEFAULT_QUALITY)
    worker_ms = (cpu_seconds() - worker_cpu) / len(records) * 1e3
    print(f"LMDB build, decode+resize+encode: {worker_ms:.2f} CPU-ms per image; on 2 idle cores "
          f"2 workers + the writer would reach {2 * worker_ms / (worker_ms + writer_ms):.2f}x")
    return records


def layer_throughput(source, batches, workers):
    import caffe
    from caffe import layers as L

    from abe.data.pair_layer import PAIR_DEFAULTS, close_data_layers

    caffe.set_mode_cpu()
    spec = caffe.NetSpec()
    spec.data, spec.label, spec.sim = L.Python(
        module="abe.data.pair_layer", layer="PairDataLayer", ntop=3,
        param_str=json.dumps({"source": str(source), "crop": 224, "workers": workers}))
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(str(spec.to_proto()))
    cpu = all_cpu_seconds()
    net = caffe.Net(f.name, caffe.TRAIN)
    os.unlink(f.name)
    for _ in range(3):  # warm-up: workers started, prefetch ring filled once
        net.forward()
    start = time.perf_counter()
    for _ in range(batches):
        net.forward()
    rate = batches * net.blobs["data"].data.shape[0] / (time.perf_counter() - start)
    close_data_layers(net)
    prepared = (3 + batches + (PAIR_DEFAULTS["prefetch"] if workers else 0)) * 64
    return rate, (all_cpu_seconds() - cpu) / prepared * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384, help="photos to build LMDBs from")
    parser.add_argument("--batches", type=int, default=40, help="timed batches of 64 per layer run")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    photos = photos_bgr()
    payload_tradeoff(photos)
    padding_tradeoff(photos)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_photo_folder(tmp / "photos", photos, args.images)
        records = build_throughput(tmp / "photos", tmp)
        build_split(records, tmp / "raw_lmdb", name="raw", encoding="raw", progress=False)
        for payload, source in (("JPEG", tmp / "w2_lmdb"), ("raw", tmp / "raw_lmdb")):
            print(f"{payload} LMDB on disk: {(source / 'data.mdb').stat().st_size / len(records) / 1024:.1f} KiB/image")
            inline, _ = layer_throughput(source, args.batches, workers=0)
            prefetched, cpu_ms = layer_throughput(source, args.batches, workers=2)
            print(f"PairDataLayer crop 224, {payload}: {prefetched:.0f} images/s with 2 prefetch "
                  f"workers, {inline:.0f} decoding in Caffe's thread "
                  f"({prefetched / inline:.2f}x; goal >= 600 images/s); "
                  f"{cpu_ms:.2f} CPU-ms per image, all processes")


if __name__ == "__main__":
    main()
