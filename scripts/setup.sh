#!/usr/bin/env bash
# All set-up on a fresh Debian/Ubuntu machine: system packages, .venv with the pinned Python
# dependencies, BVLC Caffe (CPU) built from source into the cache, pycaffe made importable.
# Idempotent: a second run with everything in place takes seconds.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

# Build dependencies of Caffe at 99bd997 (CPU, Python layer, OpenBLAS, LMDB, HDF5), and the
# interpreter with its venv module and headers. The same names on Debian 12/13 and Ubuntu
# 22.04/24.04 (the Dockerfile installs this list too; a test keeps the two in step).
APT_PACKAGES=(build-essential cmake git patch ca-certificates debian-archive-keyring
  libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev libhdf5-dev
  libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-python-dev
  libopenblas-dev liblmdb-dev python3 python3-venv python3-dev)

# The interpreter the venv is made from (PYTHON3, else python3). When apt installed it, its own
# versioned venv and headers packages (python3.X-venv, python3.X-dev) are needed too: they are
# what python3-venv/python3-dev pull in only for the distribution's default python3.
PY=${PYTHON3:-python3}
py_packages=()
if py_path=$(command -v "$PY") && dpkg -S "$(readlink -f "$py_path")" >/dev/null 2>&1; then
  py_version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  py_packages=("python$py_version-venv" "python$py_version-dev")
fi
scripts/check_system_packages.sh "${APT_PACKAGES[@]}" "${py_packages[@]}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: $("$PY" -V 2>&1) is older than 3.11, which the pins in requirements.txt need (on" \
            "Ubuntu 22.04: a newer Python, with Boost.Python built for it; Debian 12/13 and Ubuntu 24.04 have one)" >&2; exit 2; }
"$PY" -c 'import ensurepip, os, sysconfig
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null \
  || { echo "setup: $PY lacks its venv module (ensurepip) or its headers (Python.h); install them," \
            "or set PYTHON3 to an interpreter that has both" >&2; exit 2; }

# The venv with the pinned dependencies (made again when incomplete).
scripts/make_venv.sh .venv requirements.txt "$PY"

# Caffe, from the build cache or built now; pycaffe and this repo's package on the venv's path.
prefix=$(scripts/build_caffe.sh --python "$here/.venv/bin/python") \
  || { echo "setup: the Caffe build failed (its message is above)" >&2; exit 1; }
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf '%s\n' "$prefix/python" > "$site/abe-caffe-pycaffe.pth"
printf '%s\n' "$here" > "$site/abe-caffe-repo.pth"
.venv/bin/python -c "import caffe; assert 'Python' in caffe.layer_type_list()" \
  || { echo "setup: pycaffe from $prefix does not import" >&2; exit 1; }
echo "setup: ready (caffe: $prefix)" >&2
