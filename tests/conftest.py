"""Shared fixtures. Every test runs real pycaffe (built by `make setup`), never a mock."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")  # keep Caffe's INFO logging out of test output

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def caffe():
    import caffe as caffe_module

    caffe_module.set_mode_cpu()
    return caffe_module


@pytest.fixture(scope="session")
def caffe_prefix(caffe):
    """The install prefix of the Caffe build in use (holds BVLC's models/)."""
    return Path(caffe.__file__).resolve().parents[2]
