"""STAND-IN for the tensorrt-cu12-libs wheel's package (tests of OUR control flow only): like the real one in
TensorRT 10.x (python/packaging/libs_wheel/tensorrt_libs/__init__.py), importing it loads the CUDA runtime of
the nvidia-cuda-runtime-cu12 wheel installed beside it, so that runtime is in the process before tensorrt is."""
import ctypes
import glob
import os

_SITE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
for _lib in glob.glob(os.path.join(_SITE, "nvidia", "cuda_runtime", "lib", "*.so*")):
    try:
        ctypes.CDLL(_lib)
    except OSError:
        pass
