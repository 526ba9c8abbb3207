#!/usr/bin/env python3
"""Recall@K on SOP-sized features (60,502 x 512): abe.metrics next to faiss-cpu exact search.

Each contender runs in its own child process (same random features, same thread count), so
the peak resident memory reported is its own. faiss searches k = 1001 neighbours (enough for
SOP's Recall@1000 after dropping the query itself) with IndexFlatL2; abe.metrics needs no k.
Goal: abe.metrics no slower than faiss, memory well under 4 GB.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

SOP_KS = (1, 10, 100, 1000)


def sop_like_features(n, dim, seed=0):
    """Unit vectors with SOP's class structure (classes of 2-12 images, about 5.3 on average)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, size=n)
    labels = np.repeat(np.arange(n), sizes)[:n]
    centers = rng.standard_normal((labels.max() + 1, dim)).astype(np.float32)
    features = centers[labels] + 2.5 * rng.standard_normal((n, dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features, labels


def run_ours(features, labels):
    from abe.eval.metrics import recall_at_k

    return recall_at_k(features, labels, SOP_KS)


def run_faiss(features, labels):
    import faiss

    index = faiss.IndexFlatL2(features.shape[1])
    index.add(features)
    _, neighbours = index.search(features, max(SOP_KS) + 1)
    not_self = neighbours != np.arange(len(features))[:, None]
    hits = (labels[neighbours] == labels[:, None]) & not_self
    # position among the neighbours other than the query itself
    positions = np.cumsum(not_self, axis=1)
    first = np.where(hits.any(axis=1), positions[np.arange(len(hits)), hits.argmax(axis=1)],
                     len(features) + 1)
    return {k: float(np.mean(first <= k)) for k in SOP_KS}


def child(which, n, dim):
    features, labels = sop_like_features(n, dim)
    start = time.perf_counter()
    recall = (run_ours if which == "abe" else run_faiss)(features, labels)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "recall": recall}))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60502, help="number of features (SOP test: 60502)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension")
    parser.add_argument("--child", choices=["abe", "faiss"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.dim)
        return
    features, _ = sop_like_features(args.n, args.dim)
    base_mb = features.nbytes / 2**20
    results = {}
    for which in ("faiss", "abe"):
        out = subprocess.run([sys.executable, __file__, "--child", which, "--n", str(args.n),
                              "--dim", str(args.dim)], check=True, capture_output=True, text=True)
        results[which] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"SOP-sized features: {args.n} x {args.dim} float32 ({base_mb:.0f} MB), Ks {SOP_KS}")
    print(f"{'method':<28}{'seconds':>10}{'peak RSS MB':>14}  Recall@K")
    for which, name in (("faiss", "faiss IndexFlatL2 k=1001"), ("abe", "abe.metrics (chunked)")):
        r = results[which]
        recall = " ".join(f"{float(v):.4f}" for v in r["recall"].values())
        print(f"{name:<28}{r['seconds']:>10.2f}{r['peak_mb']:>14.0f}  {recall}")
    ratio = results["abe"]["seconds"] / results["faiss"]["seconds"]
    print(f"time ratio abe/faiss: {ratio:.2f} (goal <= 1.00); "
          f"abe peak RSS {results['abe']['peak_mb'] / 1024:.2f} GB (goal well under 4 GB)")
    same = all(abs(results["abe"]["recall"][k] - results["faiss"]["recall"][k]) < 1e-3
               for k in results["abe"]["recall"])
    print(f"Recall@K agree with faiss: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
