"""abe.net.layers through real Caffe nets: values, finite-difference gradients, propagate_down."""
import json
import re

import numpy as np
import pytest
from google.protobuf import text_format

STEP = 1e-3  # float32 nets: central differences with this step are good to ~1e-4


def python_net(caffe, tmp_path, shapes, layer, param=None, loss_weight=None, propagate_down=None):
    """A net of Input blobs x0..x{k-1} feeding one abe.net.layers layer with top ``y``.

    With ``propagate_down`` each input first passes a learnable Scale (top s{i}, scale 1), so
    the layer's bottoms need backward without ``force_backward``, which would override it."""
    from caffe import layers as L

    n = caffe.NetSpec()
    inputs = L.Input(shape=[dict(dim=list(s)) for s in shapes], ntop=len(shapes))
    inputs = inputs if len(shapes) > 1 else [inputs]
    for i, top in enumerate(inputs):
        n[f"x{i}"] = top
    extra = {} if loss_weight is None else {"loss_weight": loss_weight}
    if propagate_down is not None:
        extra["propagate_down"] = propagate_down
        for i, top in enumerate(inputs):
            n[f"s{i}"] = L.Scale(top, bias_term=False)
        inputs = [n[f"s{i}"] for i in range(len(shapes))]
    n.y = L.Python(*inputs, module="abe.net.layers", layer=layer,
                   param_str=json.dumps(param or {}), **extra)
    proto = n.to_proto()
    proto.force_backward = propagate_down is None
    path = tmp_path / f"{layer}.prototxt"
    path.write_text(text_format.MessageToString(proto))
    return caffe.Net(str(path), caffe.TRAIN)


def numeric_gradient(net, objective, blob):
    """d objective / d net.blobs[blob] by central differences, re-running the real net."""
    x = net.blobs[blob].data
    grad = np.zeros(x.shape)
    for index in np.ndindex(*x.shape):
        saved = x[index]
        values = []
        for sign in (1, -1):
            x[index] = saved + sign * STEP
            net.forward()
            values.append(objective(net))
        x[index] = saved
        grad[index] = (values[0] - values[1]) / (2 * STEP)
    net.forward()
    return grad


@pytest.mark.parametrize("shape", [(4, 6), (3, 5, 1, 1)])
def test_l2normalize_rows_and_gradient(caffe, tmp_path, shape):
    rng = np.random.default_rng(0)
    net = python_net(caffe, tmp_path, [shape], "L2Normalize")
    x = rng.normal(size=shape).astype(np.float32)
    net.blobs["x0"].data[...] = x
    net.forward()
    y = net.blobs["y"].data.reshape(shape[0], -1)
    flat = x.reshape(shape[0], -1)
    assert np.allclose(np.linalg.norm(y, axis=1), 1, atol=1e-6)
    assert np.allclose(y * np.linalg.norm(flat, axis=1, keepdims=True), flat, atol=1e-5)

    weights = rng.normal(size=shape).astype(np.float32)  # objective: sum(weights * y)
    net.backward(y=weights)
    analytic = net.blobs["x0"].diff.copy()
    numeric = numeric_gradient(net, lambda n: float(np.sum(weights * n.blobs["y"].data)), "x0")
    assert np.allclose(analytic, numeric, atol=2e-3, rtol=1e-2)


def embeddings_with_mixed_hinges(rng, M, N, D, margin):
    """Unit embeddings of N images by M learners where some learner pairs are closer than the
    margin (active hinge) and some farther, none within finite-difference reach of the kink."""
    while True:
        e = rng.normal(size=(M, N, D))
        e /= np.linalg.norm(e, axis=2, keepdims=True)
        d2 = np.array([np.sum((e[p] - e[q]) ** 2, axis=1)
                       for p in range(M) for q in range(p + 1, M)])
        gap = margin - d2
        if (gap > 0).sum() >= 3 and (gap < 0).sum() >= 3 and np.abs(gap).min() > 0.05:
            return e.astype(np.float32)


def divergence_reference(e, margin):
    """The spec's formula as loops: (1/N) sum_i sum_{p<q} [margin - ||e_p,i - e_q,i||^2]_+."""
    M, N, _ = e.shape
    total = 0.0
    for i in range(N):
        for p in range(M):
            for q in range(p + 1, M):
                total += max(0.0, margin - float(np.sum((e[p, i] - e[q, i]) ** 2)))
    return total / N


@pytest.mark.parametrize("margin,loss_weight", [(1.0, 1.0), (1.5, 0.5)])
def test_divergence_loss_value_and_gradient(caffe, tmp_path, margin, loss_weight):
    M, N, D = 3, 5, 4
    rng = np.random.default_rng(1)
    e = embeddings_with_mixed_hinges(rng, M, N, D, margin)
    net = python_net(caffe, tmp_path, [(N, D)] * M, "DivergenceLoss", {"margin": margin},
                     loss_weight=loss_weight)
    for m in range(M):
        net.blobs[f"x{m}"].data[...] = e[m]
    net.forward()
    assert float(net.blobs["y"].data) == pytest.approx(divergence_reference(e, margin), rel=1e-5)

    net.backward()
    objective = lambda n: loss_weight * float(n.blobs["y"].data)  # noqa: E731
    for m in range(M):
        analytic = net.blobs[f"x{m}"].diff.copy()
        numeric = numeric_gradient(net, objective, f"x{m}")
        assert np.abs(analytic).max() > 0  # some hinge involving learner m is active
        assert np.allclose(analytic, numeric, atol=2e-3, rtol=1e-2)


def test_divergence_loss_inactive_hinges_give_zero(caffe, tmp_path):
    """Learners farther apart than the margin: no loss, no gradient."""
    e = np.zeros((2, 3, 2), dtype=np.float32)
    e[0, :, 0], e[1, :, 0] = 1, -1  # squared distance 4 > margin 1
    net = python_net(caffe, tmp_path, [(3, 2)] * 2, "DivergenceLoss", loss_weight=1.0)
    net.blobs["x0"].data[...], net.blobs["x1"].data[...] = e
    net.forward()
    net.backward()
    assert float(net.blobs["y"].data) == 0
    assert not net.blobs["x0"].diff.any() and not net.blobs["x1"].diff.any()


def test_divergence_loss_respects_propagate_down(caffe, tmp_path):
    M, N, D = 3, 4, 3
    e = embeddings_with_mixed_hinges(np.random.default_rng(2), M, N, D, 1.0)
    net = python_net(caffe, tmp_path, [(N, D)] * M, "DivergenceLoss", loss_weight=1.0,
                     propagate_down=[True, False, True])
    for m in range(M):
        net.blobs[f"x{m}"].data[...] = e[m]
        net.blobs[f"s{m}"].diff[...] = 7.0  # sentinel: a skipped bottom must keep it
    net.forward()
    net.backward()
    assert np.all(net.blobs["s1"].diff == 7.0)
    assert not np.any(net.blobs["s0"].diff == 7.0) and not np.any(net.blobs["s2"].diff == 7.0)


def test_layers_reject_unknown_params(caffe, tmp_path):
    with pytest.raises(Exception, match="unknown param_str keys"):
        python_net(caffe, tmp_path, [(2, 3)] * 2, "DivergenceLoss", {"margn": 1.0})


@pytest.mark.parametrize("layer, shapes, param_str, message", [
    ("DivergenceLoss", [(2, 3)] * 2, "{margin: 1}", "DivergenceLoss param_str is not JSON"),
    ("DivergenceLoss", [(2, 3)] * 2, '{"margin": "wide"}', "'margin' must be a finite number"),
    ("DivergenceLoss", [(2, 3)] * 2, '{"margin": -1}', "margin must be > 0"),
    ("L2Normalize", [(2, 3)], "[1e-10]", "L2Normalize param_str must be a JSON object"),
    ("L2Normalize", [(2, 3)], '{"eps": true}', "'eps' must be a finite number"),
])
def test_layers_loaded_directly_say_what_is_wrong(caffe, tmp_path, layer, shapes, param_str,
                                                  message):
    """Caffe runs setup itself (no pre-check on this path): the error still names the problem."""
    from caffe import layers as L

    n = caffe.NetSpec()
    inputs = L.Input(shape=[dict(dim=list(s)) for s in shapes], ntop=len(shapes))
    inputs = inputs if len(shapes) > 1 else [inputs]
    n.y = L.Python(*inputs, module="abe.net.layers", layer=layer, param_str=param_str)
    path = tmp_path / "net.prototxt"
    path.write_text(str(n.to_proto()))
    with pytest.raises(ValueError, match=re.escape(message)):
        caffe.Net(str(path), caffe.TEST)
