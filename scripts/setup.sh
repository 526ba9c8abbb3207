#!/usr/bin/env bash
# All set-up on a fresh Debian/Ubuntu machine: system packages, .venv with the pinned Python
# dependencies, BVLC Caffe (CPU) built from source into the cache, pycaffe made importable.
# Idempotent: a second run with everything in place takes seconds.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

# Build dependencies of Caffe at 99bd997 (CPU, Python layer, OpenBLAS, LMDB, HDF5), and what
# a Python venv needs. Names are the same on Debian 12 and Ubuntu 24.04.
APT_PACKAGES=(build-essential cmake git patch ca-certificates debian-archive-keyring
  libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev libhdf5-dev
  libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-python-dev
  libopenblas-dev liblmdb-dev)

scripts/check_system_packages.sh "${APT_PACKAGES[@]}"

# Python environment, reinstalled only when requirements.txt changes.
PY=${PYTHON3:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
req_hash=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$req_hash" ]; then
  echo "setup: installing Python dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt \
    || { echo "setup: pip install -r requirements.txt failed (no network?)" >&2; exit 1; }
  echo "$req_hash" > .venv/.requirements.sha256
fi

# Caffe, from the build cache or built now; pycaffe and this repo's package on the venv's path.
prefix=$(scripts/build_caffe.sh --python "$here/.venv/bin/python")
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf '%s\n' "$prefix/python" > "$site/abe-caffe-pycaffe.pth"
printf '%s\n' "$here" > "$site/abe-caffe-repo.pth"
.venv/bin/python -c "import caffe; assert 'Python' in caffe.layer_type_list()" \
  || { echo "setup: pycaffe from $prefix does not import" >&2; exit 1; }
echo "setup: ready (caffe: $prefix)" >&2
