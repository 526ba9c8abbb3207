# abe-caffe: every target sets up what it needs first (a warm setup takes seconds).
PY := .venv/bin/python
SHELL := /bin/bash

.PHONY: setup test demo bench clean clean-cache check-cuda-build check-debian13

setup:
	@scripts/setup.sh

test: setup
	$(PY) -m pytest -q -n auto --dist loadfile tests

demo: setup
	$(PY) tools/demo.py

bench: setup
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf .venv runs .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-cache:
	rm -rf $${ABE_CAFFE_HOME:-$$HOME/.cache/abe-caffe}

# Compile check of the Docker image's CUDA build (nvcc 13 here, cuBLAS/cuRAND/NCCL from PyPI wheels);
# ends by importing that pycaffe and checking caffe.has_nccl(). No GPU needed.
check-cuda-build: setup
	@scripts/check_cuda_build.sh

# The Docker image's toolchain rehearsed here: a fresh minimal Debian 13 (make and git only), this
# checkout's HEAD cloned by root under /root, `make test`, then the CUDA compile check with this
# machine's nvcc. Needs root and debootstrap; nothing is set up on this machine itself.
check-debian13:
	@scripts/rehearse_debian13.sh
