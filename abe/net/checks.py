"""Checks run before Caffe sees a net or its weights.

Caffe aborts the whole process (a glog CHECK) on a prototxt it cannot parse, a layer type it
does not know, a bottom nobody produces, or weights of the wrong shapes; it silently keeps the
filler's values for a layer missing from a .caffemodel (``copy_from`` skips it). A Python
layer whose ``param_str`` is wrong fails deep inside Caffe, naming neither layer nor file.
These checks say the same things first, as one-line ``UserError``s naming the file and layer,
so that evaluation, training and export refuse what they cannot stand behind.
"""
import importlib
from pathlib import Path

from caffe.proto import caffe_pb2
from google.protobuf import message, text_format

from abe.errors import UserError


def read_prototxt(path):
    """The NetParameter in the text file ``path``; a file that is not one is a UserError."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text prototxt (binary data)") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    net = caffe_pb2.NetParameter()
    try:
        text_format.Merge(text, net)
    except text_format.ParseError as error:
        raise UserError(f"{path} is not a Caffe net prototxt: {str(error).splitlines()[0]}") \
            from None
    if net.layers:
        raise UserError(f"{path} uses Caffe's old V1 'layers' format; upgrade it with Caffe's "
                        "upgrade_net_proto_text")
    if not net.layer:
        raise UserError(f"{path} holds no layers (not a net prototxt?)")
    return net


def check_prototxt(path):
    """Parse ``path`` and check what would make Caffe abort or a Python layer fail in setup.

    Checked: the text parses as a NetParameter; every layer type is registered in this Caffe;
    every bottom is the top of an earlier layer (or a net input); every Python layer's module
    imports and has its class; an ``abe.*`` layer's ``param_str`` passes the parser the layer
    itself uses (``parse_param_str``). Returns the NetParameter.
    """
    import caffe

    net = read_prototxt(path)
    types = set(caffe.layer_type_list())
    available = set(net.input)
    for layer in net.layer:
        where = f"{path}: layer '{layer.name}'"
        if layer.type not in types:
            raise UserError(f"{where} has unknown type '{layer.type}'")
        for bottom in layer.bottom:
            if bottom not in available:
                raise UserError(f"{where} reads bottom '{bottom}', which no earlier layer "
                                "produces")
        if layer.type == "Python":
            check_python_layer(layer, where)
        available.update(layer.top)
    return net


def check_python_layer(layer, where):
    """The module and class of a Python layer exist; an abe layer's param_str is valid."""
    module_name, class_name = layer.python_param.module, layer.python_param.layer
    if not module_name or not class_name:
        raise UserError(f"{where}: python_param needs both module and layer")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"{where}: cannot import Python module '{module_name}' ({error})") \
            from None
    layer_class = getattr(module, class_name, None)
    if layer_class is None:
        raise UserError(f"{where}: module '{module_name}' has no layer '{class_name}'")
    parse = getattr(layer_class, "parse_param_str", None)
    if parse is not None:
        try:
            parse(layer.python_param.param_str)
        except ValueError as error:
            raise UserError(f"{where}: {error}") from None


def read_caffemodel(path):
    """{layer name: [blob shape]} of the weights in a .caffemodel (binary NetParameter)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    if not data:
        raise UserError(f"{path} is empty (0 bytes), not a trained .caffemodel")
    weights = caffe_pb2.NetParameter()
    try:
        weights.ParseFromString(data)
    except (message.DecodeError, RuntimeError, ValueError):
        raise UserError(f"{path} is not a readable .caffemodel (truncated, damaged, or not a "
                        "Caffe NetParameter)") from None
    shapes = {layer.name: [blob_shape(blob) for blob in layer.blobs]
              for layer in list(weights.layers) + list(weights.layer)}
    if not any(shapes.values()):
        raise UserError(f"{path} holds no weights (not a trained .caffemodel)")
    return shapes


def blob_shape(blob):
    if blob.HasField("shape"):
        return tuple(blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)  # legacy 4-D BlobProto


def same_shape(stored, target):
    """Caffe's rule: equal shapes, or a legacy 4-D shape that pads ``target`` with 1s in front."""
    stored, target = tuple(stored), tuple(target)
    return stored == target or (len(stored) == 4 and len(target) <= 4
                                and stored == (1,) * (4 - len(target)) + target)


def check_weights(net, weights_path, net_path):
    """Refuse a .caffemodel that does not fully fit the built ``caffe.Net`` (from ``net_path``).

    Every layer with learnable blobs must be in the file with the same number of blobs and the
    same shapes (a layer whose blobs are all shared with an earlier layer may be absent: its
    owner brings them); a layer of the file that the net also has must not disagree either,
    since Caffe aborts on that. The first problem is reported. Call before ``net.copy_from``.
    """
    stored = read_caffemodel(weights_path)
    owned = set()
    for index, name in enumerate(net._layer_names):
        blobs = net.layers[index].blobs
        addresses = [blob.data.__array_interface__["data"][0] for blob in blobs]
        shared = bool(blobs) and all(address in owned for address in addresses)
        owned.update(addresses)
        if name not in stored:
            if blobs and not shared:
                have = sum(1 for shapes in stored.values() if shapes)
                raise UserError(f"{weights_path} lacks layer '{name}' of {net_path} (it holds "
                                f"weights of {have} layers): not a trained model of this net")
            continue
        want = [tuple(blob.data.shape) for blob in blobs]
        got = stored[name]
        if len(got) != len(want) or not all(map(same_shape, got, want)):
            raise UserError(f"{weights_path}: layer '{name}' has blobs of shapes {got}, but "
                            f"{net_path} needs {want}")


def load_weights(net, weights_path, net_path):
    """``check_weights``, then Caffe's ``copy_from``: every learnable layer gets its weights."""
    check_weights(net, weights_path, net_path)
    net.copy_from(str(weights_path))


def checked_net(net_path, weights_path=None, phase="TEST"):
    """A ``caffe.Net`` from ``net_path`` (and ``weights_path``), each checked before Caffe sees it."""
    import caffe

    check_prototxt(net_path)
    net = caffe.Net(str(net_path), getattr(caffe, phase))
    if weights_path is not None:
        load_weights(net, weights_path, net_path)
    return net
