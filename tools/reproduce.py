#!/usr/bin/env python3
"""Run one of the paper's experiments and report our numbers beside the paper's.

    reproduce.py table1 --dataset cars                        # the paper's Table 1, on a GPU
    reproduce.py fig7c --dataset cars --gpus 0,1 --seeds 0,1,2
    reproduce.py table2 --dataset digits --M 2 --embed-dim 16 --crop 32 --batch 16 \\
        --max-iter 20 --size 40 --from-scratch                # a miniature, on a CPU
    reproduce.py table1 --dataset cars --dry-run              # the train.sh commands only

Experiments (abe/experiments/experiments.json): table1 (ABE-M and M-heads, M = 1, 2, 4, 8;
ABE-1^64, ABE-2^128, ABE-4^256), table2 (ABE-8^512 with/without the divergence loss), table3
(8-heads^512 with/without it), fig7a (attention depth 1-7), fig7b (branching point), fig7c
(lambda_div), table4 (uncropped), table5 (--bbox, CUB or CARS).

Each configuration and seed trains as its own train.sh run in OUT/<configuration>-seed<N>/
(OUT defaults to runs/reproduce/<experiment>-<dataset>); every option not listed here is passed to
train.sh (and so to tools/train.py): --gpus, --max-iter, --batch, --crop, --base-lr, ... An
option the experiment fixes (say --M for table2) replaces the paper's value, and the report says
so; one it varies (--M for table1) is refused. A rerun skips finished runs and resumes
interrupted ones; a failed run is reported and the others go on (exit 1 at the end). Stop it
with Ctrl-C or `kill PID`; the same command continues.

Writes OUT/report.md, report.csv (and <experiment>.png for fig7*) and prints the report.
"""
import os
import sys

os.environ.setdefault("GLOG_minloglevel", "2")  # model stats build Caffe nets in this process

from tqdm import tqdm  # noqa: E402

from abe import cli  # noqa: E402
from abe.experiments import definitions, report, runs  # noqa: E402


def parse_args(argv):
    parser = cli.Parser(description=__doc__, allow_abbrev=False,
                        formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help=", ".join(definitions.load()))
    parser.add_argument("--dataset", required=True, choices=("cub", "cars", "sop", "inshop", "digits"),
                        help="passed to train.sh")
    parser.add_argument("--out", help="the experiment folder; a relative one is under runs/ "
                                      "($ABE_RUNS when set; default "
                                      "reproduce/<experiment>-<dataset>)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds; each configuration runs once per seed "
                             "(default 0)")
    parser.add_argument("--only", help="comma-separated configuration keys (default: all; "
                                       "--dry-run lists them)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each run's state and train.sh command, run nothing")
    args, options = parser.parse_known_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    args.only = args.only.split(",") if args.only else None
    return args, options


def main(argv=None):
    args, options = parse_args(argv)
    plan = runs.make_plan(args.experiment, args.dataset, out=args.out, seeds=args.seeds,
                          only=args.only, options=options)
    if args.dry_run:
        runs.dry_run(plan)
        return 0
    outcomes = runs.run_all(plan, note=lambda line: tqdm.write(f"reproduce: {line}",
                                                                file=sys.stderr))
    text, written = report.write(plan, outcomes)
    print(text)
    print("written: " + ", ".join(str(p) for p in written))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        print(f"reproduce: error: {len(failed)} of {len(outcomes)} runs failed (first: "
              f"{failed[0].configuration.key} seed {failed[0].seed}, {failed[0].error}); the "
              f"others are in the report", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "reproduce"))
