"""A Caffe deploy NetParameter and its weights as an ONNX graph, with Caffe's arithmetic.

One small function per Caffe layer type, each returning the ONNX nodes (through ``onnx.helper``)
that compute exactly what Caffe computes. Where ONNX's operator differs from Caffe's at the
edges, the difference is written out instead of left to an attribute:

- Pooling: Caffe's output size is ``ceil((H + 2 pad - k) / s) + 1``, minus one when the last
  window would start in the bottom/right padding. The ONNX pads are given explicitly so
  ONNX's floor rounding yields that size (no ``ceil_mode``). Caffe's average divides by the
  window clipped to the *padded* input (``H + pad``), not to the extra ceil region: the padding
  becomes a zero ``Pad`` and the extra region a pad that ``count_include_pad=0`` excludes.
- LRN (ACROSS_CHANNELS): Caffe's ``k + alpha / size * sum(x^2)`` over ``size`` channels is ONNX
  LRN's formula with ``bias = k``; both divide alpha by the size.
- InnerProduct flattens from its axis (``Flatten`` + ``Gemm``), as Caffe does on 4-D input.
- ``abe.net.layers.L2Normalize``: ``x / sqrt(sum(x^2) + eps)`` with the layer's own epsilon.
- Dropout is the identity at test time (Caffe scales during training).

The batch dimension of the input is the symbolic ``batch``; every other dimension is the
prototxt's. Tensors keep their Caffe blob names; an in-place layer's earlier versions get the
suffix ``:<layer>`` so that the final version of every blob carries the blob's own name.
"""
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from abe.errors import UserError
from abe.net.layers import L2Normalize

OPSET = 18
BATCH = "batch"


class ExportError(UserError):
    """A net that cannot be written as ONNX with Caffe's semantics; one line for users."""


def layer_param(layer, field):
    return getattr(layer, field) if layer.HasField(field) else None


def spatial(repeated, single_h, single_w, default, name):
    """Caffe's kernel/pad/stride spelling (repeated field or the _h/_w pair) as (h, w)."""
    if single_h is not None or single_w is not None:
        return (single_h if single_h is not None else default,
                single_w if single_w is not None else default)
    values = list(repeated)
    if len(values) > 2:
        raise ExportError(f"only 2-D {name} is supported, got {values}")
    if not values:
        return default, default
    return (values[0], values[-1])


class Graph:
    """The ONNX graph under construction: nodes, initializers, and the name of each blob's
    current version."""

    def __init__(self, layers):
        self.nodes, self.initializers, self.tensor = [], {}, {}
        self.writes_left = Counter(top for layer in layers for top in layer.top)
        self.counter = Counter()

    def input(self, blob):
        return self.tensor[blob]

    def output(self, blob, layer):
        """The tensor name for a new version of ``blob`` written by ``layer``."""
        self.writes_left[blob] -= 1
        name = blob if self.writes_left[blob] == 0 else f"{blob}:{layer}"
        self.tensor[blob] = name
        return name

    def temp(self, layer, what):
        self.counter[layer, what] += 1
        return f"{layer}/{what}:{self.counter[layer, what]}"

    def const(self, name, array):
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        return name

    def node(self, op, inputs, outputs, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        return outputs[0]


def weight_names(layer, count):
    """Initializer names of a layer's blobs: the shared ``param { name }`` when given, so
    layers sharing parameters share one initializer."""
    names = []
    for i in range(count):
        shared = layer.param[i].name if i < len(layer.param) else ""
        names.append(shared or f"{layer.name}.blob{i}")
    return names


def with_weights(g, layer, blobs):
    return [g.const(name, blob.astype(np.float32)) for name, blob in
            zip(weight_names(layer, len(blobs)), blobs)]


def convolution(g, layer, blobs, shapes):
    p = layer.convolution_param
    if p.axis != 1:
        raise ExportError(f"layer {layer.name!r}: Convolution axis {p.axis} (only 1)")
    kernel = spatial(p.kernel_size, layer_param(p, "kernel_h"), layer_param(p, "kernel_w"),
                     None, "kernel")
    pad = spatial(p.pad, layer_param(p, "pad_h"), layer_param(p, "pad_w"), 0, "pad")
    stride = spatial(p.stride, layer_param(p, "stride_h"), layer_param(p, "stride_w"), 1,
                     "stride")
    dilation = spatial(p.dilation, None, None, 1, "dilation")
    inputs = [g.input(layer.bottom[0])] + with_weights(g, layer, blobs)
    g.node("Conv", inputs, [g.output(layer.top[0], layer.name)], kernel_shape=list(kernel),
           pads=[pad[0], pad[1], pad[0], pad[1]], strides=list(stride),
           dilations=list(dilation), group=p.group)


def caffe_pooled_size(size, kernel, pad, stride):
    """Caffe's PoolingLayer::Reshape: ceil rounding, the last window starting inside."""
    pooled = int(np.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def pooling(g, layer, blobs, shapes):
    p = layer.pooling_param
    height, width = shapes[layer.bottom[0]][2:]
    if p.global_pooling:
        kernel, pad, stride = (height, width), (0, 0), (1, 1)
    else:
        kernel = spatial([p.kernel_size] if p.HasField("kernel_size") else [],
                         layer_param(p, "kernel_h"), layer_param(p, "kernel_w"), None, "kernel")
        pad = spatial([p.pad] if p.HasField("pad") else [], layer_param(p, "pad_h"),
                      layer_param(p, "pad_w"), 0, "pad")
        stride = spatial([p.stride] if p.HasField("stride") else [],
                         layer_param(p, "stride_h"), layer_param(p, "stride_w"), 1, "stride")
    # Bottom/right padding that makes ONNX's floor rounding give Caffe's ceil size, counted
    # from the unpadded input (MAX) or from the zero-padded one (AVE, see the module docstring).
    caffe_size = [caffe_pooled_size(size, k, q, s)
                  for size, k, q, s in zip((height, width), kernel, pad, stride)]
    if p.pool == p.STOCHASTIC:
        raise ExportError(f"layer {layer.name!r}: STOCHASTIC pooling has no ONNX equivalent")
    # ONNX's input extent up to the end padding: the input plus its top/left padding (MAX),
    # or the input zero-padded on both sides, without ONNX padding in front (AVE).
    extent = [size + q * (2 if p.pool == p.AVE else 1) for size, q in zip((height, width), pad)]
    after = [max((n - 1) * s + k - e, 0)
             for n, e, k, s in zip(caffe_size, extent, kernel, stride)]
    onnx_size = [(e + a - k) // s + 1 for e, a, k, s in zip(extent, after, kernel, stride)]
    if onnx_size != caffe_size or tuple(caffe_size) != tuple(shapes[layer.top[0]][2:]):
        raise ExportError(f"layer {layer.name!r}: cannot reproduce Caffe's pooled size "
                          f"{tuple(shapes[layer.top[0]][2:])} (got {onnx_size})")
    x, top = g.input(layer.bottom[0]), g.output(layer.top[0], layer.name)
    common = dict(kernel_shape=list(kernel), strides=list(stride))
    if p.pool == p.MAX:
        g.node("MaxPool", [x], [top], pads=[pad[0], pad[1], after[0], after[1]], **common)
        return
    if any(pad):
        pads = g.const(f"{layer.name}/pads", np.array(
            [0, 0, pad[0], pad[1], 0, 0, pad[0], pad[1]], np.int64))
        x = g.node("Pad", [x, pads], [g.temp(layer.name, "padded")], mode="constant")
    g.node("AveragePool", [x], [top], pads=[0, 0, after[0], after[1]], count_include_pad=0,
           **common)


def lrn(g, layer, blobs, shapes):
    p = layer.lrn_param
    if p.norm_region != p.ACROSS_CHANNELS:
        raise ExportError(f"layer {layer.name!r}: LRN WITHIN_CHANNEL is not supported")
    g.node("LRN", [g.input(layer.bottom[0])], [g.output(layer.top[0], layer.name)],
           size=p.local_size, alpha=p.alpha, beta=p.beta, bias=p.k)


def relu(g, layer, blobs, shapes):
    slope = layer.relu_param.negative_slope
    x, top = g.input(layer.bottom[0]), g.output(layer.top[0], layer.name)
    if slope:
        g.node("LeakyRelu", [x], [top], alpha=slope)
    else:
        g.node("Relu", [x], [top])


def unary(op):
    def convert(g, layer, blobs, shapes):
        g.node(op, [g.input(layer.bottom[0])], [g.output(layer.top[0], layer.name)])
    return convert


def split(g, layer, blobs, shapes):
    x = g.input(layer.bottom[0])
    for top in layer.top:
        g.node("Identity", [x], [g.output(top, layer.name)])


def concat(g, layer, blobs, shapes):
    p = layer.concat_param
    axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
    g.node("Concat", [g.input(b) for b in layer.bottom], [g.output(layer.top[0], layer.name)],
           axis=axis)


def slice_(g, layer, blobs, shapes):
    p = layer.slice_param
    axis = p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim
    x = g.input(layer.bottom[0])
    tops = [g.output(top, layer.name) for top in layer.top]
    if not p.slice_point:
        g.node("Split", [x], tops, axis=axis, num_outputs=len(tops))
        return
    bounds = [0, *p.slice_point, np.iinfo(np.int64).max]
    axes = g.const(f"{layer.name}/axes", np.array([axis], np.int64))
    for i, top in enumerate(tops):
        starts = g.const(f"{layer.name}/start{i}", np.array([bounds[i]], np.int64))
        ends = g.const(f"{layer.name}/end{i}", np.array([bounds[i + 1]], np.int64))
        g.node("Slice", [x, starts, ends, axes], [top])


def eltwise(g, layer, blobs, shapes):
    p = layer.eltwise_param
    xs = [g.input(b) for b in layer.bottom]
    if p.operation == p.SUM and p.coeff:
        xs = [g.node("Mul", [x, g.const(f"{layer.name}/coeff{i}", np.float32(c))],
                     [g.temp(layer.name, "scaled")]) for i, (x, c) in enumerate(zip(xs, p.coeff))]
    if p.operation == p.MAX:
        g.node("Max", xs, [g.output(layer.top[0], layer.name)])
        return
    op = "Mul" if p.operation == p.PROD else "Add"
    result = xs[0]
    for i, x in enumerate(xs[1:], start=2):
        out = g.output(layer.top[0], layer.name) if i == len(xs) else g.temp(layer.name, op)
        result = g.node(op, [result, x], [out])


def inner_product(g, layer, blobs, shapes):
    p = layer.inner_product_param
    if p.axis != 1:
        raise ExportError(f"layer {layer.name!r}: InnerProduct axis {p.axis} (only 1)")
    x = g.input(layer.bottom[0])
    if len(shapes[layer.bottom[0]]) != 2:
        x = g.node("Flatten", [x], [g.temp(layer.name, "flat")], axis=1)
    weights = with_weights(g, layer, blobs)
    g.node("Gemm", [x] + weights, [g.output(layer.top[0], layer.name)],
           transB=0 if p.transpose else 1)


def l2_normalize_eps(layer):
    """The epsilon of an ``abe.net.layers.L2Normalize`` layer; ExportError for any other
    Python layer."""
    p = layer.python_param
    if (p.module, p.layer) != ("abe.net.layers", "L2Normalize"):
        raise ExportError(f"cannot export layer {layer.name!r}: Python layer "
                          f"{p.module}.{p.layer} has no ONNX equivalent")
    try:
        return float(L2Normalize.parse_param_str(p.param_str)["eps"])
    except ValueError as error:
        raise ExportError(f"layer {layer.name!r}: {error}") from None


def python(g, layer, blobs, shapes):
    eps = l2_normalize_eps(layer)
    x = g.input(layer.bottom[0])
    flat = x if len(shapes[layer.bottom[0]]) == 2 else g.node(
        "Flatten", [x], [g.temp(layer.name, "flat")], axis=1)
    axes = g.const(f"{layer.name}/axes", np.array([1], np.int64))
    squares = g.node("ReduceSumSquare", [flat, axes], [g.temp(layer.name, "sum_squares")],
                     keepdims=1)
    norm = g.node("Sqrt", [g.node("Add", [squares, g.const(f"{layer.name}/eps", np.float32(eps))],
                                  [g.temp(layer.name, "plus_eps")])], [g.temp(layer.name, "norm")])
    if flat is x:
        g.node("Div", [x, norm], [g.output(layer.top[0], layer.name)])
    else:
        unit = g.node("Div", [flat, norm], [g.temp(layer.name, "unit")])
        shape = g.node("Shape", [x], [g.temp(layer.name, "shape")])
        g.node("Reshape", [unit, shape], [g.output(layer.top[0], layer.name)])


CONVERTERS = {
    "Convolution": convolution, "Pooling": pooling, "LRN": lrn, "ReLU": relu,
    "Sigmoid": unary("Sigmoid"), "Dropout": unary("Identity"), "Split": split,
    "Concat": concat, "Slice": slice_, "Eltwise": eltwise, "InnerProduct": inner_product,
    "Python": python,
}


def phase_layers(net_param):
    """The layers of a net in Caffe's TEST phase (include/exclude rules by phase)."""
    from caffe.proto import caffe_pb2

    test = caffe_pb2.TEST
    kept = []
    for layer in net_param.layer:
        for rule in list(layer.include) + list(layer.exclude):
            if rule.stage or rule.not_stage or rule.HasField("min_level") \
                    or rule.HasField("max_level"):
                raise ExportError(f"layer {layer.name!r}: include/exclude by stage or level "
                                  f"is not supported")
        included = not layer.include or any(not r.HasField("phase") or r.phase == test
                                            for r in layer.include)
        excluded = any(not r.HasField("phase") or r.phase == test for r in layer.exclude)
        if included and not excluded:
            kept.append(layer)
    return kept


def check_exportable(net_param):
    """Raise ExportError (one line naming the layer) for anything the export cannot carry;
    returns the TEST-phase layers. Called before Caffe reads the net, after
    ``abe.net.checks.check_prototxt`` (which refuses what Caffe itself would abort on)."""
    layers = phase_layers(net_param)
    for layer in layers:
        if layer.type != "Input" and layer.type not in CONVERTERS:
            raise ExportError(f"cannot export layer {layer.name!r} of type {layer.type!r} to "
                              f"ONNX (supported: Input, {', '.join(sorted(CONVERTERS))})")
        if layer.type == "Python":
            l2_normalize_eps(layer)
    return layers


def input_shapes(net_param, layers):
    """{input blob: shape} from Input layers or the legacy ``input``/``input_shape`` fields."""
    shapes = {}
    for layer in layers:
        if layer.type == "Input":
            specs = list(layer.input_param.shape)
            for i, top in enumerate(layer.top):
                shapes[top] = tuple(specs[min(i, len(specs) - 1)].dim)
    for i, name in enumerate(net_param.input):
        if net_param.input_shape:
            shapes[name] = tuple(net_param.input_shape[i].dim)
        else:
            shapes[name] = tuple(net_param.input_dim[4 * i:4 * i + 4])
    return shapes


def to_onnx(net_param, params, shapes, outputs):
    """The ONNX model of ``net_param``.

    ``params``: {layer name: [numpy blobs]} (Caffe's, after loading the weights);
    ``shapes``: {blob: shape} of the loaded Caffe net (fixes ranks and pooling geometry);
    ``outputs``: the blobs to expose as graph outputs, in order.
    """
    layers = check_exportable(net_param)
    g = Graph(layers)
    inputs = []
    for blob in net_param.input:
        g.writes_left[blob] += 1  # legacy inputs: written by no layer
    for blob, shape in input_shapes(net_param, layers).items():
        g.tensor[blob] = g.output(blob, "input")
        inputs.append(helper.make_tensor_value_info(blob, TensorProto.FLOAT,
                                                    [BATCH, *shape[1:]]))
    for layer in layers:
        if layer.type != "Input":
            CONVERTERS[layer.type](g, layer, params.get(layer.name, []), shapes)
    graph_outputs = [helper.make_tensor_value_info(g.tensor[blob], TensorProto.FLOAT,
                                                   [BATCH, *shapes[blob][1:]])
                     for blob in outputs]
    graph = helper.make_graph(g.nodes, net_param.name or "caffe_net", inputs, graph_outputs,
                              initializer=list(g.initializers.values()))
    opset = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opset, producer_name="abe-caffe",
                              doc_string=f"{net_param.name}: exported from Caffe by "
                                         f"abe.export (parity checked against Caffe)")
    model.ir_version = helper.find_min_ir_version_for(opset)
    onnx.checker.check_model(model, full_check=True)
    return model
