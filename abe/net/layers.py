"""Caffe Python layers of ABE-M: per-learner L2 normalization and the divergence loss.

Loaded by Caffe through ``python_param { module: "abe.net.layers" layer: "..." }``. As in BVLC's
``examples/pycaffe/layers``: parameters are parsed in ``setup`` (``param_str`` is JSON), shapes
are set in ``reshape``, and ``forward``/``backward`` do array work only.
"""
import caffe
import numpy as np

from abe.net import param_str


class L2Normalize(caffe.Layer):
    """Scales each row of an N x D (or N x D x 1 x 1) blob to unit Euclidean norm.

    ``param_str``: ``{"eps": 1e-10}``; the norm is ``sqrt(sum x^2 + eps)`` so a zero row has a
    finite gradient. The learners' embeddings are normalized because the paper compares them by
    cosine similarity and the contrastive margin 1 only makes sense on the unit sphere.
    """

    @staticmethod
    def parse_param_str(text):
        params = param_str.parse(text, {"eps": 1e-10}, "L2Normalize")
        param_str.require(params["eps"] > 0, "L2Normalize", f"eps must be > 0, got {params['eps']}")
        return params

    def setup(self, bottom, top):
        if len(bottom) != 1 or len(top) != 1:
            raise ValueError("L2Normalize takes one bottom and gives one top")
        self.eps = float(self.parse_param_str(self.param_str)["eps"])

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
        self.norm = np.zeros((bottom[0].num, 1), dtype=np.float32)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(bottom[0].num, -1)
        self.norm[...] = np.sqrt(np.sum(x * x, axis=1, keepdims=True) + self.eps)
        top[0].data[...] = (x / self.norm).reshape(top[0].data.shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data.reshape(top[0].num, -1)
        dy = top[0].diff.reshape(top[0].num, -1)
        dx = (dy - y * np.sum(dy * y, axis=1, keepdims=True)) / self.norm
        bottom[0].diff[...] = dx.reshape(bottom[0].diff.shape)


class DivergenceLoss(caffe.Layer):
    """Pushes the M learners' embeddings of the same image apart (paper eq. 4).

    Bottoms: M >= 2 blobs, each N x D, the normalized embeddings of the same N images by
    learners 0..M-1. Top: the scalar ``(1/N) sum_i sum_{p<q} max(0, margin - ||e_p,i - e_q,i||^2)``
    (sum over learner pairs, mean over images, as decided in the spec); its ``loss_weight`` is
    lambda_div. ``param_str``: ``{"margin": 1.0}``.
    """

    @staticmethod
    def parse_param_str(text):
        params = param_str.parse(text, {"margin": 1.0}, "DivergenceLoss")
        param_str.require(params["margin"] > 0, "DivergenceLoss",
                          f"margin must be > 0, got {params['margin']}")
        return params

    def setup(self, bottom, top):
        if len(bottom) < 2 or len(top) != 1:
            raise ValueError("DivergenceLoss takes at least 2 bottoms (one per learner) "
                             "and gives one top")
        self.margin = float(self.parse_param_str(self.param_str)["margin"])

    def reshape(self, bottom, top):
        # pycaffe's blob vectors index but do not iterate, hence range(len(...)) below.
        shape = bottom[0].data.shape
        for m in range(1, len(bottom)):
            if bottom[m].data.shape != shape:
                raise ValueError(f"DivergenceLoss bottom {m} has shape {bottom[m].data.shape}, "
                                 f"bottom 0 has {shape}")
        top[0].reshape()  # a 0-axis scalar, like Caffe's own loss layers

    def forward(self, bottom, top):
        embeddings = np.stack([bottom[m].data.reshape(bottom[m].num, -1)  # M x N x D
                               for m in range(len(bottom))])
        # All ordered learner pairs (p, q): M x M x N x D differences, p == q masked out.
        self.diff = embeddings[:, None] - embeddings[None, :]
        hinge = self.margin - np.sum(self.diff ** 2, axis=3)
        off_diagonal = ~np.eye(len(bottom), dtype=bool)[:, :, None]
        self.active = (hinge > 0) & off_diagonal
        # Each unordered pair appears twice among the ordered ones.
        top[0].data[...] = 0.5 * np.sum(hinge * self.active) / bottom[0].num

    def backward(self, top, propagate_down, bottom):
        scale = -2.0 * float(top[0].diff) / bottom[0].num
        for p in range(len(bottom)):
            if propagate_down[p]:
                grad = scale * np.sum(self.active[p][:, :, None] * self.diff[p], axis=0)
                bottom[p].diff[...] = grad.reshape(bottom[p].diff.shape)
