/*
 * STAND-IN for NVIDIA's CUDA runtime (libcudart) -- for tests of OUR control flow only, not of CUDA.
 *
 * Exports the handful of cudart entry points the bundle's edge_cuda.py calls, with CUDA's signatures and error
 * codes, so that the ctypes code path runs for real on a machine without a GPU: "device memory" is host memory
 * (malloc), copies are memcpy, streams are dummies. What the device is and how CUDA fails come from the
 * environment, read at every call:
 *   STANDIN_CUDA_ERROR   a cudaError_t returned by cudaGetDeviceCount (35: insufficient driver, 100: no device)
 *   STANDIN_GPU_NAME     device name (default "Orin")
 *   STANDIN_GPU_CC       compute capability as digits (default 87)
 *   STANDIN_GPU_SMS      multiprocessor count (default 16)
 *   STANDIN_GPU_MEMCLK   memory clock in kHz (default 3199000), STANDIN_GPU_BUS bus width (default 256),
 *   STANDIN_GPU_L2       L2 cache bytes (default 4194304)
 * Built by the tests with the system C compiler into <site>/nvidia/cuda_runtime/lib/libcudart.so.12, the place
 * the tensorrt-cu12 wheel's runtime dependency (nvidia-cuda-runtime-cu12) installs the real one.
 */
#include <stdlib.h>
#include <string.h>

typedef int cudaError_t;

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return (v && *v) ? atoi(v) : fallback;
}

cudaError_t cudaGetDeviceCount(int *count) {
    int err = env_int("STANDIN_CUDA_ERROR", 0);
    if (err) { *count = 0; return err; }
    *count = 1;
    return 0;
}

cudaError_t cudaDeviceGetAttribute(int *value, int attr, int device) {
    int cc = env_int("STANDIN_GPU_CC", 87);
    if (device != 0) return 101;  /* cudaErrorInvalidDevice */
    switch (attr) {
        case 16: *value = env_int("STANDIN_GPU_SMS", 16); return 0;
        case 36: *value = env_int("STANDIN_GPU_MEMCLK", 3199000); return 0;
        case 37: *value = env_int("STANDIN_GPU_BUS", 256); return 0;
        case 38: *value = env_int("STANDIN_GPU_L2", 4194304); return 0;
        case 75: *value = cc / 10; return 0;
        case 76: *value = cc % 10; return 0;
        default: return 1;  /* cudaErrorInvalidValue */
    }
}

static cudaError_t properties(char *prop, int device) {
    const char *name = getenv("STANDIN_GPU_NAME");
    if (device != 0) return 101;
    memset(prop, 0, 256);
    strncpy(prop, (name && *name) ? name : "Orin", 255);  /* cudaDeviceProp.name: char[256], the first field */
    return 0;
}

cudaError_t cudaGetDeviceProperties(char *prop, int device) { return properties(prop, device); }
cudaError_t cudaGetDeviceProperties_v2(char *prop, int device) { return properties(prop, device); }

cudaError_t cudaMalloc(void **ptr, size_t size) {
    *ptr = malloc(size ? size : 1);
    return *ptr ? 0 : 2;  /* cudaErrorMemoryAllocation */
}

cudaError_t cudaFree(void *ptr) { free(ptr); return 0; }

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, int kind) {
    (void)kind;
    memcpy(dst, src, count);
    return 0;
}

cudaError_t cudaStreamCreate(void **stream) { *stream = malloc(1); return 0; }
cudaError_t cudaStreamSynchronize(void *stream) { (void)stream; return 0; }
cudaError_t cudaStreamDestroy(void *stream) { free(stream); return 0; }

const char *cudaGetErrorName(cudaError_t err) {
    switch (err) {
        case 0: return "cudaSuccess";
        case 3: return "cudaErrorInitializationError";
        case 34: return "cudaErrorStubLibrary";
        case 35: return "cudaErrorInsufficientDriver";
        case 100: return "cudaErrorNoDevice";
        default: return "cudaErrorUnknown";
    }
}

const char *cudaGetErrorString(cudaError_t err) {
    switch (err) {
        case 0: return "no error";
        case 3: return "initialization error";
        case 34: return "CUDA driver is a stub library";
        case 35: return "CUDA driver version is insufficient for CUDA runtime version";
        case 100: return "no CUDA-capable device is detected";
        default: return "unknown error";
    }
}
