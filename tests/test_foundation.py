"""The foundation: pycaffe from the cached source build, its Python layer, the build cache."""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from conftest import REPO

BUILD = REPO / "scripts" / "build_caffe.sh"
VENV_PY = REPO / ".venv" / "bin" / "python"


def test_python_layer_is_built(caffe):
    assert "Python" in caffe.layer_type_list()


def test_import_from_any_folder(tmp_path):
    out = subprocess.run([str(VENV_PY), "-c", "import caffe, abe; print(caffe.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "caffe" in out.stdout


def test_netspec_python_layer_forward_backward(caffe, tmp_path, monkeypatch):
    # A Python layer defined in a module of its own, loaded by Caffe through python_param.
    (tmp_path / "scale_layer.py").write_text(textwrap.dedent("""
        import json
        import caffe

        class Scale(caffe.Layer):
            def setup(self, bottom, top):
                self.factor = json.loads(self.param_str)["factor"]

            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                top[0].data[...] = self.factor * bottom[0].data

            def backward(self, top, propagate_down, bottom):
                if propagate_down[0]:
                    bottom[0].diff[...] = self.factor * top[0].diff
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from caffe import layers as L

    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.ip = L.InnerProduct(n.data, num_output=4, weight_filler=dict(type="gaussian", std=0.1))
    n.scaled = L.Python(n.ip, module="scale_layer", layer="Scale", param_str='{"factor": 3.0}')
    n.loss = L.EuclideanLoss(n.scaled, L.Input(shape=dict(dim=[2, 4])))
    proto = tmp_path / "net.prototxt"
    proto.write_text("force_backward: true\n" + str(n.to_proto()))

    net = caffe.Net(str(proto), caffe.TRAIN)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.normal(size=(2, 3))
    net.forward()
    np.testing.assert_allclose(net.blobs["scaled"].data, 3.0 * net.blobs["ip"].data, rtol=1e-6)
    net.backward()
    # Gradients pass through the Python layer to its bottom (x3) and on to the data.
    np.testing.assert_allclose(net.blobs["ip"].diff, 3.0 * net.blobs["scaled"].diff, rtol=1e-6)
    assert np.abs(net.blobs["data"].diff).sum() > 0


def test_bvlc_googlenet_deploy_forward(caffe, caffe_prefix):
    deploy = caffe_prefix / "models" / "bvlc_googlenet" / "deploy.prototxt"
    net = caffe.Net(str(deploy), caffe.TEST)
    net.blobs["data"].reshape(1, 3, 224, 224)
    net.reshape()
    net.blobs["data"].data[...] = np.random.default_rng(0).normal(size=(1, 3, 224, 224))
    out = net.forward()
    assert out["prob"].shape == (1, 1000)
    np.testing.assert_allclose(out["prob"].sum(), 1.0, rtol=1e-4)


def _build_status(cache_home):
    env = dict(os.environ, ABE_CAFFE_HOME=str(cache_home))
    return subprocess.run(["bash", str(BUILD), "--python", str(VENV_PY), "--status"],
                          env=env, capture_output=True, text=True)


def test_build_cache_ignores_incomplete_build(tmp_path):
    first = _build_status(tmp_path)
    assert first.returncode == 3, first.stderr
    prefix = first.stdout.strip().splitlines()[-1]
    assert prefix.startswith(str(tmp_path))
    # A build folder with everything but the completion mark, as a killed build would leave.
    os.makedirs(os.path.join(prefix, "python", "caffe"))
    (tmp_path / os.path.basename(prefix) / "python" / "caffe" / "__init__.py").write_text("")
    assert _build_status(tmp_path).returncode == 3
    with open(os.path.join(prefix, ".complete"), "w") as f:
        f.write("done\n")
    done = _build_status(tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == prefix


def test_build_cache_is_warm_for_this_venv(caffe_prefix):
    status = _build_status(os.environ.get("ABE_CAFFE_HOME", os.path.expanduser("~/.cache/abe-caffe")))
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.strip() == str(caffe_prefix)


def test_build_without_network_fails_cleanly(tmp_path):
    env = dict(os.environ, ABE_CAFFE_HOME=str(tmp_path), http_proxy="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9")
    run = subprocess.run(["bash", str(BUILD), "--python", str(VENV_PY)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    errors = [l for l in run.stderr.splitlines() if "cannot fetch" in l]
    assert len(errors) == 1 and "no network" in errors[0]
    assert os.listdir(tmp_path) == []  # neither a prefix nor a .building-* folder is left


def test_setup_script_is_a_no_op_when_warm():
    run = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "ready" in run.stderr and "installing" not in run.stderr


def test_missing_system_package_names_the_apt_command(tmp_path_factory):
    script = REPO / "scripts" / "check_system_packages.sh"
    cmd = ["bash", str(script), "coreutils", "abe-no-such-package"]
    cwd = None
    if os.geteuid() == 0:
        # As an unprivileged user, as a normal user would meet it. That user may not be able to
        # read the checkout (root's clones live under /root), so it runs a copy from a folder
        # anyone can read.
        readable = Path(tempfile.mkdtemp(prefix="abe-apt-check-"))
        readable.chmod(0o755)
        shutil.copy(script, readable / script.name)
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
               "bash", str(readable / script.name), *cmd[2:]]
        cwd = readable
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    finally:
        if cwd:
            shutil.rmtree(cwd)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == ("setup: missing system packages; run: sudo apt-get install -y "
                                  "--no-install-recommends abe-no-such-package")
