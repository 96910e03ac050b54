#!/usr/bin/env python3
"""Issue 11: can a split decode's blocks run as one thread-block cluster without losing SMs?

The next step for the small-batch decode (docs/VALIDATION.md, "Next for the small-batch decode")
merges the splits of a (sequence, head tile) through distributed shared memory, which needs those
splits to be one cluster: 16 blocks at B=1 (non-portable size), 2 at B=8. A cluster's blocks share
a GPC, and where shared memory allows two blocks per SM the hardware may pack a cluster onto half
as many SMs, halving the bandwidth its blocks can pull. Before building it, this asks the GPU:

  - cuOccupancyMaxActiveClusters for cluster sizes 1-16 at the decode's block (128 threads) with
    its shared memory (about 98 KiB: two blocks fit an SM) and with more than half an SM's (one);
  - a launch of 128 blocks (the B=1 decode's grid: 16 splits x 8 kv heads) in clusters of each
    size, whose blocks stay resident a while and record %smid: how many SMs the 128 blocks used
    and how many shared one.

Needs only the driver and NVRTC (no torch). Run on the GPU machine:
    python3 scripts/cluster_probe.py
"""
import ctypes

import nvrtc_ctypes  # scripts/nvrtc_ctypes.py (a script's own folder is on sys.path)
from nvrtc_ctypes import check

SRC = rb"""
extern "C" __global__ void probe(unsigned* out, long long spin) {
  extern __shared__ unsigned char smem[];
  unsigned smid, rank;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  const long long t0 = clock64();
  while (clock64() - t0 < spin) {
  }
  if (threadIdx.x == 0) {
    const unsigned id = blockIdx.x + gridDim.x * blockIdx.y;
    smem[0] = (unsigned char)smid;
    out[2 * id] = smid;
    out[2 * id + 1] = rank + smem[0] * 0u;
  }
}
"""


class LaunchAttr(ctypes.Structure):  # CUlaunchAttribute: id, 4 bytes of padding, a 64-byte value
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint * 16)]


class LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(LaunchAttr)), ("numAttrs", ctypes.c_uint)]


CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14


def main():
    cuda = ctypes.CDLL("libcuda.so.1")
    check(cuda.cuInit(0), "cuInit")
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    check(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    check(cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    sms = ctypes.c_int()
    check(cuda.cuDeviceGetAttribute(ctypes.byref(sms), 16, dev), "cuDeviceGetAttribute")  # MULTIPROCESSOR_COUNT
    mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
    check(cuda.cuModuleLoadData(ctypes.byref(mod), nvrtc_ctypes.cubin(SRC, options=("--std=c++17",))), "cuModuleLoadData")
    check(cuda.cuModuleGetFunction(ctypes.byref(fn), mod, b"probe"), "cuModuleGetFunction")
    check(cuda.cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
          "cuFuncSetAttribute(non-portable cluster size)")
    blocks_x, blocks_y = 16, 8  # the B=1 decode's grid: 16 splits x 8 kv heads
    out = ctypes.c_uint64()
    check(cuda.cuMemAlloc_v2(ctypes.byref(out), 8 * blocks_x * blocks_y), "cuMemAlloc")
    print(f"{sms.value} SMs; 128 threads per block, a grid of {blocks_x} x {blocks_y} blocks")
    print(f"{'smem KiB':>8} {'cluster':>7} {'max active clusters':>19} {'SMs used':>8} {'SMs with 2+ blocks':>18}")
    for smem_kib in (98, 120):
        smem = smem_kib * 1024
        check(cuda.cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem),
              "cuFuncSetAttribute(shared memory)")
        for cs in (1, 2, 4, 8, 16):
            attr = LaunchAttr(id=CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION)
            attr.value[0], attr.value[1], attr.value[2] = cs, 1, 1
            cfg = LaunchConfig(blocks_x, blocks_y, 1, 128, 1, 1, smem, None, ctypes.pointer(attr), 1)
            active = ctypes.c_int(-1)
            rc = cuda.cuOccupancyMaxActiveClusters(ctypes.byref(active), fn, ctypes.byref(cfg))
            spin = ctypes.c_longlong(200_000)  # ~100 us at 1.98 GHz: every block resident together
            args = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.pointer(out), ctypes.c_void_p),
                                         ctypes.cast(ctypes.pointer(spin), ctypes.c_void_p))
            lrc = cuda.cuLaunchKernelEx(ctypes.byref(cfg), fn, args, None)
            if lrc == 0:
                check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
                host = (ctypes.c_uint * (2 * blocks_x * blocks_y))()
                check(cuda.cuMemcpyDtoH_v2(host, out, ctypes.sizeof(host)), "cuMemcpyDtoH")
                per_sm = {}
                for i in range(blocks_x * blocks_y):
                    per_sm[host[2 * i]] = per_sm.get(host[2 * i], 0) + 1
                used, shared = len(per_sm), sum(1 for v in per_sm.values() if v > 1)
                print(f"{smem_kib:>8} {cs:>7} {active.value if rc == 0 else f'error {rc}':>19} {used:>8} {shared:>18}")
            else:
                print(f"{smem_kib:>8} {cs:>7} {active.value if rc == 0 else f'error {rc}':>19}   launch failed: CUDA error {lrc}")


if __name__ == "__main__":
    main()
