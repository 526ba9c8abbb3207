#!/usr/bin/env python3
"""The memory one training process of Caffe holds on its device, before anything runs.

    plan_memory.py prototxt/abe8_512/train.prototxt --device-mem 24G
    plan_memory.py prototxt/abe8_512/train.prototxt --batch 64 --gpus 4
    plan_memory.py prototxt/*/train.prototxt --table           # the README's table

For a train.prototxt (the deploy.prototxt beside it is the test net, evaluated at --eval-batch
with the train net's weights): per forward-pass batch, the bytes of blob data and gradients,
layer buffers (im2col columns, pooling indices, LRN scales), parameters with their gradients
and momentum, and the test net. --batch is the batch of one iteration over --gpus GPUs; every
pass batch that splits a GPU's share into whole pairs is listed, and with --device-mem the
largest that fits is chosen (tools/train.py does the same before training). On a GPU add the
CUDA context (--reserve).
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from abe.cli import Parser, number, run  # noqa: E402
from abe.eval.evaluation import DEFAULT_BATCH as EVAL_BATCH  # noqa: E402
from abe.net import memory_plan  # noqa: E402
from abe.train import batching  # noqa: E402

TABLE_GPUS = (1, 2, 4, 8)
POSITIVE = number(int, above=0)


def parse_args(argv):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train", type=Path, nargs="+", help="train.prototxt (one or more)")
    p.add_argument("--batch", type=POSITIVE, default=64,
                   help="images per iteration over all GPUs (default %(default)s, the paper's)")
    p.add_argument("--gpus", type=POSITIVE, default=1, help="number of GPUs (default %(default)s)")
    p.add_argument("--eval-batch", type=POSITIVE, default=EVAL_BATCH,
                   help="test net batch, tools/train.py's --eval-batch (default %(default)s)")
    p.add_argument("--device-mem", help="memory of one device, e.g. 24G: choose the largest "
                                        "pass batch that fits")
    p.add_argument("--reserve", default=f"{memory_plan.GPU_CONTEXT_BYTES // 2 ** 20}M",
                   help="device memory not available to Caffe: CUDA context and cuBLAS "
                        "(default %(default)s)")
    p.add_argument("--table", action="store_true",
                   help="a Markdown table: each net at --batch on 1, 2, 4 and 8 GPUs without "
                        "micro-batching, and the smallest common card that holds it")
    return p.parse_args(argv)


def plan_one(args, path, reserve):
    memory = memory_plan.load(path, eval_batch=args.eval_batch)
    layout = batching.BatchLayout(args.batch, args.gpus)
    print(f"{path}: batch {args.batch} on {args.gpus} GPU(s) = {layout.rank_batch} images per "
          f"GPU; the plan per process (+ {memory_plan.gib(reserve)} CUDA context on a GPU):")
    for pass_batch in batching.pass_batches(layout.rank_batch):
        plan = memory.plan(pass_batch)
        print(f"  iter_size {layout.rank_batch // pass_batch:>2}: {plan.describe()}")
    if args.device_mem:
        device = memory_plan.parse_size(args.device_mem)
        chosen = batching.fit_to_memory(layout, memory, device, reserve)
        print(f"chosen for {memory_plan.gib(device)}: {chosen.pass_batch} images per forward "
              f"pass, iter_size {chosen.iter_size} "
              f"({memory_plan.gib(memory.plan(chosen.pass_batch).total + reserve)} with the "
              f"reserve)")


def table(args, reserve):
    print(f"| configuration | " + " | ".join(f"{n} GPU{'s' if n > 1 else ''}: "
                                             f"{args.batch // n} per GPU" for n in TABLE_GPUS)
          + " |")
    print("|---" * (len(TABLE_GPUS) + 1) + "|")
    for path in args.train:
        memory = memory_plan.load(path, eval_batch=args.eval_batch)
        cells = []
        for gpus in TABLE_GPUS:
            total = memory.plan(batching.BatchLayout(args.batch, gpus).pass_batch).total
            card = memory_plan.smallest_card(total, reserve)
            cells.append(f"{memory_plan.gib(total)} -> {card} GB" if card else
                         f"{memory_plan.gib(total)} -> none")
        print(f"| {path.parent.name} | " + " | ".join(cells) + " |")


def main(argv=None):
    args = parse_args(argv)
    reserve = memory_plan.parse_size(args.reserve) if args.reserve not in ("0", "") else 0
    if args.table:
        table(args, reserve)
        return 0
    for path in args.train:
        plan_one(args, path, reserve)
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "plan_memory"))
