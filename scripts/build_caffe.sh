#!/usr/bin/env bash
# Build BVLC Caffe at commit 99bd997 with this project's patches, into a cache folder keyed by
# source + patches + flags. Prints the install prefix (and nothing else) on stdout.
#
# The same recipe serves this machine (CPU_ONLY, Debian source package) and the Docker image
# (CUDA, git clone). A build runs in a temporary folder and is renamed into place only when
# complete, so an interrupted build is never mistaken for a finished one.
#
# Usage: scripts/build_caffe.sh [--source debian|git] [--cuda] [--cuda-arch "75 80 86 89 90 100 120"]
#                               [--python PYTHON] [--prefix DIR] [--jobs N] [--status]
# --status: print the prefix and exit 0 if that build is complete in the cache, 3 if not; build nothing.
# Environment: ABE_CAFFE_HOME (cache root, default ~/.cache/abe-caffe); ABE_CAFFE_SOURCE (the
#              default of --source); ABE_DEBIAN_MIRROR (else the Debian archive in this machine's
#              apt configuration: scripts/debian_mirror.sh); for --cuda: CUDA_ROOT (a
#              toolkit folder with nvcc, cuBLAS and cuRAND, like /usr/local/cuda) and NCCL_ROOT
#              (include/nccl.h, lib/libnccl.so*) when they are not in the default places.
set -euo pipefail

CAFFE_COMMIT=99bd99795dcdf0b1d3086a8d67ab1782a8a08383
DEBIAN_VERSION=1.0.0+git20180821.99bd997-8
DEBIAN_ORIG_SHA256=e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c
GIT_URL=https://github.com/BVLC/caffe.git

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source=${ABE_CAFFE_SOURCE:-debian}
cuda=OFF
cuda_arch="75 80 86 89 90 100 120"
python=${PYTHON:-$here/.venv/bin/python}
prefix=""
jobs=$(nproc)
status_only=0

die() { echo "build_caffe: $1" >&2; exit "${2:-1}"; }
usage() { die "usage: build_caffe.sh [--source debian|git] [--cuda] [--cuda-arch LIST] [--python PY] [--prefix DIR] [--jobs N] [--status]" 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --source) source=${2:-}; shift 2 || usage ;;
    --cuda) cuda=ON; shift ;;
    --cuda-arch) cuda_arch=${2:-}; shift 2 || usage ;;
    --python) python=${2:-}; shift 2 || usage ;;
    --prefix) prefix=${2:-}; shift 2 || usage ;;
    --jobs) jobs=${2:-}; shift 2 || usage ;;
    --status) status_only=1; shift ;;
    *) usage ;;
  esac
done
case "$source" in debian|git) ;; *) die "unknown --source '$source' (debian or git)" 2 ;; esac
[ -x "$python" ] || die "python interpreter not found: $python (run 'make setup' first)" 2

# Python facts the build depends on (headers, library, NumPy headers).
read -r py_version py_include py_library np_include np_version < <("$python" - <<'EOF'
import os, sysconfig, numpy
libdir = sysconfig.get_config_var("LIBDIR")
name = sysconfig.get_config_var("LDLIBRARY")
cands = [os.path.join(libdir, name), os.path.join(libdir, sysconfig.get_config_var("MULTIARCH") or "", name)]
lib = next((c for c in cands if os.path.exists(c)), cands[0])
print(sysconfig.get_python_version(), sysconfig.get_paths()["include"], lib, numpy.get_include(), numpy.__version__)
EOF
)

cmake_flags=(
  -DCMAKE_BUILD_TYPE=Release
  -DBLAS=Open
  -DBUILD_python=ON -DBUILD_python_layer=ON -Dpython_version=3
  -DPYTHON_EXECUTABLE="$python" -DPYTHON_INCLUDE_DIR="$py_include" -DPYTHON_LIBRARY="$py_library"
  # LMDB is the project's data format. OpenCV is off: the project's own data layer decodes
  # images in Python (opencv-python-headless), so Caffe's ImageData/WindowData layers are unused.
  # LevelDB is off: no LevelDB data is used. cuDNN is off: Caffe at 99bd997 targets cuDNN <= 7.
  -DUSE_LMDB=ON -DUSE_OPENCV=OFF -DUSE_LEVELDB=OFF -DUSE_CUDNN=OFF -DUSE_HDF5=ON
  -DBUILD_docs=OFF -DBUILD_matlab=OFF
)
if [ "$cuda" = ON ]; then
  cmake_flags+=(-DCPU_ONLY=OFF -DUSE_NCCL=ON -DCUDA_ARCH_NAME=Manual
                -DCUDA_ARCH_BIN="$cuda_arch" -DCUDA_ARCH_PTX="${cuda_arch##* }")
  [ -n "${CUDA_ROOT:-}" ] && cmake_flags+=(-DCUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT")
  [ -n "${NCCL_ROOT:-}" ] && cmake_flags+=(-DNCCL_INCLUDE_DIR="$NCCL_ROOT/include" -DNCCL_LIBRARIES="$(ls "$NCCL_ROOT"/lib/libnccl.so* | head -n1)")
else
  cmake_flags+=(-DCPU_ONLY=ON -DUSE_NCCL=OFF)
fi

patch_dirs=("$here/patches/caffe")
[ "$cuda" = ON ] && patch_dirs+=("$here/patches/caffe-cuda")
patches=()
for d in "${patch_dirs[@]}"; do
  [ -d "$d" ] && while IFS= read -r p; do patches+=("$p"); done < <(ls "$d"/*.patch 2>/dev/null | sort)
done

# The key: everything that changes the built files. Both sources are the same commit and get
# the same patches, but they are kept apart so a Docker-style build is checked on its own.
# The interpreter's path is left out (a venv in another clone builds the same files); its
# version, headers, library and NumPy version are in.
key=$( { echo "$CAFFE_COMMIT $source $py_version $np_version $py_include"
         printf '%s\n' "${cmake_flags[@]}" | grep -v '^-DPYTHON_EXECUTABLE='
         for p in "${patches[@]}"; do sha256sum < "$p"; done; } | sha256sum | cut -c1-16)
cache=${ABE_CAFFE_HOME:-$HOME/.cache/abe-caffe}
[ -n "$prefix" ] || prefix="$cache/caffe-$([ "$cuda" = ON ] && echo cuda || echo cpu)-$key"

if [ -f "$prefix/.complete" ]; then
  echo "$prefix"; exit 0
fi
[ "$status_only" = 1 ] && { echo "$prefix"; exit 3; }
[ -e "$prefix" ] && { echo "build_caffe: removing incomplete build $prefix" >&2; rm -rf "$prefix"; }

mkdir -p "$(dirname "$prefix")"
work=$(mktemp -d "$(dirname "$prefix")/.building-$key-XXXXXX")
trap 'rm -rf "$work"' EXIT
log() { echo "build_caffe: $*" >&2; }

log "fetching Caffe $CAFFE_COMMIT (source: $source)"
mkdir -p "$work/src"
if [ "$source" = debian ]; then
  mirror=$("$here/scripts/debian_mirror.sh" 2>&1) || die "$mirror"
  apt_dir="$work/apt"
  mkdir -p "$apt_dir"/{lists/partial,cache/archives/partial,sources.list.d}
  : > "$apt_dir/sources.list"
  cat > "$apt_dir/sources.list.d/bullseye-src.sources" <<EOF
Types: deb-src
URIs: $mirror
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt_opts=(-o Dir::Etc::sourcelist="$apt_dir/sources.list" -o Dir::Etc::sourceparts="$apt_dir/sources.list.d"
            -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache" -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" -qq update >"$work/apt.log" 2>&1 \
    || die "cannot fetch the Debian source index for caffe $DEBIAN_VERSION (no network?)"
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" -qq source --download-only "caffe=$DEBIAN_VERSION") >>"$work/apt.log" 2>&1 \
    || die "cannot fetch Debian source package caffe $DEBIAN_VERSION (no network?)"
  orig=$(ls "$apt_dir"/caffe_*.orig.tar.gz)
  echo "$DEBIAN_ORIG_SHA256  $orig" | sha256sum -c --quiet - >/dev/null 2>&1 \
    || die "sha256 mismatch for $(basename "$orig"): expected $DEBIAN_ORIG_SHA256"
  tar xzf "$orig" -C "$work/src"
else
  git clone -q "$GIT_URL" "$work/src" 2>"$work/git.log" || die "cannot clone $GIT_URL (no network?)"
  git -C "$work/src" checkout -q "$CAFFE_COMMIT" || die "commit $CAFFE_COMMIT not found in $GIT_URL"
fi

for p in "${patches[@]}"; do
  log "applying $(basename "$p")"
  patch -s -p1 -d "$work/src" < "$p" || die "patch $(basename "$p") does not apply"
done

log "configuring (CUDA $cuda, python $py_version, numpy $np_version)"
cmake -S "$work/src" -B "$work/build" -DCMAKE_INSTALL_PREFIX="$prefix" "${cmake_flags[@]}" \
  >"$work/cmake.log" 2>&1 || { tail -n 30 "$work/cmake.log" >&2; die "cmake configure failed"; }

log "compiling with $jobs jobs (log: build.log in the install folder)"
make -C "$work/build" -j"$jobs" all >"$work/build.log" 2>&1 \
  || { grep -m 20 -E "error|Error" "$work/build.log" >&2; die "compile failed"; }
make -C "$work/build" install DESTDIR="$work/stage" >>"$work/build.log" 2>&1 || die "install failed"

# The install prefix is final from the start (it is baked into rpaths); the staged tree is moved
# there in one rename. BVLC's model definitions come along for tests and tools.
staged="$work/stage$prefix"
cp -r "$work/src/models" "$staged/models"
cp "$work/build.log" "$work/cmake.log" "$staged/"
echo "$CAFFE_COMMIT $source cuda=$cuda" > "$staged/.complete"
mv "$staged" "$prefix"
log "installed into $prefix"
echo "$prefix"
