"""ONNX export: onnxruntime against real Caffe nets, on the generated configurations and on a
net built to hit Caffe's edge semantics (ceil pooling with padding, LRN with k and alpha,
every Eltwise operation, Slice, Split, InnerProduct on 4-D input, L2Normalize)."""
import json

import numpy as np
import onnx
import pytest
from caffe import NetSpec
from caffe import layers as L
from caffe import params as P
from google.protobuf import text_format

from abe.data import digits
from abe.errors import UserError
from abe.export import onnx_export
from abe.export.convert import ExportError, caffe_pooled_size
from abe.net import netgen
from abe.net.model_stats import caffe_net, read_net, with_batch
from conftest import REPO
from hostile import assert_one_line_error, run_entry, tree_digest


def save_weights(caffe, deploy, path, seed=0, noise=0.0):
    """Weights of ``deploy`` from its fillers, each blob moved by Gaussian noise of ``noise``
    times its spread (so biases are not constants and no value is left at its init)."""
    net = caffe_net(with_batch(read_net(deploy), 1))
    rng = np.random.default_rng(seed)
    for blobs in net.params.values():
        for blob in blobs:
            spread = float(blob.data.std()) or 0.05
            blob.data[...] += rng.normal(0.0, noise * spread, blob.data.shape)
    net.save(str(path))
    return path


def generated(tmp_path, **config):
    out = tmp_path / "net"
    netgen.write_config(out, netgen.NetConfig(batch=2, **config), netgen.SolverConfig())
    return out / "deploy.prototxt"


def caffe_and_onnx(caffe, deploy, weights, model, images):
    net = caffe_net(with_batch(read_net(deploy), len(images)))
    net.copy_from(str(weights))
    blobs = onnx_export.output_blobs(net)
    return (onnx_export.caffe_outputs(net, images, blobs),
            onnx_export.onnx_outputs(model, images, blobs))


@pytest.mark.parametrize("config", [
    dict(M=2, embed_dim=32, crop=32),  # the demo's ABE-2^32
    dict(arch="heads", M=2, embed_dim=32, crop=32),
    dict(M=2, embed_dim=32, crop=32, sigmoid=False),
    dict(M=3, embed_dim=48, crop=64, att_depth=2, branch="inception_4a"),
    dict(M=2, embed_dim=32, crop=32, g_sharing="towers"),
], ids=["abe2-demo", "heads2", "no-sigmoid", "att-depth2-branch-4a", "towers"])
def test_generated_nets_match_caffe(caffe, tmp_path, config):
    deploy = generated(tmp_path, **config)
    weights = save_weights(caffe, deploy, tmp_path / "w.caffemodel", noise=0.5)
    out = tmp_path / "model.onnx"
    lines = []
    report = onnx_export.export(deploy, weights, out, images=4, log=lines.append)
    M = config["M"]
    expected = ["embedding"] + [f"learner{m}/embedding" for m in range(M)]
    assert list(report["differences"]) == expected
    assert max(report["differences"].values()) < 1e-4 and len(lines) == M + 1
    model = onnx.load(out)
    assert [o.name for o in model.graph.output] == expected
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "net", "w.caffemodel"]
    # Another batch size than the check's, other images: still Caffe's numbers.
    images = digits.network_inputs(7, config["crop"])[0][4:]
    want, got = caffe_and_onnx(caffe, deploy, weights, out, images)
    for blob in expected:
        assert got[blob].shape == want[blob].shape == (3, config["embed_dim"] // (
            1 if blob == "embedding" else M))
        np.testing.assert_allclose(got[blob], want[blob], atol=1e-4, rtol=0)
    # The embeddings are not degenerate: different images, different embeddings.
    assert np.abs(want["embedding"][0] - want["embedding"][1]).max() > 1e-3


def test_abe8_512_at_224_from_the_command_line(caffe, tmp_path):
    deploy = REPO / "prototxt" / "abe8_512" / "deploy.prototxt"
    weights = save_weights(caffe, deploy, tmp_path / "random.caffemodel")
    out = tmp_path / "m.onnx"
    proc = run_entry(["tools/export_onnx.py", "--deploy", deploy, "--weights", weights,
                      "--out", out, "--images", 1])
    assert proc.returncode == 0, proc.stderr
    figures = {line.split(":")[0]: float(line.rsplit("=", 1)[1])
               for line in proc.stdout.splitlines() if "largest |" in line}
    assert list(figures) == ["embedding"] + [f"learner{m}/embedding" for m in range(8)]
    assert max(figures.values()) < 1e-4
    assert "largest difference" in proc.stdout.splitlines()[-1]
    assert onnx.load(out).graph.output[0].type.tensor_type.shape.dim[1].dim_value == 512


def edge_net(path):
    """A net that hits the edges where ONNX's defaults differ from Caffe's."""
    s = NetSpec()
    s.data = L.Input(shape=dict(dim=[1, 3, 10, 10]))
    s.conv = L.Convolution(s.data, num_output=4, kernel_size=3, pad=1,
                           weight_filler=dict(type="gaussian", std=0.3),
                           bias_filler=dict(type="gaussian", std=0.5))
    s.leaky = L.ReLU(s.conv, negative_slope=0.1, in_place=True)
    s.lrn = L.LRN(s.conv, local_size=3, alpha=0.5, beta=0.6, k=2.0)
    # 10 -> 6 (Caffe's ceil): the last window reaches past the padding.
    s.max_pad = L.Pooling(s.lrn, pool=P.Pooling.MAX, kernel_size=3, stride=2, pad=1)
    s.ave_pad = L.Pooling(s.lrn, pool=P.Pooling.AVE, kernel_size=3, stride=2, pad=1)
    s.ave = L.Pooling(s.lrn, pool=P.Pooling.AVE, kernel_size=2, stride=2)
    s.ave_ceil = L.Pooling(s.ave_pad, pool=P.Pooling.AVE, kernel_size=3, stride=2)  # 6 -> 3
    s.ave_drop = L.Pooling(s.lrn, pool=P.Pooling.AVE, kernel_size=2, stride=3, pad=1)
    s.sum = L.Eltwise(s.max_pad, s.ave_pad, operation=P.Eltwise.SUM, coeff=[0.5, -2.0])
    s.max = L.Eltwise(s.sum, s.max_pad, operation=P.Eltwise.MAX)
    s.prod = L.Eltwise(s.max, s.ave_pad, s.sum, operation=P.Eltwise.PROD)
    s.a, s.b, s.c = L.Slice(s.prod, slice_point=[1, 3], axis=1, ntop=3)
    s.left, s.right = L.Split(s.b, ntop=2)
    s.mixed = L.Concat(s.c, s.left, s.a, s.right, axis=1)
    s.dropped = L.Dropout(s.mixed, dropout_ratio=0.5)
    s.gate = L.Sigmoid(s.dropped)
    s.fc = L.InnerProduct(s.gate, num_output=5, weight_filler=dict(type="gaussian", std=0.5),
                          bias_filler=dict(type="gaussian", std=0.5))
    s.fc_ave = L.InnerProduct(s.ave, num_output=5, weight_filler=dict(type="gaussian", std=0.5))
    s.fc_ceil = L.InnerProduct(s.ave_ceil, num_output=5,
                               weight_filler=dict(type="gaussian", std=0.5))
    s.fc_drop = L.InnerProduct(s.ave_drop, num_output=5,
                               weight_filler=dict(type="gaussian", std=0.5))
    s.features = L.Concat(s.fc, s.fc_ave, s.fc_ceil, s.fc_drop, axis=1)
    s.embedding = L.Python(s.features, module="abe.net.layers", layer="L2Normalize",
                           param_str=json.dumps({"eps": 0.5}))
    path.write_text(text_format.MessageToString(s.to_proto()))
    return path


def test_caffe_edge_semantics_match(caffe, tmp_path):
    assert [caffe_pooled_size(10, 3, 1, 2), caffe_pooled_size(6, 3, 0, 2),
            caffe_pooled_size(10, 2, 1, 3)] == [6, 3, 4]
    deploy = edge_net(tmp_path / "edge.prototxt")
    weights = save_weights(caffe, deploy, tmp_path / "edge.caffemodel")
    report = onnx_export.export(deploy, weights, tmp_path / "edge.onnx", images=8,
                                log=lambda line: None)
    assert list(report["differences"]) == ["embedding"]
    assert report["differences"]["embedding"] < 1e-5
    # The exported graph is right by the ONNX specification too, not only in onnxruntime:
    # shape inference gives Caffe's sizes, also where ONNX's ceil_mode would not (10 -> 4 with
    # kernel 2, stride 3, pad 1: Caffe drops the window that starts in the padding).
    inferred = onnx.shape_inference.infer_shapes(onnx.load(tmp_path / "edge.onnx"))
    sizes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][2:]
             for v in inferred.graph.value_info}
    assert sizes["max_pad"] == sizes["ave_pad"] == [6, 6]
    assert sizes["ave_ceil"] == [3, 3] and sizes["ave_drop"] == [4, 4]
    naive = onnx.helper.make_graph(
        [onnx.helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[3, 3],
                               pads=[1, 1, 1, 1], ceil_mode=1)], "ceil_mode",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 10, 10])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    naive = onnx.shape_inference.infer_shapes(onnx.helper.make_model(
        naive, opset_imports=[onnx.helper.make_opsetid("", 18)]))
    assert [d.dim_value for d in naive.graph.output[0].type.tensor_type.shape.dim] == [1, 1, 5, 5]


def test_unsupported_layer_is_refused_in_one_line(caffe, tmp_path):
    deploy = generated(tmp_path, M=2, embed_dim=32, crop=32)
    weights = save_weights(caffe, deploy, tmp_path / "w.caffemodel")
    net = read_net(deploy)
    softmax = net.layer.add(name="probabilities", type="Softmax")
    softmax.bottom.append("embedding")
    softmax.top.append("probabilities")
    deploy.write_text(text_format.MessageToString(net))
    before = tree_digest(tmp_path)
    proc = run_entry(["tools/export_onnx.py", "--deploy", deploy, "--weights", weights,
                      "--out", tmp_path / "m.onnx"])
    assert_one_line_error(proc, 2, "'probabilities'", "'Softmax'")
    assert tree_digest(tmp_path) == before


def test_weights_that_do_not_fit_are_one_line_not_a_caffe_abort(caffe, tmp_path):
    weights = save_weights(caffe, generated(tmp_path, M=2, embed_dim=32, crop=32),
                           tmp_path / "w.caffemodel")
    wider = generated(tmp_path / "wider", M=2, embed_dim=64, crop=32)
    before = tree_digest(tmp_path)
    proc = run_entry(["tools/export_onnx.py", "--deploy", wider, "--weights", weights,
                      "--out", tmp_path / "m.onnx"])
    assert_one_line_error(proc, 2, "'embed_fc'", "(32, 1024)", "(16, 1024)")
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("case", ["exists", "missing-weights", "foreign-python-layer",
                                  "not-a-prototxt", "no-images", "dangling-bottom"])
def test_bad_input_raises_a_user_error_and_writes_nothing(caffe, tmp_path, case):
    deploy = generated(tmp_path, M=2, embed_dim=32, crop=32)
    weights = save_weights(caffe, deploy, tmp_path / "w.caffemodel")
    out, images = tmp_path / "m.onnx", 2
    expect = {"exists": "--force", "missing-weights": "cannot read .*nope.caffemodel",
              "foreign-python-layer": "cannot import Python module 'my.module'",
              "not-a-prototxt": "not a Caffe net prototxt",
              "no-images": "at least one image", "dangling-bottom": "'ghost'"}[case]
    if case == "exists":
        out.write_text("keep me")
    elif case == "missing-weights":
        weights = tmp_path / "nope.caffemodel"
    elif case == "foreign-python-layer":
        deploy.write_text(deploy.read_text().replace('layer: "L2Normalize"', 'layer: "Layer"')
                          .replace('module: "abe.net.layers"', 'module: "my.module"'))
    elif case == "not-a-prototxt":
        deploy.write_text("layer { name: ")
    elif case == "dangling-bottom":  # Caffe would abort on it
        deploy.write_text(deploy.read_text() + 'layer { name: "r" type: "ReLU" bottom: "ghost" '
                                               'top: "r" }\n')
    else:
        images = 0
    before = tree_digest(tmp_path)
    with pytest.raises(UserError, match=expect) as raised:
        onnx_export.export(deploy, weights, out, images=images, log=lambda line: None)
    assert "\n" not in str(raised.value)
    assert tree_digest(tmp_path) == before


def test_no_file_unless_parity_holds(caffe, tmp_path):
    deploy = generated(tmp_path, M=2, embed_dim=32, crop=32)
    weights = save_weights(caffe, deploy, tmp_path / "w.caffemodel")
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="nothing written"):
        onnx_export.export(deploy, weights, out, images=2, tolerance=0.0, log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net", "w.caffemodel"]
