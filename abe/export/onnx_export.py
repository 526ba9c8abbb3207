"""Export a trained Caffe deploy net to ONNX, and prove it: the file is written only when
onnxruntime reproduces Caffe's outputs on real test images.

The ONNX model takes what the Caffe net takes (``data``: mean-subtracted BGR, N x 3 x H x W,
N free) and gives the net's outputs (``embedding``) and each ``learner{m}/embedding``.
"""
import os
from pathlib import Path

import numpy as np
from abe.errors import UserError
from abe.eval import embeddings
from abe.export.convert import ExportError, check_exportable, to_onnx
from abe.net import checks
from abe.net.model_stats import caffe_net, with_batch

TOLERANCE = 1e-4  # largest absolute difference allowed on any output value
DEFAULT_IMAGES = 8


def load_caffe(deploy, net_param, weights, batch):
    """The deploy net at ``batch`` images with the trained weights, checked first."""
    net = caffe_net(with_batch(net_param, batch))
    checks.load_weights(net, weights, deploy)
    return net


def parity_images(net, count, test_lmdb=None):
    """``count`` real test images at the net's input size: the first ones of ``test_lmdb``
    (centre crops, as evaluation sees them), else the demo's digits."""
    from abe.data import digits
    from abe.data.pair_layer import iter_test_batches

    height, width = net.blobs["data"].data.shape[2:]
    if height != width:
        raise ExportError(f"the parity check needs a square input, the net takes {height}x{width}")
    if test_lmdb is None:
        return digits.network_inputs(count, height)[0], "scikit-learn digits (test split)"
    if not Path(test_lmdb).is_dir():
        raise UserError(f"{test_lmdb} is not an LMDB folder")
    try:
        images, _ = next(iter_test_batches(test_lmdb, count, crop=height))
    except StopIteration:
        raise UserError(f"{test_lmdb} holds no images") from None
    except ValueError as error:
        raise UserError(str(error)) from None
    return images, str(test_lmdb)


def output_blobs(net):
    """The net's outputs (``embedding``), then each learner's embedding blob."""
    outputs = list(net.outputs)
    return outputs + [b for b in embeddings.learner_blobs(net) if b not in outputs]


def caffe_outputs(net, images, blobs):
    embeddings.forward(net, images)
    return {blob: net.blobs[blob].data.copy() for blob in blobs}


def onnx_outputs(path, images, blobs):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(blobs, session.run(blobs, {"data": images})))


def largest_differences(expected, got):
    """{output: largest absolute difference}; inf when shapes differ or values are not finite."""
    differences = {}
    for blob, want in expected.items():
        have = got[blob]
        ok = have.shape == want.shape and np.isfinite(have).all()
        differences[blob] = float(np.max(np.abs(have - want))) if ok else float("inf")
    return differences


def export(deploy, weights, out, test_lmdb=None, images=DEFAULT_IMAGES, force=False,
           tolerance=TOLERANCE, log=print):
    """Write ``out`` (ONNX) from ``deploy`` + ``weights`` when onnxruntime matches Caffe on
    ``images`` real test images to below ``tolerance`` on every output; returns
    {"differences": {output: largest |difference|}, "images": n, "source": ...}.
    Otherwise raises ExportError and leaves no file behind."""
    import onnx

    deploy, weights, out = Path(deploy), Path(weights), Path(out)
    if images < 1:
        raise UserError(f"the parity check needs at least one image, got {images}")
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to replace it")
    # Before Caffe reads the net: its aborts are not one line.
    net_param = checks.check_prototxt(deploy)
    check_exportable(net_param)
    net = load_caffe(deploy, net_param, weights, images)
    inputs, source = parity_images(net, images, test_lmdb)
    blobs = output_blobs(net)
    expected = caffe_outputs(net, inputs, blobs)
    for blob, values in expected.items():
        if not np.isfinite(values).all():
            raise UserError(f"Caffe's output {blob!r} is not finite with {weights}")
    params = {layer: [b.data.copy() for b in blobs_] for layer, blobs_ in net.params.items()}
    shapes = {blob: tuple(b.data.shape) for blob, b in net.blobs.items()}
    model = to_onnx(net_param, params, shapes, blobs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        onnx.save_model(model, tmp)
        # The file itself is checked, at a batch size other than the prototxt's.
        differences = largest_differences(expected, onnx_outputs(tmp, inputs, blobs))
        for blob, difference in differences.items():
            log(f"{blob}: largest |onnxruntime - caffe| = {difference:.3g}")
        worst = max(differences.values())
        if not worst < tolerance:
            raise ExportError(f"onnxruntime differs from Caffe by {worst:.3g} (limit "
                              f"{tolerance:g}) on {source}; nothing written")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"differences": differences, "images": len(inputs), "source": source,
            "tolerance": tolerance}
