# abe-caffe GPU image: BVLC Caffe 99bd997 with CUDA 13 and NCCL (cuDNN off), built by the same
# recipe as `make setup` (scripts/build_caffe.sh, the project's patches), plus this project.
#
#   docker build -t abe-caffe .
#   docker run --gpus all -v "$PWD/data:/data" -v "$PWD/runs:/runs" abe-caffe [train.sh options]
#
# The CUDA major here must match the local compile check (`make check-cuda-build`, nvcc 13.0);
# tests/test_dockerfile.py checks that and the architecture list below.
FROM nvidia/cuda:13.0.2-devel-ubuntu24.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Caffe's build dependencies and Python 3.12 with its headers and venv: the list in scripts/setup.sh
# (the same names on Ubuntu 24.04; a test keeps the two in step). The CUDA devel base already has
# cuBLAS, cuRAND and NCCL (libnccl-dev). Versions come from the pinned base image's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake git patch ca-certificates debian-archive-keyring \
      libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev libhdf5-dev \
      libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-python-dev \
      libopenblas-dev liblmdb-dev \
      python3 python3-dev python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && { test -f /usr/include/nccl.h || { echo "base image lacks libnccl-dev (nccl.h)" >&2; exit 1; }; }

WORKDIR /opt/abe-caffe

# Python dependencies from the same pinned file as `make setup` (Ubuntu's pip is externally
# managed, so they go into a venv, where the build script looks for its Python by default).
COPY requirements.txt ./
RUN python3 -m venv .venv \
 && .venv/bin/pip install --no-cache-dir -r requirements.txt

# Caffe with CUDA: Turing (75), Ampere (80, 86), Ada (89), Hopper (90), Blackwell (100, 120),
# plus PTX of the last one for newer GPUs. Only architectures nvcc 13 supports.
ARG CUDA_ARCH="75 80 86 89 90 100 120"
ENV ABE_CAFFE_HOME=/opt/caffe
COPY scripts/build_caffe.sh scripts/
COPY patches/ patches/
RUN prefix=$(scripts/build_caffe.sh --source git --cuda --cuda-arch "$CUDA_ARCH" \
               --python /opt/abe-caffe/.venv/bin/python) \
 && site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && printf '%s\n' "$prefix/python" > "$site/abe-caffe-pycaffe.pth" \
 && printf '%s\n' /opt/abe-caffe > "$site/abe-caffe-repo.pth" \
 && .venv/bin/python -c "import caffe; assert caffe.has_nccl(); assert 'Python' in caffe.layer_type_list()"

# The project itself (see .dockerignore), run by a non-root user (uid 10001: Ubuntu's image
# already has 1000). train.sh reads /data and writes the repo's runs/, which is the /runs volume.
# Weights are not baked in: train.sh fetches bvlc_googlenet.caffemodel (sha1-checked) into
# weights/ at first run (kept across runs with -v abe-weights:/opt/abe-caffe/weights), or mount
# the file there. /data, /runs and weights/ are writable by any uid, so --user "$(id -u):$(id -g)"
# works too, to write into bind-mounted host folders as yourself.
COPY . .
RUN useradd --create-home --shell /bin/bash --uid 10001 --user-group abe \
 && mkdir -p /data /runs \
 && ln -s /runs /opt/abe-caffe/runs \
 && chown abe:abe /data /runs /opt/abe-caffe/weights \
 && chmod 1777 /data /runs /opt/abe-caffe/weights
USER 10001:10001
ENV PATH=/opt/abe-caffe/.venv/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib
VOLUME ["/data", "/runs"]
ENTRYPOINT ["/opt/abe-caffe/train.sh"]
