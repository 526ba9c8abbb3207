"""What one training process of Caffe holds on its device, computed before anything runs.

Counted from the net itself: Caffe instantiates the train net (its pair data layer replaced by
``Input`` blobs of the same shapes) and the deploy net on the CPU, which only shapes blobs (Caffe
allocates a blob's memory on first use), and the plan adds up what a training iteration and an
evaluation touch:

- activations: every blob's data; the tops of Caffe's ``Split`` layers share their bottom's data
  and in-place tops (the ReLUs) are their bottom;
- gradients: the diff of every blob that back-propagation writes (not the data layer's tops);
- layer buffers: each non-1x1 convolution's im2col column buffer (one image's worth, per layer),
  the bias multipliers, max pooling's argmax indices, LRN's scale, ContrastiveLoss's buffers;
- parameters: weights, their gradients and SGD's momentum history (shared parameters once);
- the test net: the deploy net at the evaluation batch, blob data and layer buffers, its
  weights shared with the train net.

Everything but the column buffers and the parameters grows linearly with the pass batch, so two
small instantiations (2 and 4 images) give the plan at any batch. On a GPU add the CUDA context
(``GPU_CONTEXT_BYTES``). NCCL moves the parameters and their gradients into one buffer each (Caffe's
GPUParams, the originals freed), so it adds nothing.
"""
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from abe.errors import UserError

FLOAT = 4
GPU_CONTEXT_BYTES = 600 * 2 ** 20  # CUDA context and cuBLAS handles, typical on current GPUs
PARTS = ("activations", "gradients", "buffers", "parameters", "test_net")
# Memory sizes of common NVIDIA cards (GiB, as the driver reports them, nominally).
CARD_GIB = (8, 11, 12, 16, 24, 32, 40, 48, 80, 141)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one training process holds at ``pass_batch`` images per forward pass."""
    pass_batch: int
    activations: int
    gradients: int
    buffers: int
    parameters: int
    test_net: int

    @property
    def total(self):
        return sum(getattr(self, part) for part in PARTS)

    def describe(self):
        parts = ", ".join(f"{part.replace('_', ' ')} {gib(getattr(self, part))}" for part in PARTS)
        return f"{self.pass_batch} images per pass: {gib(self.total)} ({parts})"


def gib(nbytes):
    return f"{nbytes / 2 ** 30:.2f} GiB"


def smallest_card(nbytes, reserve=GPU_CONTEXT_BYTES):
    """The smallest of ``CARD_GIB`` that holds ``nbytes`` plus ``reserve``, or None."""
    return next((c for c in CARD_GIB if nbytes + reserve <= c * 2 ** 30), None)


def parse_size(text):
    """'24G', '24GB', '16GiB', '800M', or bytes -> bytes (binary units, as GPUs report them)."""
    units = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    word = str(text).strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (word[:-1], word[-1]) if word[-1:] in units and word[-1:] else (word, "")
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise UserError(f"device memory {text!r} is not a size like 24G or 16000M") from None
    if value <= 0:
        raise UserError(f"device memory must be positive, got {text!r}")
    return int(value)


def read_net(path):
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    try:
        return text_format.Parse(Path(path).read_text(), caffe_pb2.NetParameter())
    except text_format.ParseError as error:
        raise UserError(f"{path} is not a Caffe net prototxt: {error}") from None


def with_input_data(net_param, pass_batch):
    """A copy of the train net whose pair data layer is ``Input`` blobs of the pass batch."""
    from caffe.proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    for layer in net.layer:
        if layer.type == "Python" and layer.python_param.layer == "PairDataLayer":
            crop = json.loads(layer.python_param.param_str or "{}").get("crop", 224)
            layer.type = "Input"
            layer.ClearField("python_param")
            shapes = [[pass_batch, 3, crop, crop], [pass_batch], [pass_batch // 2]]
            for shape in shapes[:len(layer.top)]:
                layer.input_param.shape.add().dim.extend(shape)
        elif layer.type == "Input":  # data, label: the batch; sim: one per pair
            for top, shape in zip(layer.top, layer.input_param.shape):
                shape.dim[0] = pass_batch // 2 if top == "sim" else pass_batch
    if not any(layer.type == "Input" for layer in net.layer):
        raise UserError("the net has neither a PairDataLayer nor Input blobs to size")
    return net


def with_batch(deploy_param, batch):
    from caffe.proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    net.CopyFrom(deploy_param)
    for layer in net.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    return net


def instantiate(net_param, phase):
    """A caffe.Net on the CPU for ``net_param`` (its blobs shaped, not yet allocated)."""
    import caffe
    from google.protobuf import text_format

    caffe.set_mode_cpu()
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text_format.MessageToString(net_param))
    try:
        return caffe.Net(f.name, phase)
    finally:
        os.unlink(f.name)


def layer_buffers(kind, param, bottoms, tops):
    """Floats a layer keeps besides its blobs and parameters (Caffe 99bd997's layers)."""
    if kind == "Convolution":
        p = param.convolution_param
        kernel = _two(p.kernel_size, p.kernel_h, p.kernel_w, 1)
        stride = _two(p.stride, p.stride_h, p.stride_w, 1)
        pad = _two(p.pad, p.pad_h, p.pad_w, 0)
        spatial = tops[0][2] * tops[0][3]
        # Caffe skips im2col (and never touches col_buffer_) for 1x1, stride 1, no padding.
        one_by_one = kernel == [1, 1] and stride == [1, 1] and pad == [0, 0]
        columns = 0 if one_by_one else bottoms[0][1] * _prod(kernel) * spatial
        return columns + spatial  # + the bias multiplier
    if kind == "Pooling" and param.pooling_param.pool == param.pooling_param.MAX and \
            len(tops) == 1:
        return _prod(tops[0])  # argmax indices (int32, the size of a float)
    if kind == "LRN":
        return _prod(bottoms[0])  # scale_
    if kind == "InnerProduct":
        return bottoms[0][0]  # bias multiplier
    if kind == "ContrastiveLoss":
        n, c = bottoms[0][0], _prod(bottoms[0][1:])
        return 2 * n * c + n + c  # diff_, diff_sq_, dist_sq_, summer_vec_
    return 0


def _two(repeated, height, width, default):
    """Caffe's 2-D convolution geometry: one value for both axes, two values, or _h/_w."""
    values = list(repeated)
    if len(values) == 1:
        return values * 2
    return values or [height or default, width or default]


def _prod(shape):
    out = 1
    for d in shape:
        out *= d
    return out


def count_net(net, net_param, train):
    """{part: floats} of one instantiated net."""
    by_name = {layer.name: layer for layer in net_param.layer}
    names, blobs = list(net._blob_names), list(net._blobs)
    shapes = [tuple(b.shape) for b in blobs]
    needs_diff = [False] * len(blobs)
    shares_data = [False] * len(blobs)
    buffers = 0
    for index, layer in enumerate(net.layers):
        bottoms, tops = list(net._bottom_ids(index)), list(net._top_ids(index))
        param = by_name.get(net._layer_names[index])  # None for Caffe's own Split layers
        learns = len(layer.blobs) > 0 and (not param.param or
                                           any(p.lr_mult != 0 for p in param.param))
        backward = learns or any(needs_diff[b] for b in bottoms)
        for top in tops:
            if top not in bottoms:  # in-place tops are their bottom
                needs_diff[top] = backward
        if layer.type == "Split":
            for top in tops:
                shares_data[top] = True
        buffers += layer_buffers(layer.type, param, [shapes[b] for b in bottoms],
                                 [shapes[t] for t in tops])
    losses = {names.index(n) for n, w in net.blob_loss_weights.items() if w}
    activations = sum(_prod(s) for s, shared in zip(shapes, shares_data) if not shared)
    gradients = sum(_prod(s) for i, s in enumerate(shapes)
                    if train and (needs_diff[i] or i in losses))
    return {"activations": activations, "gradients": gradients, "buffers": buffers}


def parameter_floats(net):
    """Learnable floats of ``net``, shared blobs once."""
    seen, total = set(), 0
    for layer in net.layers:
        for blob in layer.blobs:
            address = blob.data.__array_interface__["data"][0]
            if address not in seen:
                seen.add(address)
                total += blob.data.size
    return total


class NetMemory:
    """The memory plan of one train net (and its deploy net evaluated at ``eval_batch``)."""

    def __init__(self, train_param, deploy_param=None, eval_batch=50):
        import caffe

        self.train_param, self.deploy_param = train_param, deploy_param
        counts = {}
        for batch in (2, 4):
            sized = with_input_data(train_param, batch)
            net = instantiate(sized, caffe.TRAIN)
            counts[batch] = count_net(net, sized, train=True)
            if batch == 2:
                self.parameter_floats = parameter_floats(net)
            del net
        self.per_image = {k: (counts[4][k] - counts[2][k]) / 2 for k in counts[2]}
        self.fixed = {k: counts[2][k] - 2 * self.per_image[k] for k in counts[2]}
        self.test_floats = 0
        if deploy_param is not None:
            test = with_batch(deploy_param, eval_batch)
            net = instantiate(test, caffe.TEST)
            self.test_floats = sum(count_net(net, test, train=False).values())
            del net

    def plan(self, pass_batch):
        part = {k: round(self.fixed[k] + pass_batch * self.per_image[k]) * FLOAT
                for k in self.fixed}
        return MemoryPlan(pass_batch=pass_batch, parameters=3 * self.parameter_floats * FLOAT,
                          test_net=self.test_floats * FLOAT, **part)

    def largest_fitting(self, candidates, device_bytes, reserve=0):
        """The largest pass batch of ``candidates`` whose plan fits, or None."""
        for batch in sorted(candidates, reverse=True):
            if self.plan(batch).total + reserve <= device_bytes:
                return batch
        return None


def net_memory_isolated(train_param, deploy_param=None, eval_batch=50):
    """``NetMemory`` computed in a fresh process: a CUDA build of Caffe opens a CUDA context on
    first use, which the parent of GPU training processes must not hold on their device."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(NetMemory, (train_param, deploy_param, eval_batch))


def load(train_path, deploy_path=None, eval_batch=50):
    """NetMemory of a train.prototxt, with the deploy.prototxt beside it when present."""
    train_path = Path(train_path)
    if not train_path.is_file():
        raise UserError(f"{train_path} does not exist")
    if deploy_path is None and (train_path.parent / "deploy.prototxt").is_file():
        deploy_path = train_path.parent / "deploy.prototxt"
    deploy = read_net(deploy_path) if deploy_path else None
    return NetMemory(read_net(train_path), deploy, eval_batch)


_MEASURE = r"""
import ctypes, json, sys
ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD fixed: freed blobs leave RSS
import numpy as np
import caffe
from caffe import layers as L
from google.protobuf import text_format
from caffe.proto import caffe_pb2
import abe.net.layers  # noqa: F401  (the Python layers' module, imported before the baseline)

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

caffe.set_mode_cpu()
args = json.loads(sys.argv[1])
# warm up the BLAS (its buffers are the process's, not the net's)
n = caffe.NetSpec()
n.data = L.Input(shape=dict(dim=[2, 16, 32, 32]))
n.conv = L.Convolution(n.data, num_output=16, kernel_size=3, weight_filler=dict(type="xavier"))
n.loss = L.EuclideanLoss(n.conv, n.conv)
with open(args["scratch"] + "/warm.prototxt", "w") as f:
    f.write(str(n.to_proto()))
warm = caffe.Net(args["scratch"] + "/warm.prototxt", caffe.TRAIN)
warm.forward(); warm.backward()
del warm
before = rss()
solver = caffe.SGDSolver(args["solver"])
rng = np.random.default_rng(0)
for name, blob in solver.net.blobs.items():
    if name == "sim":
        blob.data[...] = rng.integers(0, 2, blob.data.shape)
    elif name in ("data", "label"):
        blob.data[...] = rng.standard_normal(blob.data.shape)
solver.step(1)
after_train = rss()
if args.get("deploy"):
    test = caffe.Net(args["deploy"], caffe.TEST)
    test.share_with(solver.net)
    test.blobs["data"].data[...] = 0
    test.forward()
print(json.dumps({"train": after_train - before, "total": rss() - before}))
"""


def measure_cpu(train_param, pass_batch, deploy_param=None, eval_batch=50):
    """Bytes a fresh CPU process's resident memory grows by over one SGD iteration of the train
    net at ``pass_batch`` (and one evaluation forward of the deploy net at ``eval_batch``):
    what Caffe actually allocated, to check plans against. Runs in a child process."""
    from google.protobuf import text_format

    with tempfile.TemporaryDirectory() as scratch:
        train = Path(scratch, "train.prototxt")
        train.write_text(text_format.MessageToString(with_input_data(train_param, pass_batch)))
        solver = Path(scratch, "solver.prototxt")
        solver.write_text(f'net: "{train}"\nbase_lr: 1e-6\nlr_policy: "fixed"\n'
                          f'momentum: 0.9\nweight_decay: 2e-4\nmax_iter: 1\nsolver_mode: CPU\n')
        args = {"solver": str(solver), "scratch": scratch}
        if deploy_param is not None:
            deploy = Path(scratch, "deploy.prototxt")
            deploy.write_text(text_format.MessageToString(with_batch(deploy_param, eval_batch)))
            args["deploy"] = str(deploy)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   GLOG_minloglevel="2")
        done = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(args)], env=env,
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
