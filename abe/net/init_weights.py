"""Initializing a generated net from ImageNet-pretrained ``bvlc_googlenet.caffemodel``.

Layers with a BVLC name are copied by name. Renamed copies of a BVLC block (the attention
trunk ``attention/inception_4a/...``, the M-heads towers ``learner{m}/inception_4a/...``) get
the pretrained block with the name after the prefix. The layers GoogLeNet does not have (the
attention 1x1 convolutions, the embedding FC: ``NEW_LAYER``) keep their filler's initialization:
xavier, as the generator writes it. Any shape disagreement, and any other layer missing from
the pretrained file (a truncated or different model), is an error: a silently skipped layer
would train from noise.
"""
import json
import os
import re
import tempfile
from dataclasses import dataclass

import numpy as np

from caffe.proto import caffe_pb2
from google.protobuf import text_format

from abe.errors import UserError
from abe.net.checks import blob_shape, check_prototxt, same_shape

COPY_PREFIX = re.compile(r"^(attention|learner\d+)/(.+)$")
NEW_LAYER = re.compile(r"(^|/)embed_fc$|^learner\d+/attention(_conv)?$")  # not in GoogLeNet


class InitError(UserError, ValueError):
    """The pretrained weights do not fit the net; the message is one line for users."""


@dataclass(frozen=True)
class LayerInit:
    layer: str
    source: str  # pretrained layer name, or "" when initialized fresh by its filler
    filler: str  # the weight filler of a fresh layer
    count: int   # parameters in the layer's blobs


def read_pretrained(path):
    """{layer name: [(shape, flat values)]} from a .caffemodel (protobuf; V1 or current)."""
    net = caffe_pb2.NetParameter()
    with open(path, "rb") as f:
        try:
            net.ParseFromString(f.read())
        except Exception:  # protobuf raises DecodeError or RuntimeError, depending on backend
            raise InitError(f"{path} is not a Caffe .caffemodel (NetParameter)") from None
    layers = {}
    for layer in list(net.layer) + list(net.layers):
        if layer.blobs:
            layers[layer.name] = [(blob_shape(b), b.data) for b in layer.blobs]
    if not layers:
        raise InitError(f"{path} holds no layer with weights")
    return layers


def source_layer(name, pretrained):
    if name in pretrained:
        return name
    match = COPY_PREFIX.match(name)
    if match and match.group(2) in pretrained:
        return match.group(2)
    return ""


def weights_only(net_param):
    """The net with its Python data layer replaced by one-pair Input blobs of the same crop:
    the same parameters, buildable without the training LMDB."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    for layer in net.layer:
        if layer.type == "Python" and not layer.bottom:
            crop = json.loads(layer.python_param.param_str or "{}").get("crop", 224)
            tops = list(layer.top)
            layer.Clear()
            layer.name, layer.type = tops[0], "Input"
            layer.top.extend(tops)
            for dims in [[2, 3, crop, crop], [2], [1]][:len(tops)]:
                layer.input_param.shape.add().dim.extend(dims)
    return net


def weights_net(net_path, scratch_dir):
    """(caffe.Net, NetParameter) of the net in ``net_path`` built by ``weights_only``: its
    learnable blobs at their shapes, without the training LMDB."""
    import caffe

    net_param = check_prototxt(net_path)
    fd, tmp = tempfile.mkstemp(suffix=".prototxt", dir=scratch_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text_format.MessageToString(weights_only(net_param)))
        return caffe.Net(tmp, caffe.TRAIN), net_param
    finally:
        os.unlink(tmp)


def initialize(net_path, pretrained_path, out_path):
    """Writes ``out_path`` (.caffemodel) for the net in ``net_path``; returns [LayerInit]."""
    pretrained = read_pretrained(pretrained_path)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    net, net_param = weights_net(net_path, out_dir)
    fillers = {layer.name: layer_filler(layer) for layer in net_param.layer}
    report = []
    for name, blobs in net.params.items():
        source = source_layer(name, pretrained)
        count = sum(b.count for b in blobs)
        if source:
            copy_layer(name, blobs, source, pretrained[source], pretrained_path)
        elif not NEW_LAYER.search(name):
            raise InitError(f"{pretrained_path} has no weights for layer '{name}' (truncated, "
                            "or not bvlc_googlenet.caffemodel)")
        report.append(LayerInit(name, source, "" if source else fillers[name], count))
    fd, tmp = tempfile.mkstemp(suffix=".caffemodel.part", dir=out_dir)
    os.close(fd)
    try:
        net.save(tmp)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return report


def layer_filler(layer):
    for field in ("convolution_param", "inner_product_param"):
        if layer.HasField(field):
            return getattr(layer, field).weight_filler.type
    return "default"


def copy_layer(name, blobs, source, source_blobs, pretrained_path):
    if len(blobs) != len(source_blobs):
        raise InitError(f"{name} has {len(blobs)} blobs but {source} in {pretrained_path} "
                        f"has {len(source_blobs)}")
    for i, (shape, values) in enumerate(source_blobs):
        target = blobs[i].data.shape
        if not same_shape(shape, target):
            raise InitError(f"shape mismatch: {name} blob {i} is {target} but {source} in "
                            f"{pretrained_path} is {shape}")
        blobs[i].data[...] = np.asarray(values, dtype=np.float32).reshape(target)
