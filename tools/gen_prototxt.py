#!/usr/bin/env python3
"""Generate the Caffe prototxt of ABE-M (Kim et al., ECCV 2018) or of the M-heads baseline.

Writes OUT/train.prototxt, OUT/deploy.prototxt and OUT/solver.prototxt (through pycaffe's
NetSpec, so each is a valid NetParameter). Examples:

    gen_prototxt.py --M 8 --out prototxt/abe8_512              # ABE-8^512, the paper's default
    gen_prototxt.py --arch heads --M 4 --out runs/heads4         # 4-heads^512 baseline
    gen_prototxt.py --M 8 --lambda-div 0 --out runs/nodiv        # without the divergence loss
    gen_prototxt.py --arch heads --M 8 --lambda-div 1 --out runs/h8div  # Table 3: heads + L_div
    gen_prototxt.py --paper-configs --out prototxt --force       # every configuration in prototxt/
"""
import argparse
import os
import sys
from pathlib import Path

from abe import cli
from abe.net import netgen

os.environ.setdefault("GLOG_minloglevel", "2")
NET, SOLVER = netgen.NetConfig, netgen.SolverConfig
PROG = "gen_prototxt.py"


def parse_args(argv):
    p = cli.Parser(prog=PROG, description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    net = p.add_argument_group("network (paper section 3 and its ablations)")
    net.add_argument("--arch", choices=netgen.ARCHS, default=NET.arch,
                     help="abe: the attention-based ensemble, M learners B_m(x) = G(S(x) o "
                          "A_m(S(x))) sharing the spatial feature extractor S and the global "
                          "feature embedding function G, each with its own attention mask; "
                          "heads: the M-heads baseline (Fig. 1a), S shared and a separate copy "
                          "of the upper network per head (default %(default)s)")
    net.add_argument("--M", type=int, default=NET.M,
                     help="number of learners (ABE) or heads, the ensemble size "
                          "(default %(default)s)")
    net.add_argument("--embed-dim", type=int, default=NET.embed_dim,
                     help="total embedding size, the superscript of ABE-M^d: each learner embeds "
                          "into d/M dimensions and the ensemble concatenates them "
                          "(default %(default)s)")
    net.add_argument("--att-depth", type=int, default=NET.att_depth,
                     help="number of inception blocks in the attention module A_m, 1-7 "
                          "(default %(default)s = inception_4a..4e after pool3)")
    net.add_argument("--branch", choices=list(netgen.BRANCHES), default=NET.branch,
                     help="branching point: the layer whose output is S(x), the spatial feature "
                          "extractor's output shared by the learners (default %(default)s)")
    net.add_argument("--lambda-div", type=float, default=None,
                     help="weight lambda_div of the divergence loss, which encourages diversity "
                          "among the learners; 0 drops the loss (default 1 for abe; 0 for heads, "
                          "the paper's M-heads baseline of Table 1, while --lambda-div 1 gives "
                          "Table 3's 'heads with L_div' variant)")
    net.add_argument("--no-sigmoid", dest="sigmoid", action="store_false",
                     help="attention masks straight from the 1x1 convolution, without the "
                          "sigmoid (the masks are sigmoid outputs by default)")
    net.add_argument("--batch", type=int, default=NET.batch,
                     help="images per iteration, pairs [a_1..a_P, b_1..b_P] (default %(default)s)")
    net.add_argument("--crop", type=int, default=NET.crop,
                     help="input size, a multiple of 32; pool5's kernel is crop/32 "
                          "(default %(default)s; smaller only for the offline CPU demo)")
    net.add_argument("--data", choices=netgen.DATA_MODES, default=NET.data,
                     help="train-net input: pairs = the pair-sampling abe.data.pair_layer.PairDataLayer; "
                          "input = Input blobs of the same shapes (benches, tests)")
    net.add_argument("--source", default=NET.source,
                     help="train LMDB read by the pair data layer (default %(default)s)")
    net.add_argument("--g-sharing", choices=netgen.G_SHARING, default=NET.g_sharing,
                     help="how ABE's G, shared by all learners, is built: batch = the M masked "
                          "maps "
                          "stacked on the batch axis and G run once (measured faster, see "
                          "bench/bench_network.py); towers = M copies sharing parameters by name "
                          "(default %(default)s)")
    net.add_argument("--lr-mult-new", type=float, default=NET.lr_mult_new,
                     help="lr_mult of the layers not in GoogLeNet (attention 1x1 convolutions, "
                          "embedding FC; bias twice that) (default %(default)s)")
    sol = p.add_argument_group("solver (paper: SGD with momentum 0.9; the rest is ours)")
    sol.add_argument("--base-lr", type=float, default=SOLVER.base_lr,
                     help="base learning rate (default %(default)s)")
    sol.add_argument("--lr-policy", choices=("fixed", "step"), default=SOLVER.lr_policy,
                     help="learning-rate schedule (default %(default)s)")
    sol.add_argument("--gamma", type=float, default=SOLVER.gamma,
                     help="step policy: factor per step (default %(default)s)")
    sol.add_argument("--stepsize", type=int, default=SOLVER.stepsize,
                     help="step policy: iterations per step (default %(default)s)")
    sol.add_argument("--max-iter", type=int, default=SOLVER.max_iter,
                     help="iterations (default %(default)s)")
    sol.add_argument("--iter-size", type=int, default=SOLVER.iter_size,
                     help="forward/backward passes accumulated per update: --batch 16 "
                          "--iter-size 4 gives exactly the gradient of batch 64 (every loss term "
                          "is per pair or per image) in a quarter of the memory "
                          "(default %(default)s)")
    sol.add_argument("--weight-decay", type=float, default=SOLVER.weight_decay,
                     help="L2 weight decay, BVLC GoogLeNet's own (default %(default)s)")
    sol.add_argument("--snapshot", type=int, default=SOLVER.snapshot,
                     help="snapshot every this many iterations (default %(default)s)")
    sol.add_argument("--snapshot-prefix", default=SOLVER.snapshot_prefix,
                     help="snapshot path prefix (default runs/<OUT's name>/snapshot)")
    sol.add_argument("--solver-mode", choices=("CPU", "GPU"), default=SOLVER.solver_mode,
                     help="Caffe mode for `caffe train` (default %(default)s; -gpu overrides)")
    p.add_argument("--out", type=Path,
                   help="directory for train/deploy/solver.prototxt (default "
                        "runs/prototxt/<arch><M>_<embed-dim>, e.g. runs/prototxt/abe8_512; with "
                        "--paper-configs: the parent of one directory per configuration, default "
                        "runs/prototxt)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--paper-configs", action="store_true",
                   help="write every configuration of the paper's tables "
                        f"({', '.join(netgen.PAPER_CONFIGS)}) under --out; the other network "
                        "options must keep their defaults")
    return p.parse_args(argv), p


def options(args, cls):
    return {f: getattr(args, f) for f in cls.__dataclass_fields__ if f in vars(args)}


def main(argv=None):
    args, parser = parse_args(argv)
    net_options = options(args, NET)
    if args.out is None:
        args.out = Path("runs", "prototxt")
        if not args.paper_configs:
            args.out /= f"{args.arch}{args.M}_{args.embed_dim}"
    solver_cfg = SOLVER(**options(args, SOLVER))  # ConfigError: one line, exit 2 (cli.run)
    if args.paper_configs:
        if net_options != options(parser.parse_args(["--out", "."]), NET):
            parser.error("--paper-configs takes no network options")
        jobs = [(args.out / name, NET(**kw)) for name, kw in netgen.PAPER_CONFIGS.items()]
    else:
        jobs = [(args.out, NET(**net_options))]
    for out, _ in jobs:
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.force)):
            parser.error(f"{out} exists and is not an empty directory (use --force to overwrite)")
    for out, cfg in jobs:
        for path in netgen.write_config(out, cfg, solver_cfg):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
