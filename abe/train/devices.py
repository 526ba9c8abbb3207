"""Which GPUs this Caffe build can use, asked without tripping Caffe's CHECKs.

``caffe.set_mode_gpu()`` on a CPU_ONLY build, or ``set_device(N)`` past the GPU count, aborts the
whole process with a glog CHECK failure; a command asks here first and says so in one line.
"""
import subprocess
import sys
from pathlib import Path

from abe.errors import UserError

# Asked in a child process so that the caller holds no CUDA context (its ranks are spawned later).
_COUNT_GPUS = """
import ctypes
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError:
    print(0)
else:
    count = ctypes.c_int(0)
    ok = cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
    print(count.value if ok else 0)
"""

_GPU_MEMORY = """
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
device, total = ctypes.c_int(0), ctypes.c_size_t(0)
ok = cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(device), int(sys.argv[1])) == 0
ok = ok and cuda.cuDeviceTotalMem_v2(ctypes.byref(total), device) == 0
print(total.value if ok else 0)
"""


def caffe_is_cpu_only():
    """True for a CPU_ONLY build: its install prefix's CaffeConfig.cmake records the switch."""
    import caffe

    config = Path(caffe.__file__).resolve().parents[2] / "share" / "Caffe" / "CaffeConfig.cmake"
    return "set(Caffe_CPU_ONLY ON)" in config.read_text()


def visible_gpu_count():
    """CUDA devices the driver shows this process (0 without a driver); honours CUDA_VISIBLE_DEVICES."""
    answer = subprocess.run([sys.executable, "-c", _COUNT_GPUS], capture_output=True, text=True)
    return int(answer.stdout.strip() or 0) if answer.returncode == 0 else 0


def require_gpus(ids):
    """Refuse, as a UserError, GPU ids that this build or this machine cannot run on."""
    ids = list(ids)
    if not ids:
        return
    if caffe_is_cpu_only():
        raise UserError(f"GPU {ids[0]} requested, but this Caffe is a CPU-only build "
                        "(drop the GPU option here, or use the CUDA build of the Docker image)")
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise UserError(f"GPU ids must be distinct and non-negative, got {ids}")
    count = visible_gpu_count()
    missing = [i for i in ids if i >= count]
    if missing:
        raise UserError(f"GPU {missing[0]} requested, but {count} GPU(s) are visible")


def gpu_memory(gpu):
    """Total memory of CUDA device ``gpu`` in bytes (0 when the driver cannot say)."""
    answer = subprocess.run([sys.executable, "-c", _GPU_MEMORY, str(gpu)], capture_output=True,
                            text=True)
    return int(answer.stdout.strip() or 0) if answer.returncode == 0 else 0
