#!/usr/bin/env python3
"""ABE-8^512 training speed in real Caffe on this machine, and the two ways to share G.

For each G-sharing implementation (batch: the M masked maps stacked on the batch axis, G run
once; towers: M copies of G sharing parameters by name) it builds the generated train net
(Input blobs instead of the data layer, random weights) in a child process and times
forward+backward of a 64-image batch, reporting time per batch, images/s, achieved GFLOP/s
and peak memory. One batch-64 ABE-8 train net holds about 3.2 G floats of blobs (data and
diff ~ 18-24 GB), more than this 24 GB machine has, so the batch runs as micro-batches
(default 4 x 16) accumulated as Caffe's iter_size does: the same arithmetic and gradient,
since every loss term is per pair or per image. The baseline, measured in the same run:
single-precision GEMM GFLOP/s of numpy's matmul. FLOPs of an iteration: 3 x forward
(backward = weight + input gradients), 2 per MAC, MACs of convolutions and inner products
from abe.net.model_stats.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tqdm import tqdm

os.environ.setdefault("GLOG_minloglevel", "2")

from abe.net import netgen  # noqa: E402
from abe.net.model_stats import model_stats  # noqa: E402


def gemm_gflops(n=2048, repeats=5):
    """Best-of-``repeats`` float32 n x n matmul rate."""
    a, b = (np.random.default_rng(i).standard_normal((n, n), dtype=np.float32) for i in (0, 1))
    a @ b  # warm-up: thread pool, page faults
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def write(proto, directory, name):
    path = Path(directory) / name
    path.write_text(text_format.MessageToString(proto))
    return path


def measure(sharing, micro_batch, passes, crop):
    """One implementation, in this process: seconds of each timed micro-batch forward+backward
    after a warm-up pass, MACs per image, peak memory."""
    import caffe

    caffe.set_mode_cpu()
    cfg = netgen.NetConfig(M=8, embed_dim=512, batch=micro_batch, crop=crop, data="input",
                           g_sharing=sharing)
    with tempfile.TemporaryDirectory() as tmp:
        net = caffe.Net(str(write(netgen.train_net(cfg), tmp, "train.prototxt")), caffe.TRAIN)
        macs = model_stats(write(netgen.deploy_net(cfg), tmp, "deploy.prototxt")).macs
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.normal(scale=50, size=net.blobs["data"].data.shape)
    net.blobs["sim"].data[...] = np.arange(micro_batch // 2) < micro_batch // 4

    def step():
        net.forward()
        net.backward()

    times = [timed(step) for _ in tqdm(range(1 + passes), desc=f"G {sharing}", file=sys.stderr)]
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return {"seconds": times[1:], "macs_per_image": macs, "peak_gib": peak_gib}


def run_child(sharing, args):
    child = subprocess.run([sys.executable, __file__, "--only", sharing, "--micro-batch",
                            str(args.micro_batch), "--passes", str(args.passes), "--crop",
                            str(args.crop)], stdout=subprocess.PIPE, text=True)
    if child.returncode:
        raise SystemExit(f"bench_network: G {sharing} failed (exit {child.returncode})")
    return json.loads(child.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="images per iteration (64)")
    parser.add_argument("--micro-batch", type=int, default=16,
                        help="images per forward pass; must divide --batch (16)")
    parser.add_argument("--crop", type=int, default=224, help="input size (224)")
    parser.add_argument("--passes", type=int, default=1,
                        help="timed micro-batch passes per child process, after a warm-up (1)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="child processes per implementation, in ABBA order so that load "
                             "drift on a shared machine hits both alike (2)")
    parser.add_argument("--only", choices=netgen.G_SHARING, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.micro_batch < 2 or args.micro_batch % 2 or args.batch % args.micro_batch:
        parser.error("--micro-batch must be even and divide --batch")
    if args.only:  # child process: one implementation, JSON on stdout
        print(json.dumps(measure(args.only, args.micro_batch, args.passes, args.crop)))
        return 0

    gemm = [gemm_gflops()]
    order = [s for r in range(args.rounds) for s in netgen.G_SHARING[::(-1) ** r]]
    runs = {sharing: [] for sharing in netgen.G_SHARING}
    for sharing in order:
        runs[sharing].append(run_child(sharing, args))
    gemm.append(gemm_gflops())
    print(f"baseline: numpy float32 GEMM 2048^3: {max(gemm):.1f} GFLOP/s, best of before and "
          f"after ({os.cpu_count()} cores)")
    micro_passes = args.batch // args.micro_batch
    print(f"ABE-8^512 train net, crop {args.crop}, forward+backward of a batch of {args.batch} "
          f"= {micro_passes} x {args.micro_batch} images (best micro-batch time x "
          f"{micro_passes}; {args.rounds * args.passes} timed passes per implementation):")
    seconds = {}
    for sharing, results in runs.items():
        seconds[sharing] = micro_passes * min(t for r in results for t in r["seconds"])
        gflops = 3 * 2 * results[0]["macs_per_image"] * args.batch / seconds[sharing] / 1e9
        peak = max(r["peak_gib"] for r in results)
        print(f"  G {sharing:<6}: {seconds[sharing]:7.2f} s/batch  "
              f"{args.batch / seconds[sharing]:6.2f} images/s  {gflops:6.1f} GFLOP/s = "
              f"{gflops / max(gemm):.2f} x GEMM  peak {peak:.1f} GiB")
    print(f"towers / batch time: {seconds['towers'] / seconds['batch']:.2f} "
          f"(default g-sharing: {netgen.NetConfig.g_sharing})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
