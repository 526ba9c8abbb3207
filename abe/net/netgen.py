"""The networks of the paper as Caffe NetSpec: ABE-M (attention-based ensemble) and M-heads.

An ABE learner's embedding is ``B_m(x) = G(S(x) * A_m(S(x)))`` (paper eq. 1):

- ``S``: BVLC GoogLeNet from ``conv1/7x7_s2`` up to the branch point (default ``pool3/3x3_s2``);
- ``A_m``: an attention trunk (a renamed copy of the next ``att_depth`` inception blocks, shared
  by all learners, computed once) and a per-learner 1x1 convolution back to S's channels with a
  sigmoid: the mask ``learner{m}/attention``, the same shape as S(x);
- ``G``: the rest of GoogLeNet to ``pool5`` and one FC to ``embed_dim / M``, shared by all
  learners (weights and all), then per-learner L2 normalization: ``learner{m}/embedding``.

M-heads (paper Fig. 1a) shares S only; head m has its own copy of G named ``learner{m}/...``.
Every layer that is a BVLC GoogLeNet layer keeps its BVLC name and parameters, so
``bvlc_googlenet.caffemodel`` initializes it by name. Builders take and return NetSpec tops,
one small function per block, as in BVLC's ``python/caffe/net_spec.py`` examples.
"""
import json
import math
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

from caffe import NetSpec
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from abe.errors import UserError

# BVLC GoogLeNet inception blocks: #1x1, #3x3_reduce, #3x3, #5x5_reduce, #5x5, pool_proj.
INCEPTION = {
    "inception_3a": (64, 96, 128, 16, 32, 32),
    "inception_3b": (128, 128, 192, 32, 96, 64),
    "inception_4a": (192, 96, 208, 16, 48, 64),
    "inception_4b": (160, 112, 224, 24, 64, 64),
    "inception_4c": (128, 128, 256, 24, 64, 64),
    "inception_4d": (112, 144, 288, 32, 64, 64),
    "inception_4e": (256, 160, 320, 32, 128, 128),
    "inception_5a": (256, 160, 320, 32, 128, 128),
    "inception_5b": (384, 192, 384, 48, 128, 128),
}
# BVLC's xavier "std" per inception branch (Caffe's xavier filler ignores it; kept for parity).
INCEPTION_STD = {"1x1": 0.03, "3x3_reduce": 0.09, "3x3": 0.03, "5x5_reduce": 0.2, "5x5": 0.03,
                 "pool_proj": 0.1}
# GoogLeNet after pool2, in order: inception blocks and the two stride-2 max pools between them.
STAGES = ["inception_3a", "inception_3b", "pool3/3x3_s2", "inception_4a", "inception_4b",
          "inception_4c", "inception_4d", "inception_4e", "pool4/3x3_s2", "inception_5a",
          "inception_5b"]
STEM_CHANNELS = 192  # conv2/3x3, hence pool2/3x3_s2
# Branch point name -> how many of STAGES belong to S.
BRANCHES = {"pool2": 0, "inception_3a": 1, "pool3": 3, "inception_4a": 4, "inception_4b": 5}
ARCHS = ("abe", "heads")
G_SHARING = ("batch", "towers")
DATA_MODES = ("pairs", "input")

# λ_div when not given (ABE_SPEC section 1): ABE-M trains with the divergence loss; the M-heads
# baseline of the paper's Fig. 1a and Table 1 without it ("8-heads with L_div" is Table 3's
# separate experiment: --lambda-div 1).
DEFAULT_LAMBDA_DIV = {"abe": 1.0, "heads": 0.0}

BVLC_PARAM = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
BVLC_BIAS = dict(type="constant", value=0.2)


INT32_MAX = 2 ** 31 - 1  # Caffe's int32 fields (iterations, sizes)


class ConfigError(UserError, ValueError):
    """A configuration the paper's network cannot have; the message is one line for users."""


def check_numbers(config):
    """Every float option of a config is finite, every integer fits Caffe's int32 fields."""
    for field in fields(config):
        value, name = getattr(config, field.name), field.name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT32_MAX:
            raise ConfigError(f"{name} must be at most {INT32_MAX}, got {value}")


@dataclass(frozen=True)
class NetConfig:
    """Everything that shapes a generated net; defaults are the paper's ABE-8^512."""
    arch: str = "abe"
    M: int = 8
    embed_dim: int = 512
    att_depth: int = 5
    branch: str = "pool3"
    lambda_div: float = None  # None: DEFAULT_LAMBDA_DIV of the arch
    sigmoid: bool = True
    batch: int = 64
    crop: int = 224
    data: str = "pairs"
    source: str = "data/train_lmdb"
    g_sharing: str = "batch"
    lr_mult_new: float = 10.0
    contrastive_margin: float = 1.0
    divergence_margin: float = 1.0

    def __post_init__(self):
        def need(ok, message):
            if not ok:
                raise ConfigError(message)
        check_numbers(self)
        need(self.arch in ARCHS, f"unknown arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        if self.lambda_div is None:
            object.__setattr__(self, "lambda_div", DEFAULT_LAMBDA_DIV[self.arch])
        need(self.M >= 1, f"M must be at least 1, got {self.M}")
        need(self.embed_dim >= 1 and self.embed_dim % self.M == 0,
             f"embed-dim {self.embed_dim} is not a positive multiple of M={self.M}")
        need(self.branch in BRANCHES,
             f"unknown branch {self.branch!r}; choose from {', '.join(BRANCHES)}")
        need(1 <= self.att_depth <= 7, f"att-depth must be in 1..7, got {self.att_depth}")
        available = len(inception_blocks(STAGES[BRANCHES[self.branch]:]))
        need(self.arch == "heads" or self.att_depth <= available,
             f"att-depth {self.att_depth} exceeds the {available} inception blocks after "
             f"branch {self.branch}")
        need(self.lambda_div >= 0, f"lambda-div must be >= 0, got {self.lambda_div}")
        need(self.batch >= 2 and self.batch % 2 == 0,
             f"batch must be an even number of images (pairs a/b), got {self.batch}")
        need(self.crop >= 32 and self.crop % 32 == 0,
             f"crop must be a positive multiple of 32, got {self.crop}")
        need(self.data in DATA_MODES, f"unknown data {self.data!r}; choose from pairs, input")
        need(self.g_sharing in G_SHARING,
             f"unknown g-sharing {self.g_sharing!r}; choose from {', '.join(G_SHARING)}")
        need(self.lr_mult_new > 0, f"lr-mult-new must be > 0, got {self.lr_mult_new}")
        need(self.contrastive_margin > 0 and self.divergence_margin > 0,
             "the contrastive and divergence margins must be > 0")

    @property
    def learner_dim(self):
        return self.embed_dim // self.M


def inception_blocks(stages):
    return [s for s in stages if s in INCEPTION]


def stage_channels(stage, previous):
    if stage in INCEPTION:
        b = INCEPTION[stage]
        return b[0] + b[2] + b[4] + b[5]
    return previous


def channels_after(stages, channels=STEM_CHANNELS):
    for stage in stages:
        channels = stage_channels(stage, channels)
    return channels


def learnable(lr_mult=1.0, share=None):
    """Weight and bias ParamSpecs: BVLC's (1, 2; decay 1, 0) scaled by ``lr_mult``; ``share``
    names them so that layers with the same ``share`` use one set of blobs."""
    param = [dict(lr_mult=lr_mult * p["lr_mult"], decay_mult=p["decay_mult"]) for p in BVLC_PARAM]
    if share:
        param[0]["name"], param[1]["name"] = f"{share}_w", f"{share}_b"
    return param


def conv_relu(n, bottom, name, relu_name, num_output, kernel_size, std, share=None, **geometry):
    """A BVLC GoogLeNet convolution (xavier, bias 0.2) followed by its in-place ReLU."""
    n[name] = L.Convolution(bottom, num_output=num_output, kernel_size=kernel_size, **geometry,
                            weight_filler=dict(type="xavier", std=std), bias_filler=BVLC_BIAS,
                            param=learnable(share=share))
    n[relu_name] = L.ReLU(n[name], in_place=True)
    return n[relu_name]


def max_pool(n, bottom, name, stride=2, pad=0):
    geometry = dict(pad=pad) if pad else {}
    n[name] = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=3, stride=stride, **geometry)
    return n[name]


def inception(n, bottom, block, prefix="", share=False):
    """One GoogLeNet inception block named ``prefix + block``; ``share`` ties its blobs to the
    block's BVLC-named parameters (for G towers that share weights)."""
    nets = INCEPTION[block]
    base = prefix + block

    def branch(bottom, kind, num_output, kernel_size, pad=0):
        geometry = dict(pad=pad) if pad else {}
        return conv_relu(n, bottom, f"{base}/{kind}", f"{base}/relu_{kind}", num_output,
                         kernel_size, INCEPTION_STD[kind],
                         share=f"{block}/{kind}" if share else None, **geometry)

    one = branch(bottom, "1x1", nets[0], 1)
    three = branch(branch(bottom, "3x3_reduce", nets[1], 1), "3x3", nets[2], 3, pad=1)
    five = branch(branch(bottom, "5x5_reduce", nets[3], 1), "5x5", nets[4], 5, pad=2)
    pool = branch(max_pool(n, bottom, f"{base}/pool", stride=1, pad=1), "pool_proj", nets[5], 1)
    n[f"{base}/output"] = L.Concat(one, three, five, pool)
    return n[f"{base}/output"]


def run_stages(n, bottom, stages, prefix="", share=False):
    for stage in stages:
        if stage in INCEPTION:
            bottom = inception(n, bottom, stage, prefix, share)
        else:
            bottom = max_pool(n, bottom, prefix + stage)
    return bottom


def spatial(n, data, cfg):
    """S(x): GoogLeNet from conv1 to the branch point, BVLC names throughout."""
    x = conv_relu(n, data, "conv1/7x7_s2", "conv1/relu_7x7", 64, 7, 0.1, pad=3, stride=2)
    x = max_pool(n, x, "pool1/3x3_s2")
    n["pool1/norm1"] = L.LRN(x, local_size=5, alpha=1e-4, beta=0.75)
    x = conv_relu(n, n["pool1/norm1"], "conv2/3x3_reduce", "conv2/relu_3x3_reduce", 64, 1, 0.1)
    x = conv_relu(n, x, "conv2/3x3", "conv2/relu_3x3", 192, 3, 0.03, pad=1)
    n["conv2/norm2"] = L.LRN(x, local_size=5, alpha=1e-4, beta=0.75)
    x = max_pool(n, n["conv2/norm2"], "pool2/3x3_s2")
    return run_stages(n, x, STAGES[:BRANCHES[cfg.branch]])


def attention_trunk(n, s, cfg):
    """The part of A_m shared by all learners: a copy of the ``att_depth`` inception blocks after
    the branch point, named ``attention/<BVLC name>``, without the pools between them so the
    masks keep S(x)'s spatial size."""
    blocks = inception_blocks(STAGES[BRANCHES[cfg.branch]:])[:cfg.att_depth]
    return run_stages(n, s, blocks, prefix="attention/"), channels_after(blocks)


def attention_mask(n, trunk, m, channels, cfg):
    """Learner m's private part of A_m: 1x1 conv to S's channels, then a sigmoid (unless
    ``cfg.sigmoid`` is off): the mask ``learner{m}/attention``."""
    conv = f"learner{m}/attention_conv" if cfg.sigmoid else f"learner{m}/attention"
    n[conv] = L.Convolution(trunk, num_output=channels, kernel_size=1,
                            weight_filler=dict(type="xavier"),
                            bias_filler=dict(type="constant", value=0),
                            param=learnable(cfg.lr_mult_new))
    if cfg.sigmoid:
        n[f"learner{m}/attention"] = L.Sigmoid(n[conv])
    return n[f"learner{m}/attention"]


def global_embedding(n, x, cfg, prefix="", share=False, fc="embed_fc"):
    """G(.): GoogLeNet from the branch point to pool5 (kernel crop/32), then the FC to
    ``embed_dim / M`` and L2 normalization (top ``<fc>/normalized``)."""
    x = run_stages(n, x, STAGES[BRANCHES[cfg.branch]:], prefix, share)
    pool5 = prefix + "pool5/7x7_s1"
    n[pool5] = L.Pooling(x, pool=P.Pooling.AVE, kernel_size=cfg.crop // 32, stride=1)
    n[fc] = L.InnerProduct(n[pool5], num_output=cfg.learner_dim,
                           weight_filler=dict(type="xavier"),
                           bias_filler=dict(type="constant", value=0),
                           param=learnable(cfg.lr_mult_new, share="embed_fc" if share else None))
    return l2_normalize(n, n[fc], f"{fc}/normalized")


def l2_normalize(n, bottom, name):
    n[name] = L.Python(bottom, module="abe.net.layers", layer="L2Normalize")
    return n[name]


def abe_embeddings(n, data, cfg):
    """ABE-M: one S, one attention trunk, M masks, G shared by all learners."""
    s = spatial(n, data, cfg)
    trunk, trunk_channels = attention_trunk(n, s, cfg)
    s_channels = channels_after(STAGES[:BRANCHES[cfg.branch]])
    masked = []
    for m in range(cfg.M):
        mask = attention_mask(n, trunk, m, s_channels, cfg)
        n[f"learner{m}/masked"] = L.Eltwise(s, mask, operation=P.Eltwise.PROD)
        masked.append(n[f"learner{m}/masked"])
    if cfg.g_sharing == "batch":
        # G runs once on the M masked maps stacked on the batch axis, then is split back.
        n["learners/masked"] = L.Concat(*masked, axis=0)
        normalized = global_embedding(n, n["learners/masked"], cfg)
        embeddings = L.Slice(normalized, axis=0, ntop=cfg.M, name="learners/slice")
        embeddings = embeddings if cfg.M > 1 else [embeddings]
        for m, top in enumerate(embeddings):
            n[f"learner{m}/embedding"] = top
    else:
        # M towers of G; every tower's parameters are named after the BVLC layers, so one set.
        for m, x in enumerate(masked):
            prefix = f"learner{m}/" if m else ""
            n[f"learner{m}/embedding"] = global_embedding(
                n, x, cfg, prefix=prefix, share=True, fc=f"{prefix}embed_fc")
    return [n[f"learner{m}/embedding"] for m in range(cfg.M)]


def heads_embeddings(n, data, cfg):
    """M-heads: S shared, each head its own G copy ``learner{m}/...`` and its own FC."""
    s = spatial(n, data, cfg)
    for m in range(cfg.M):
        n[f"learner{m}/embedding"] = global_embedding(n, s, cfg, prefix=f"learner{m}/",
                                                      fc=f"learner{m}/embed_fc")
    return [n[f"learner{m}/embedding"] for m in range(cfg.M)]


def embeddings(n, data, cfg):
    return (abe_embeddings if cfg.arch == "abe" else heads_embeddings)(n, data, cfg)


def pair_data(n, cfg):
    """Tops ``data`` [a_1..a_P, b_1..b_P], ``label`` (2P) and ``sim`` (P): the pair-sampling
    PairDataLayer, or Input blobs of the same shapes (``cfg.data == "input"``)."""
    pairs = cfg.batch // 2
    if cfg.data == "input":
        shapes = [[cfg.batch, 3, cfg.crop, cfg.crop], [cfg.batch], [pairs]]
        n.data, n.label, n.sim = L.Input(shape=[dict(dim=s) for s in shapes], ntop=3)
    else:
        param_str = json.dumps({"source": cfg.source, "batch_pairs": pairs,
                                "positive_pairs": pairs // 2, "crop": cfg.crop})
        n.data, n.label, n.sim = L.Python(module="abe.data.pair_layer", layer="PairDataLayer",
                                          param_str=param_str, ntop=3)
    n.silence_label = L.Silence(n.label, ntop=0)  # class labels are for analysis, not a loss
    return n.data


def train_net(cfg):
    """Train net: per-learner ContrastiveLoss on the a/b halves, plus the divergence loss."""
    n = NetSpec()
    learner_embeddings = embeddings(n, pair_data(n, cfg), cfg)
    for m, e in enumerate(learner_embeddings):
        a, b = L.Slice(e, axis=0, ntop=2, name=f"learner{m}/pair_slice")
        n[f"learner{m}/embedding_a"], n[f"learner{m}/embedding_b"] = a, b
        n[f"learner{m}/contrastive_loss"] = L.ContrastiveLoss(
            a, b, n.sim, loss_weight=1,
            contrastive_loss_param=dict(margin=cfg.contrastive_margin, legacy_version=True))
    if cfg.M > 1 and cfg.lambda_div > 0:
        n.divergence_loss = L.Python(
            *learner_embeddings, module="abe.net.layers", layer="DivergenceLoss",
            param_str=json.dumps({"margin": cfg.divergence_margin}), loss_weight=cfg.lambda_div)
    return named(n.to_proto(), cfg)


def deploy_net(cfg):
    """Deploy net: Input ``data``; output ``embedding``, the M normalized embeddings
    concatenated in learner order."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[cfg.batch, 3, cfg.crop, cfg.crop]))
    n.embedding = L.Concat(*embeddings(n, n.data, cfg), axis=1)
    return named(n.to_proto(), cfg)


def config_name(cfg):
    """The paper's name: ABE-8^512, 8-heads^512, 1-head^512."""
    base = f"ABE-{cfg.M}" if cfg.arch == "abe" else f"{cfg.M}-head{'s' if cfg.M > 1 else ''}"
    return f"{base}^{cfg.embed_dim}"


def named(net, cfg):
    net.name = config_name(cfg)
    return net


@dataclass(frozen=True)
class SolverConfig:
    """Caffe SGD settings (paper: SGD, momentum 0.9; the rest is ours, see README)."""
    base_lr: float = 1e-4
    lr_policy: str = "step"
    gamma: float = 0.5
    stepsize: int = 10000
    max_iter: int = 20000
    iter_size: int = 1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    display: int = 20
    snapshot: int = 2000
    snapshot_prefix: str = ""
    solver_mode: str = "CPU"

    def __post_init__(self):
        check_numbers(self)
        for name in ("base_lr", "max_iter", "stepsize", "iter_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be > 0, got "
                                  f"{getattr(self, name)}")
        if self.snapshot < 0:
            raise ConfigError(f"snapshot must be >= 0, got {self.snapshot}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma (the step policy's factor per step) must be in (0, 1], "
                              f"got {self.gamma}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.lr_policy not in ("fixed", "step"):
            raise ConfigError(f"lr-policy must be fixed or step, got {self.lr_policy!r}")
        if self.solver_mode not in ("CPU", "GPU"):
            raise ConfigError(f"solver-mode must be CPU or GPU, got {self.solver_mode!r}")


def solver(train_path, cfg):
    """SolverParameter for ``train_path``; snapshots default to ``runs/<config dir>/snapshot``."""
    s = caffe_pb2.SolverParameter(
        net=str(train_path), type="SGD", base_lr=cfg.base_lr, lr_policy=cfg.lr_policy,
        max_iter=cfg.max_iter, iter_size=cfg.iter_size, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        display=cfg.display, snapshot=cfg.snapshot,
        snapshot_prefix=cfg.snapshot_prefix or f"runs/{Path(train_path).parent.name}/snapshot",
        solver_mode=caffe_pb2.SolverParameter.SolverMode.Value(cfg.solver_mode))
    if cfg.lr_policy == "step":
        s.gamma, s.stepsize = cfg.gamma, cfg.stepsize
    return s


# The configurations of the paper's tables, as generated into prototxt/<name>/.
PAPER_CONFIGS = {
    **{f"abe{m}_512": dict(M=m) for m in (1, 2, 4, 8)},
    "abe2_128": dict(M=2, embed_dim=128),
    "abe4_256": dict(M=4, embed_dim=256),
    "abe1_64": dict(M=1, embed_dim=64),
    **{f"heads{m}_512": dict(arch="heads", M=m) for m in (1, 2, 4, 8)},
    "abe8_512_nodiv": dict(M=8, lambda_div=0.0),
    "heads8_512_div": dict(arch="heads", M=8, lambda_div=1.0),
}


def flags(cfg):
    """``cfg`` as the gen_prototxt.py flags that differ from the defaults (for file headers)."""
    words = []
    for field in fields(cfg):
        value = getattr(cfg, field.name)
        default = DEFAULT_LAMBDA_DIV[cfg.arch] if field.name == "lambda_div" else field.default
        if value != default:
            flag = "--" + field.name.replace("_", "-")
            words += ["--no-sigmoid"] if field.name == "sigmoid" else [flag, str(value)]
    return " ".join(words)


def write_config(out, cfg, solver_cfg):
    """Writes ``out/{train,deploy,solver}.prototxt``: all three new files, or none.

    Each file is written under a temporary name, and only once all three are on disk are they
    renamed into place; a new ``out`` is built as a temporary folder and renamed whole. A write
    that fails (full disk, no permission) leaves ``out`` as it was.
    """
    out = Path(out)
    header = (f"# {config_name(cfg)}, generated by tools/gen_prototxt.py {flags(cfg)}".rstrip()
              + "\n# Regenerate instead of editing.\n")
    messages = {"train.prototxt": train_net(cfg), "deploy.prototxt": deploy_net(cfg),
                "solver.prototxt": solver(out / "train.prototxt", solver_cfg)}
    texts = {name: header + text_format.MessageToString(m) for name, m in messages.items()}
    fresh = not out.exists()
    suffix = f".partial-{os.getpid()}"
    staging = out.with_name(f".{out.name}{suffix}") if fresh else out
    written = []
    try:
        if fresh:
            out.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
        for name, text in texts.items():
            written.append(staging / f".{name}{suffix}")
            written[-1].write_text(text)
        for tmp, name in zip(written, texts):
            os.replace(tmp, staging / name)
        if fresh:
            os.rename(staging, out)
    except OSError as error:  # name the folder the user gave, not a temporary file
        raise OSError(error.errno, error.strerror, str(out)) from None
    finally:
        for tmp in written:
            tmp.unlink(missing_ok=True)
        if fresh and staging.exists():
            shutil.rmtree(staging)
    return [out / name for name in messages]
