#!/usr/bin/env bash
# Compile check of the GPU path on a machine without a GPU: build libcaffe + pycaffe with CUDA
# on (the Docker image's recipe and patches), then import that pycaffe and check NCCL is in.
#
# nvcc comes from a local CUDA 13 toolkit (CUDA_HOME, default /usr/local/cuda-13.0). cuBLAS,
# cuRAND and NCCL come from their PyPI wheels (pinned in scripts/cuda-check-requirements.txt),
# installed into the build cache next to a "toolkit view": a folder laid out like the CUDA
# devel image's /usr/local/cuda (nvcc's toolkit plus the cuBLAS/cuRAND headers and libraries),
# so Caffe's CMake finds everything the same way it does in the image.
#
# Usage: scripts/check_cuda_build.sh [--cuda-arch "90"] [--jobs N]
# The build is cached like the CPU build (scripts/build_caffe.sh); a warm run takes seconds.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cuda_home=${CUDA_HOME:-/usr/local/cuda-13.0}
cuda_arch=90
jobs=2
python=$here/.venv/bin/python
requirements=$here/scripts/cuda-check-requirements.txt

die() { echo "check-cuda-build: $1" >&2; exit "${2:-1}"; }
usage() { die "usage: check_cuda_build.sh [--cuda-arch LIST] [--jobs N]" 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda-arch) cuda_arch=${2:-}; shift 2 || usage ;;
    --jobs) jobs=${2:-}; shift 2 || usage ;;
    *) usage ;;
  esac
done
[ -x "$cuda_home/bin/nvcc" ] || die "nvcc not found under $cuda_home (set CUDA_HOME to a CUDA 13 toolkit)" 2
[ -x "$python" ] || die "$python not found (run 'make setup' first)" 2

# The toolkit view, keyed by the toolkit's location and version and the wheel pins.
cache=${ABE_CAFFE_HOME:-$HOME/.cache/abe-caffe}
view_key=$( { echo "$cuda_home"; "$cuda_home/bin/nvcc" --version; cat "$requirements"; } | sha256sum | cut -c1-16)
view=$cache/cuda-toolkit-$view_key
if [ ! -f "$view/.complete" ]; then
  echo "check-cuda-build: installing cuBLAS, cuRAND and NCCL wheels into $view" >&2
  mkdir -p "$cache"
  rm -rf "$view"
  tmp=$(mktemp -d "$cache/.toolkit-$view_key-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  "$python" -m pip install -q --disable-pip-version-check --no-deps --target "$tmp/wheels" \
      -r "$requirements" || die "pip could not install the CUDA library wheels (no network?)"
  mkdir -p "$tmp/include" "$tmp/lib64"
  for d in bin nvvm; do ln -s "$cuda_home/$d" "$tmp/$d"; done
  ln -s "$cuda_home"/include/* "$tmp/include/"
  ln -s "$cuda_home"/lib64/* "$tmp/lib64/"
  for f in "$tmp"/wheels/nvidia/cu13/include/*; do
    ln -s "../wheels/nvidia/cu13/include/$(basename "$f")" "$tmp/include/"
  done
  for f in "$tmp"/wheels/nvidia/cu13/lib/*.so.*; do
    name=$(basename "$f")
    ln -s "../wheels/nvidia/cu13/lib/$name" "$tmp/lib64/$name"
    ln -s "$name" "$tmp/lib64/${name%%.so.*}.so"   # the -dev symlink the wheels leave out
  done
  mkdir -p "$tmp/targets/x86_64-linux"
  ln -s ../../include "$tmp/targets/x86_64-linux/include"
  ln -s ../../lib64 "$tmp/targets/x86_64-linux/lib"
  touch "$tmp/.complete"
  mv "$tmp" "$view"
  trap - EXIT
fi

start=$(date +%s)
prefix=$(CUDA_ROOT=$view NCCL_ROOT=$view/wheels/nvidia/nccl \
         nice -n 15 "$here/scripts/build_caffe.sh" --cuda --cuda-arch "$cuda_arch" --jobs "$jobs" \
                    --python "$python")
echo "check-cuda-build: build ready in $(( $(date +%s) - start )) s: $prefix" >&2

# Import that build (not the CPU one the venv points at) without a GPU.
PYTHONPATH=$prefix/python "$python" - "$prefix" <<'EOF'
import os, sys
import caffe
prefix = os.path.realpath(sys.argv[1])
assert os.path.realpath(caffe.__file__).startswith(prefix), f"imported {caffe.__file__}, not {prefix}"
assert caffe.has_nccl(), "pycaffe was built without NCCL"
assert "Python" in caffe.layer_type_list()
print(f"check-cuda-build: ok: pycaffe with CUDA and NCCL imports from {prefix}")
EOF
