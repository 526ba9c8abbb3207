#!/usr/bin/env python3
"""Train ABE-M (or M-heads) with Caffe's SGDSolver, evaluating Recall@K as it goes.

    train.py --run-dir runs/cub8 --train-lmdb data/cub/train_lmdb \\
             --test-lmdb data/cub/test_lmdb --dataset cub --M 8
    train.py --run-dir runs/cub8 --resume                 # continue from the last snapshot
    train.py --run-dir runs/x --config prototxt/abe8_512 --train-lmdb ... --test-lmdb ...
    train.py ... --gpus 0,1,2,3                            # one process per GPU (NCCL)
    train.py ... --batch 64 --iter-size 4                  # 4 passes of 16, batch 64's gradient
    train.py ... --device-mem 16G                          # micro-batch to fit a 16 GB card

--batch is the batch of one iteration over all GPUs (the paper's 64): with N GPUs each runs
batch/N images, in --iter-size passes of batch/(N x iter-size); the gradient is the same. Before
training the memory plan of one process is printed; given --device-mem (or on a GPU, its
memory) without --iter-size, the largest pass batch that fits is chosen.

The network is generated from the options below (or taken from --config, a gen_prototxt
output folder). Weights start from BVLC's ImageNet GoogLeNet (--init-weights, default
weights/bvlc_googlenet.caffemodel): the benchmark datasets (cub, cars, sop, inshop) refuse to
start without it unless --from-scratch is given; from scratch means He weights and zero biases
for GoogLeNet's layers (BVLC's 0.2 biases start every embedding at nearly one point, where
contrastive gradients vanish), xavier for the new layers.
Writes RUN/history.csv, RUN/snapshots/ (the two newest snapshots + best Recall@1) and
RUN/recall.json. A folder holding a run is never overwritten: --resume continues it,
--start-over first moves it to RUN.previous-N.

Solver defaults (the paper gives only SGD, momentum 0.9, batch 64): base_lr 1e-4 with
lr_mult 10 on the new layers (attention 1x1 convs, embedding FC): the pretrained trunk is
fine-tuned gently while the randomly initialised layers learn fast; weight decay 2e-4
(BVLC GoogLeNet's own); step schedule, lr halved at half the iterations; iterations per
dataset: cub 10000, cars 15000, sop 40000, inshop 30000 (about 50 passes over CUB/CARS's
anchors, fewer over the large sets). All are overridable.
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from abe import cli  # noqa: E402
from abe.errors import UserError  # noqa: E402
from abe.eval import evaluation  # noqa: E402
from abe.net import checks, netgen  # noqa: E402
from abe.train import devices, run_folder, training  # noqa: E402
from abe.net.pretrained import default_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = default_weights()
DATASET_ITERS = {"cub": 10000, "cars": 15000, "sop": 40000, "inshop": 30000, "digits": 300}
BENCHMARKS = ("cub", "cars", "sop", "inshop")  # the paper's: they all start from ImageNet
POSITIVE, COUNT = cli.number(int, above=0), cli.number(int, at_least=0)
RATE, NONNEGATIVE = cli.number(float, above=0), cli.number(float, at_least=0)
RESUME_OPTIONS = ("max_iter", "gpus", "cpu", "device_mem")  # what --resume may change


def parse_args(argv):
    p = cli.Parser(prog="train", description=__doc__,
                   formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True, help="the run's folder")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue the run in --run-dir from its newest snapshot that reads: "
                            "the same iteration, the pair layer drawing the batches the run "
                            "would have drawn")
    start.add_argument("--start-over", action="store_true",
                       help="--run-dir holds a run: move it to RUN.previous-N (nothing is "
                            "deleted) and start a new run in RUN")
    p.add_argument("--config", type=Path, help="folder with train/deploy/solver.prototxt "
                                               "(instead of generating them)")
    data = p.add_argument_group("data")
    data.add_argument("--train-lmdb", type=Path, help="training LMDB (pair data layer source)")
    data.add_argument("--test-lmdb", type=Path, help="test LMDB (all-vs-all Recall@K)")
    data.add_argument("--query-lmdb", type=Path, help="In-shop query LMDB")
    data.add_argument("--gallery-lmdb", type=Path, help="In-shop gallery LMDB")
    data.add_argument("--dataset", choices=sorted(DATASET_ITERS), default="cub",
                      help="picks Recall@K's Ks and the default iterations (default cub)")
    data.add_argument("--ks", type=POSITIVE, nargs="+", help="Ks instead of the dataset's")
    net = p.add_argument_group("network (see tools/gen_prototxt.py)")
    cfg = netgen.NetConfig
    net.add_argument("--arch", choices=netgen.ARCHS, default=cfg.arch)
    net.add_argument("--M", type=POSITIVE, default=cfg.M, help="learners (default %(default)s)")
    net.add_argument("--embed-dim", type=POSITIVE, default=cfg.embed_dim)
    net.add_argument("--att-depth", type=POSITIVE, default=cfg.att_depth)
    net.add_argument("--branch", choices=list(netgen.BRANCHES), default=cfg.branch)
    net.add_argument("--lambda-div", type=NONNEGATIVE,
                     help="divergence loss weight (default 1 for abe, 0 for heads: the paper's "
                          "M-heads baseline; 1 gives Table 3's heads with L_div)")
    net.add_argument("--batch", type=POSITIVE, default=cfg.batch,
                     help="images per iteration over all GPUs, pairs kept whole "
                          "(default %(default)s, the paper's)")
    net.add_argument("--iter-size", type=POSITIVE,
                     help="forward passes per iteration on each GPU: each pass runs "
                          "batch/(GPUs x iter-size) images (default 1, or what --device-mem "
                          "needs)")
    net.add_argument("--crop", type=POSITIVE, default=cfg.crop, help="input size, multiple of 32")
    net.add_argument("--lr-mult-new", type=NONNEGATIVE, default=cfg.lr_mult_new,
                     help="lr_mult of the new layers (default %(default)s)")
    sol = p.add_argument_group("solver")
    sol.add_argument("--base-lr", type=RATE, default=netgen.SolverConfig.base_lr)
    sol.add_argument("--weight-decay", type=NONNEGATIVE, default=netgen.SolverConfig.weight_decay)
    sol.add_argument("--lr-policy", choices=("fixed", "step"), default="step")
    sol.add_argument("--gamma", type=RATE, default=netgen.SolverConfig.gamma)
    sol.add_argument("--stepsize", type=POSITIVE, help="default: half of --max-iter")
    sol.add_argument("--max-iter", type=POSITIVE, help="default: per --dataset (see above)")
    run = p.add_argument_group("run")
    run.add_argument("--eval-every", type=POSITIVE, default=1000,
                     help="iterations between Recall@K")
    run.add_argument("--snapshot-every", type=POSITIVE, default=1000)
    run.add_argument("--log-every", type=POSITIVE, default=20, help="iterations per history row")
    run.add_argument("--eval-batch", type=POSITIVE, default=evaluation.DEFAULT_BATCH)
    run.add_argument("--device-mem",
                     help="memory of one device, e.g. 24G: the largest pass batch that fits is "
                          "chosen (default on a GPU: its memory)")
    init = run.add_mutually_exclusive_group()
    init.add_argument("--init-weights", type=Path,
                      help="pretrained GoogLeNet (default $ABE_WEIGHTS/bvlc_googlenet.caffemodel, "
                           "else weights/bvlc_googlenet.caffemodel)")
    init.add_argument("--from-scratch", action="store_true",
                      help="no pretrained weights: He (MSRA) weights and zero biases for "
                           "GoogLeNet's layers, xavier for the new layers; a deliberate "
                           "departure from the paper on its datasets")
    run.add_argument("--seed", type=COUNT, default=0,
                     help="seeds every random choice: Caffe's fillers, the pair sampler, crops "
                          "and mirrors (each GPU rank its own stream) (default %(default)s)")
    run.add_argument("--gpus", help="comma-separated GPU ids, one training process each "
                                    "(caffe.NCCL, as BVLC's python/train.py)")
    run.add_argument("--cpu", action="store_true",
                     help="train on the CPU (the default without --gpus); with --gpus: one CPU "
                          "process per listed id, a stand-in that exercises the multi-process "
                          "path without GPUs (no gradient reduction)")
    args = p.parse_args(argv)
    try:
        args.gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else []
    except ValueError:
        p.error(f"--gpus must be comma-separated integers, got {args.gpus!r}")
    if len(set(args.gpus)) != len(args.gpus) or any(g < 0 for g in args.gpus):
        p.error("--gpus must list distinct non-negative ids")
    if args.resume:
        changed = [name for name in vars(args) if name not in RESUME_OPTIONS + ("run_dir", "resume")
                   and getattr(args, name) != p.get_default(name)]
        if changed:
            p.error(f"--resume continues the run as it was configured; "
                    f"--{changed[0].replace('_', '-')} cannot change (--max-iter, --gpus and "
                    f"--cpu can)")
    return args, p


def absolute(path):
    """Paths outside the run folder are stored absolute: a run resumes from any folder."""
    return None if path is None else path.resolve()


def new_run_settings(args, p):
    """Settings, net config and solver config of a fresh run (usage errors exit here)."""
    if args.train_lmdb is None and args.config is None:
        p.error("give --train-lmdb (or --config with its own data layer source)")
    if (args.test_lmdb is None) == (args.query_lmdb is None or args.gallery_lmdb is None):
        p.error("give --test-lmdb, or --query-lmdb and --gallery-lmdb")
    lmdbs = [args.test_lmdb] if args.test_lmdb else [args.query_lmdb, args.gallery_lmdb]
    for path in lmdbs + [args.train_lmdb, args.config, args.init_weights]:
        if path is not None and not path.exists():
            p.error(f"{path} does not exist")
    max_iter = args.max_iter or DATASET_ITERS[args.dataset]
    init = args.init_weights or (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.exists() else None)
    if init is None and not args.from_scratch:
        if args.dataset in BENCHMARKS:
            raise UserError(
                f"no ImageNet weights at {DEFAULT_WEIGHTS} (the paper's {args.dataset} results "
                f"start from them): run weights/fetch_googlenet.py or give --init-weights FILE; "
                f"--from-scratch trains without them, deliberately")
        print(f"train: warning: {DEFAULT_WEIGHTS} not found; training from scratch "
              f"(run weights/fetch_googlenet.py for the paper's ImageNet initialization)",
              file=sys.stderr)
    settings = training.TrainSettings(
        run_dir=str(args.run_dir), max_iter=max_iter, eval_every=args.eval_every,
        snapshot_every=args.snapshot_every, log_every=args.log_every,
        test_lmdbs=[str(absolute(x)) for x in lmdbs],
        ks=sorted(set(args.ks)) if args.ks else list(evaluation.default_ks(args.dataset)),
        eval_batch=args.eval_batch, cpu=args.cpu,
        init_weights="" if args.from_scratch or init is None else str(absolute(init)),
        gpus=args.gpus, seed=args.seed, batch=args.batch, iter_size=args.iter_size or 1)
    net_cfg = solver_cfg = None
    if args.config is None:
        try:
            net_cfg = netgen.NetConfig(
                arch=args.arch, M=args.M, embed_dim=args.embed_dim, att_depth=args.att_depth,
                branch=args.branch, lambda_div=args.lambda_div, batch=args.batch,
                crop=args.crop, source=str(absolute(args.train_lmdb)),
                lr_mult_new=args.lr_mult_new)
            solver_cfg = netgen.SolverConfig(
                base_lr=args.base_lr, lr_policy=args.lr_policy, gamma=args.gamma,
                stepsize=args.stepsize or max(1, max_iter // 2), max_iter=max_iter,
                weight_decay=args.weight_decay)
        except netgen.ConfigError as error:
            p.error(str(error))
    return settings, net_cfg, solver_cfg


def check_before_writing(settings, net_param, train_source=None):
    """What would otherwise stop Caffe (an abort) or the run after its folder is written."""
    if not settings.cpu:
        devices.require_gpus(settings.gpus)
    pair_params = training.pair_layer_params(net_param)
    if pair_params is not None:
        if train_source is not None:
            pair_params["source"] = str(train_source)
        training.check_data(pair_params, settings.test_lmdbs)
    if settings.init_weights:
        checks.read_caffemodel(settings.init_weights)  # not a caffemodel: a UserError


def say(line):
    print(f"train: {line}", file=sys.stderr)


def plan_memory(args, settings, train_net, deploy_net, choose):
    """Say the run's batch layout and memory plan; with a known device memory and ``choose``,
    set the largest pass batch that fits (settings.iter_size)."""
    from abe.net import memory_plan
    from abe.train import batching

    layout = batching.BatchLayout(settings.batch, max(1, len(settings.gpus)), settings.iter_size)
    on_gpu = bool(settings.gpus) and not settings.cpu
    device = memory_plan.parse_size(args.device_mem) if args.device_mem else 0
    if not device and on_gpu:
        device = devices.gpu_memory(settings.gpus[0])
    reserve = memory_plan.GPU_CONTEXT_BYTES if on_gpu else 0
    plan_in = memory_plan.net_memory_isolated if on_gpu else memory_plan.NetMemory
    memory = plan_in(train_net, deploy_net, settings.eval_batch)
    if device and choose:
        layout = batching.fit_to_memory(layout, memory, device, reserve)
        settings.iter_size = layout.iter_size
        say(f"memory plan: chose {layout.pass_batch} images per forward pass "
            f"(iter_size {layout.iter_size}) to fit {memory_plan.gib(device)}")
    plan = memory.plan(layout.pass_batch)
    say(layout.describe())
    say(f"memory plan per process: {plan.describe()}"
        + (f" + {memory_plan.gib(reserve)} CUDA context" if reserve else ""))
    if device and plan.total + reserve > device:
        say(f"warning: the plan exceeds the device's {memory_plan.gib(device)}; a larger "
            f"--iter-size would fit")


def resume(args, files):
    """Settings of the run in ``files``, checked and updated for continuing it."""
    if not files.config.exists():
        raise UserError(f"--resume: {args.run_dir} holds no run (no config.json)")
    settings = training.load_settings(args.run_dir)
    latest = run_folder.resumable_snapshot(files, say)
    at = latest[0] if latest else 0
    if args.max_iter is not None:
        if args.max_iter <= at:
            raise UserError(f"--max-iter {args.max_iter} is not beyond the iteration the run "
                            f"resumes from ({at})")
        settings.max_iter = args.max_iter
    if args.gpus or args.cpu:
        settings.gpus, settings.cpu = args.gpus, args.cpu
    if not settings.batch:  # a run from before the global batch was recorded
        training.batch_layout(settings, files.train, training.read_solver(files.solver))
    train_net = checks.check_prototxt(files.train)
    check_before_writing(settings, train_net)
    plan_memory(args, settings, train_net, checks.check_prototxt(files.deploy), choose=False)
    training.prepare_run(settings, config_dir=args.run_dir, resume=True)
    return settings


def start(args, p, files):
    """Settings of a new run, everything checked before the run folder is touched."""
    if not args.start_over:
        run_folder.refuse_fresh_run(files)
    settings, net_cfg, solver_cfg = new_run_settings(args, p)
    config = absolute(args.config)
    net_param = (netgen.train_net(net_cfg) if net_cfg
                 else checks.check_prototxt(config / "train.prototxt"))
    check_before_writing(settings, net_param, absolute(args.train_lmdb) if config else None)
    deploy_param = (netgen.deploy_net(net_cfg) if net_cfg
                    else checks.check_prototxt(config / "deploy.prototxt"))
    plan_memory(args, settings, net_param, deploy_param, choose=args.iter_size is None)
    if args.start_over and files.run_marks():
        moved = run_folder.move_aside(files)
        say(f"moved the previous run to {moved}")
        if config == files.root.resolve():
            config = moved
    training.prepare_run(settings, config_dir=config, net_cfg=net_cfg, solver_cfg=solver_cfg,
                         train_source=absolute(args.train_lmdb) if config else None)
    return settings


def main(argv=None):
    args, p = parse_args(argv)
    files = training.RunFiles(args.run_dir)
    settings = resume(args, files) if args.resume else start(args, p, files)
    try:
        if len(settings.gpus) > 1:
            training.train_parallel(settings, resume=args.resume)
            result = None
        else:
            trainer = training.Trainer(settings, resume=args.resume)
            result = trainer.run(on_eval=lambda it, r: print(
                f"iteration {it}: " + evaluation.format_table(r).splitlines()[2].strip(),
                file=sys.stderr))
    except training.LossNotFinite as error:
        print(f"train: {error}", file=sys.stderr)
        return 1
    if result is not None:
        training.write_atomic(files.root / "recall.json", json.dumps(result, indent=2) + "\n")
        print(evaluation.format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "train"))
