"""Size and cost of a deploy net, counted the way the paper's Table 1 counts them.

Parameters: every learnable blob once, however many layers share it (ABE's G serves all M
learners but is stored once). Cost: multiply-accumulates per input image of the convolution and
inner-product layers, so G counts M times in ABE-M (it runs once per learner, whether as M
towers or once on the M masked maps stacked on the batch axis).
"""
import os
import tempfile
from dataclasses import dataclass

from caffe.proto import caffe_pb2
from google.protobuf import text_format

from abe.net.checks import read_prototxt as read_net

COUNTED = ("Convolution", "InnerProduct")


@dataclass(frozen=True)
class ModelStats:
    params: int
    macs: int  # per image, convolution + inner product


def with_batch(net, batch=1):
    """The same net with every Input blob's batch set to ``batch`` (1: counts per image)."""
    net = caffe_pb2.NetParameter.FromString(net.SerializeToString())
    for layer in net.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    for shape in net.input_shape:  # the legacy input fields
        shape.dim[0] = batch
    for i in range(0, len(net.input_dim), 4):
        net.input_dim[i] = batch
    return net


def caffe_net(net_param, phase="TEST"):
    """A real ``caffe.Net`` built from a NetParameter (pycaffe reads nets only from files)."""
    import caffe

    fd, tmp = tempfile.mkstemp(suffix=".prototxt")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text_format.MessageToString(net_param))
        return caffe.Net(tmp, getattr(caffe, phase))
    finally:
        os.unlink(tmp)


def model_stats(deploy_path):
    """Counts from a real Caffe net built (not run) from ``deploy_path`` at batch 1."""
    net = caffe_net(with_batch(read_net(deploy_path)))
    layer_types = {name: layer.type for name, layer in zip(net._layer_names, net.layers)}
    seen, params, macs = set(), 0, 0
    for name, blobs in net.params.items():
        for blob in blobs:
            address = blob.data.__array_interface__["data"][0]
            if address not in seen:
                seen.add(address)
                params += blob.count
        if layer_types[name] in COUNTED:
            # Each output value costs (weights per output channel) MACs, for any batch layout.
            top = net.blobs[net.top_names[name][0]]
            weights = blobs[0]
            macs += weights.count // weights.shape[0] * top.count
    return ModelStats(params=params, macs=macs)
