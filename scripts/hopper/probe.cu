// Probes of the layouts templates/prefill_sm90a.cu relies on, each in isolation, through the very helpers
// the kernel uses (templates/common.cuh + templates/hopper.cuh, rendered for bf16 by
//   python3 scripts/hopper/render.py --probe-header --dtype bf16 -o BUILD/hopper_probe.cuh).
//
//   nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a -IBUILD scripts/hopper/probe.cu -o probe
//
// P1  TMA 2-D load, 128-byte swizzle, into 64-element panels + wgmma SS m64n128k16 / m64n64k16 (both K-major,
//     lbo 16, sbo 1024, +32 bytes per 16 columns, next panel after 4 steps), A from rows 0-63 and from rows
//     64-127 of a 128-row panel (the second consumer warpgroup's Q), vs a CPU Q.K^T.
// P2  wgmma RS m64n128k16 with V read MN-major (imm-trans-b 1): A from registers loaded in the documented
//     fragment layout; the descriptor's lbo/sbo both ways round (the kernel uses lbo = panel stride, sbo = 1024).
// P3  the kernel's exact chain: S = Q.K^T (SS), P = bf16(S) packed from the accumulator registers, O = P.V (RS).
// P4  TMA 4-D load of a token-major [B, N, H, D] tensor with padded token rows (strides in bytes), OOB rows
//     zero-filled; and of a head-major [B, H, N, D] tensor through the same dimension order (non-nested strides).
// P5  a fresh mbarrier's phase of parity 1 counts as complete (try_wait.parity 1 returns at once).
// Prints one PASS/FAIL line per probe and exits non-zero on any FAIL.
#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "hopper_probe.cuh"

#define CK(x)                                                                                           \
  do {                                                                                                  \
    cudaError_t e_ = (x);                                                                               \
    if (e_ != cudaSuccess) {                                                                            \
      fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #x, __FILE__, __LINE__, cudaGetErrorString(e_)); \
      exit(2);                                                                                          \
    }                                                                                                   \
  } while (0)

typedef CUresult (*PfnEncode)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
static PfnEncode g_encode = nullptr;

static void load_driver() {
  CK(cudaFree(0));
  cudaDriverEntryPointQueryResult q;
  void* fn = nullptr;
  CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q));
  if (!fn || q != cudaDriverEntryPointSuccess) {
    fprintf(stderr, "cuTensorMapEncodeTiled not found\n");
    exit(2);
  }
  g_encode = (PfnEncode)fn;
}

// ---- host bf16 -------------------------------------------------------------------------------------------
static uint16_t f2bf(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static float bf2f(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand() {  // uniform in [-1, 1)
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (float)((g_rng >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;
}

static int g_fail = 0;
static void report(bool ok, const char* name, const char* detail) {
  printf("%s %s %s\n", ok ? "PASS" : "FAIL", name, detail);
  fflush(stdout);
  if (!ok) g_fail++;
}

// 2-D bf16 matrix [rows x cols] row-major, box {64, box_rows}, 128-byte swizzle.
static CUtensorMap map2d(void* base, int rows, int cols, int box_rows) {
  CUtensorMap m;
  cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
  cuuint64_t strides[1] = {(cuuint64_t)cols * 2};
  cuuint32_t box[2] = {64, (cuuint32_t)box_rows};
  cuuint32_t es[2] = {1, 1};
  CUresult r = g_encode(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, base, dims, strides, box, es,
                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    fprintf(stderr, "cuTensorMapEncodeTiled (2-D) failed: %d\n", (int)r);
    exit(2);
  }
  return m;
}

__device__ __forceinline__ u32 aligned_smem(unsigned char* raw, unsigned char** gen) {
  const u32 a = fe_smem_addr(raw);
  const u32 b = (a + 1023u) & ~1023u;
  *gen = raw + (b - a);
  return b;
}

// Bounded wait (probes must never hang): returns false after ~2^26 tries.
__device__ bool probe_wait(u32 bar, u32 parity) {
  for (int i = 0; i < (1 << 26); ++i) {
    u32 done;
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    if (done) return true;
  }
  return false;
}

// ---- P1: SS ------------------------------------------------------------------------------------------------
// A: [128 x 128] (rows x K), B: [128 x 128] (N rows x K). out[64 x N] = A[a_row0 .. a_row0+63] . B[0..N-1]^T.
template <int N>
__global__ void __launch_bounds__(128, 1)
    probe_ss(const __grid_constant__ CUtensorMap ta, const __grid_constant__ CUtensorMap tb, float* out, int a_row0,
             int* err) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem;
  const u32 base = aligned_smem(smem_raw, &smem);
  const u32 sA = base, sB = base + 32768, bar = base + 65536;
  if (threadIdx.x == 0) {
    fe_mbar_init(bar, 1);
    fe_mbar_init_fence();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    fe_mbar_arrive_tx(bar, 65536);
    for (int p = 0; p < 2; ++p) {
      fe_tma_load_2d(sA + p * 16384, &ta, p * 64, 0, bar);
      fe_tma_load_2d(sB + p * 16384, &tb, p * 64, 0, bar);
    }
  }
  if (!probe_wait(bar, 0)) {
    atomicAdd(err, 1);
    return;
  }
  float d[N / 2];
  for (int i = 0; i < N / 2; ++i) d[i] = 0.f;
  const u64 da = fe_desc_sw128(sA + a_row0 * 128, 16, 1024);
  const u64 db = fe_desc_sw128(sB, 16, 1024);
  fe_wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk)
    fe_wgmma_ss(d, fe_desc_add(da, (kk / 4) * 16384 + (kk % 4) * 32), fe_desc_add(db, (kk / 4) * 16384 + (kk % 4) * 32),
                kk > 0 ? 1 : 0);
  fe_wgmma_commit();
  fe_wgmma_wait<0>();
  fe_fence_regs(d);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int g = 0; g < N / 8; ++g)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * warp + lane / 4 + 8 * (e >> 1);
      const int col = 8 * g + 2 * (lane % 4) + (e & 1);
      out[row * N + col] = d[4 * g + e];
    }
}

// ---- P2: RS with A from global in the documented fragment layout ------------------------------------------
// P: [64 x 128] (rows x keys) bf16 in global, V: [128 keys x 128 d] via TMA. out[64 x 128] = P . V.
__global__ void __launch_bounds__(128, 1)
    probe_rs(const __grid_constant__ CUtensorMap tv, const u16* P, float* out, u32 lbo, u32 sbo, int* err) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem;
  const u32 base = aligned_smem(smem_raw, &smem);
  const u32 sV = base, bar = base + 32768;
  if (threadIdx.x == 0) {
    fe_mbar_init(bar, 1);
    fe_mbar_init_fence();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    fe_mbar_arrive_tx(bar, 32768);
    for (int p = 0; p < 2; ++p) fe_tma_load_2d(sV + p * 16384, &tv, p * 64, 0, bar);
  }
  if (!probe_wait(bar, 0)) {
    atomicAdd(err, 1);
    return;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, quad = lane % 4;
  const int r0 = 16 * warp + lane / 4;
  // A fragment of keys 16k..16k+15: reg 0 (row r0, cols 2q, 2q+1), 1 (row r0+8), 2 (row r0, cols 8+2q..), 3 (row r0+8, 8+2q..).
  u32 a[32];
  for (int k = 0; k < 8; ++k)
    for (int r = 0; r < 4; ++r) {
      const int row = r0 + 8 * (r & 1);
      const int col = 16 * k + 8 * (r >> 1) + 2 * quad;
      a[4 * k + r] = (u32)P[row * 128 + col] | ((u32)P[row * 128 + col + 1] << 16);
    }
  float d[64];
  for (int i = 0; i < 64; ++i) d[i] = 0.f;
  const u64 dv = fe_desc_sw128(sV, lbo, sbo);
  fe_fence_regs(a);
  fe_wgmma_fence();
#pragma unroll
  for (int k = 0; k < 8; ++k) fe_wgmma_rs(d, a[4 * k], a[4 * k + 1], a[4 * k + 2], a[4 * k + 3], fe_desc_add(dv, k * 2048));
  fe_wgmma_commit();
  fe_wgmma_wait<0>();
  fe_fence_regs(d);
#pragma unroll
  for (int g = 0; g < 16; ++g)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = r0 + 8 * (e >> 1);
      const int col = 8 * g + 2 * quad + (e & 1);
      out[row * 128 + col] = d[4 * g + e];
    }
}

// ---- P3: the kernel's chain S -> P -> O ----------------------------------------------------------------------
__global__ void __launch_bounds__(128, 1)
    probe_chain(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                const __grid_constant__ CUtensorMap tv, float* out, int* err) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem;
  const u32 base = aligned_smem(smem_raw, &smem);
  const u32 sQ = base, sK = base + 32768, sV = base + 65536, bar = base + 98304;
  if (threadIdx.x == 0) {
    fe_mbar_init(bar, 1);
    fe_mbar_init_fence();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    fe_mbar_arrive_tx(bar, 98304);
    for (int p = 0; p < 2; ++p) {
      fe_tma_load_2d(sQ + p * 16384, &tq, p * 64, 0, bar);
      fe_tma_load_2d(sK + p * 16384, &tk, p * 64, 0, bar);
      fe_tma_load_2d(sV + p * 16384, &tv, p * 64, 0, bar);
    }
  }
  if (!probe_wait(bar, 0)) {
    atomicAdd(err, 1);
    return;
  }
  float S[64];
  for (int i = 0; i < 64; ++i) S[i] = 0.f;
  const u64 dq = fe_desc_sw128(sQ, 16, 1024), dk = fe_desc_sw128(sK, 16, 1024);
  fe_wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk)
    fe_wgmma_ss(S, fe_desc_add(dq, (kk / 4) * 16384 + (kk % 4) * 32), fe_desc_add(dk, (kk / 4) * 16384 + (kk % 4) * 32),
                kk > 0 ? 1 : 0);
  fe_wgmma_commit();
  fe_wgmma_wait<0>();
  fe_fence_regs(S);
  u32 P[32];
  for (int j = 0; j < 32; ++j) P[j] = fe_pack2(S[2 * j], S[2 * j + 1]);
  float O[64];
  for (int i = 0; i < 64; ++i) O[i] = 0.f;
  const u64 dv = fe_desc_sw128(sV, 16384, 1024);
  fe_fence_regs(P);
  fe_fence_regs(O);
  fe_wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) fe_wgmma_rs(O, P[4 * kk], P[4 * kk + 1], P[4 * kk + 2], P[4 * kk + 3], fe_desc_add(dv, kk * 2048));
  fe_wgmma_commit();
  fe_wgmma_wait<0>();
  fe_fence_regs(O);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int g = 0; g < 16; ++g)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * warp + lane / 4 + 8 * (e >> 1);
      const int col = 8 * g + 2 * (lane % 4) + (e & 1);
      out[row * 128 + col] = O[4 * g + e];
    }
}

// ---- P4: TMA 4-D box -> raw shared bytes ----------------------------------------------------------------------
__global__ void __launch_bounds__(32, 1)
    probe_tma4(const __grid_constant__ CUtensorMap tm, int c0, int c1, int c2, int c3, unsigned char* out, int* err) {
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem;
  const u32 base = aligned_smem(smem_raw, &smem);
  const u32 bar = base + 8192;
  if (threadIdx.x == 0) {
    fe_mbar_init(bar, 1);
    fe_mbar_init_fence();
  }
  __syncwarp();
  if (threadIdx.x == 0) {
    fe_mbar_arrive_tx(bar, 8192);
    fe_tma_load_4d(base, &tm, c0, c1, c2, c3, bar);
  }
  if (!probe_wait(bar, 0)) {
    atomicAdd(err, 1);
    return;
  }
  for (int i = threadIdx.x; i < 8192; i += 32) out[i] = smem[i];
}

// ---- P5: parity of a fresh barrier ----------------------------------------------------------------------------
__global__ void probe_parity(int* res) {
  __shared__ __align__(8) unsigned long long b;
  const u32 bar = fe_smem_addr(&b);
  if (threadIdx.x == 0) {
    fe_mbar_init(bar, 1);
    fe_mbar_init_fence();
    u32 done1, done0;
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], 1;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done1)
        : "r"(bar)
        : "memory");
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.test_wait.parity.shared::cta.b64 p, [%1], 0;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done0)
        : "r"(bar)
        : "memory");
    fe_mbar_arrive(bar);  // completes phase 0
    u32 done0b;
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done0b)
        : "r"(bar)
        : "memory");
    res[0] = (int)done1;   // expect 1
    res[1] = (int)done0;   // expect 0
    res[2] = (int)done0b;  // expect 1
  }
}

// ---- host ---------------------------------------------------------------------------------------------------
static std::vector<uint16_t> rand_bf16(size_t n, float scale = 1.f) {
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = f2bf(frand() * scale);
  return v;
}
template <class T>
static T* to_dev(const std::vector<T>& h) {
  T* d;
  CK(cudaMalloc(&d, h.size() * sizeof(T)));
  CK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
static bool sync_ok(const char* what, int* derr) {
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    printf("FAIL %s: CUDA error %s (later probes cannot run)\n", what, cudaGetErrorString(e));
    exit(1);
  }
  int h = 0;
  CK(cudaMemcpy(&h, derr, 4, cudaMemcpyDeviceToHost));
  CK(cudaMemset(derr, 0, 4));
  return h == 0;
}
static double rel_err(const std::vector<float>& got, const std::vector<double>& ref, int* nan_count) {
  double num = 0, den = 0;
  int nans = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) nans++;
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  *nan_count = nans;
  return nans ? INFINITY : std::sqrt(num / (den > 0 ? den : 1));
}

int main() {
  load_driver();
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  printf("probe: %s, sm_%d%d, %d SMs\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  int* derr;
  CK(cudaMalloc(&derr, 4));
  CK(cudaMemset(derr, 0, 4));
  char buf[256];

  // Shared data: A/Q [128 x 128], B/K [128 x 128], V [128 x 128], P [64 x 128].
  auto hA = rand_bf16(128 * 128), hB = rand_bf16(128 * 128), hV = rand_bf16(128 * 128), hP = rand_bf16(64 * 128);
  u16 *dA = to_dev(hA), *dB = to_dev(hB), *dV = to_dev(hV), *dP = to_dev(hP);
  CUtensorMap tA = map2d(dA, 128, 128, 128), tB = map2d(dB, 128, 128, 128), tV = map2d(dV, 128, 128, 128);
  float* dout;
  CK(cudaMalloc(&dout, 64 * 128 * 4));
  std::vector<float> out(64 * 128);

  // P1
  CK(cudaFuncSetAttribute(probe_ss<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, 65536 + 2048));
  CK(cudaFuncSetAttribute(probe_ss<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, 65536 + 2048));
  for (int n : {128, 64}) {
    for (int a_row0 : {0, 64}) {
      CK(cudaMemset(dout, 0xff, 64 * 128 * 4));
      if (n == 128)
        probe_ss<128><<<1, 128, 65536 + 2048>>>(tA, tB, dout, a_row0, derr);
      else
        probe_ss<64><<<1, 128, 65536 + 2048>>>(tA, tB, dout, a_row0, derr);
      const bool waited = sync_ok("P1", derr);
      CK(cudaMemcpy(out.data(), dout, 64 * n * 4, cudaMemcpyDeviceToHost));
      std::vector<double> ref(64 * n);
      for (int i = 0; i < 64; ++i)
        for (int j = 0; j < n; ++j) {
          double s = 0;
          for (int k = 0; k < 128; ++k) s += (double)bf2f(hA[(a_row0 + i) * 128 + k]) * bf2f(hB[j * 128 + k]);
          ref[i * n + j] = s;
        }
      std::vector<float> got(out.begin(), out.begin() + 64 * n);
      int nans;
      const double e = rel_err(got, ref, &nans);
      snprintf(buf, sizeof buf, "m64n%dk16 SS, A rows %d..%d: rel err %.2e (tol 1e-5), non-finite %d%s", n, a_row0,
               a_row0 + 63, e, nans, waited ? "" : ", TMA never completed");
      report(waited && e < 1e-5, "P1-wgmma-SS-sw128", buf);
    }
  }

  // P2 (both lbo/sbo choices)
  CK(cudaFuncSetAttribute(probe_rs, cudaFuncAttributeMaxDynamicSharedMemorySize, 32768 + 2048));
  {
    std::vector<double> ref(64 * 128);
    for (int i = 0; i < 64; ++i)
      for (int j = 0; j < 128; ++j) {
        double s = 0;
        for (int k = 0; k < 128; ++k) s += (double)bf2f(hP[i * 128 + k]) * bf2f(hV[k * 128 + j]);
        ref[i * 128 + j] = s;
      }
    const u32 choices[2][2] = {{16384, 1024}, {1024, 16384}};
    for (int c = 0; c < 2; ++c) {
      CK(cudaMemset(dout, 0xff, 64 * 128 * 4));
      probe_rs<<<1, 128, 32768 + 2048>>>(tV, dP, dout, choices[c][0], choices[c][1], derr);
      const bool waited = sync_ok("P2", derr);
      CK(cudaMemcpy(out.data(), dout, 64 * 128 * 4, cudaMemcpyDeviceToHost));
      int nans;
      const double e = rel_err(out, ref, &nans);
      snprintf(buf, sizeof buf, "m64n128k16 RS, V MN-major, lbo=%u sbo=%u%s: rel err %.2e (tol 1e-5), non-finite %d",
               choices[c][0], choices[c][1], c == 0 ? " (the kernel's choice)" : " (swapped)", e, nans);
      if (c == 0)
        report(waited && e < 1e-5, "P2-wgmma-RS-transposed-V", buf);
      else
        printf("INFO P2-swapped %s -> %s\n", buf, e < 1e-5 ? "ALSO PASSES" : "fails (as expected)");
    }
  }

  // P3
  CK(cudaFuncSetAttribute(probe_chain, cudaFuncAttributeMaxDynamicSharedMemorySize, 98304 + 2048));
  {
    CK(cudaMemset(dout, 0xff, 64 * 128 * 4));
    probe_chain<<<1, 128, 98304 + 2048>>>(tA, tB, tV, dout, derr);
    const bool waited = sync_ok("P3", derr);
    CK(cudaMemcpy(out.data(), dout, 64 * 128 * 4, cudaMemcpyDeviceToHost));
    std::vector<double> ps(64 * 128), ref(64 * 128);
    for (int i = 0; i < 64; ++i)
      for (int j = 0; j < 128; ++j) {
        double s = 0;
        for (int k = 0; k < 128; ++k) s += (double)bf2f(hA[i * 128 + k]) * bf2f(hB[j * 128 + k]);
        ps[i * 128 + j] = bf2f(f2bf((float)s));
      }
    for (int i = 0; i < 64; ++i)
      for (int j = 0; j < 128; ++j) {
        double s = 0;
        for (int k = 0; k < 128; ++k) s += ps[i * 128 + k] * bf2f(hV[k * 128 + j]);
        ref[i * 128 + j] = s;
      }
    int nans;
    const double e = rel_err(out, ref, &nans);
    snprintf(buf, sizeof buf, "S=Q.K^T (SS) -> P=bf16(S) from accumulators -> O=P.V (RS): rel err %.2e (tol 1e-2), non-finite %d",
             e, nans);
    report(waited && e < 1e-2, "P3-S-to-P-chain", buf);
  }

  // P4: token-major [B=2, N=37, H=3, D=128], token stride 3*128+8, batch stride 37*392+64 (elements).
  CK(cudaFuncSetAttribute(probe_tma4, cudaFuncAttributeMaxDynamicSharedMemorySize, 8192 + 2048));
  for (int layout = 0; layout < 2; ++layout) {
    const int B = 2, N = 37, H = 3, D = 128;
    // layout 0: [B, N, H, D] with padded token rows; layout 1: [B, H, N, D] (head-major).
    const long long sh = layout == 0 ? D : (long long)(N * D + 24);
    const long long st = layout == 0 ? (long long)H * D + 8 : D;
    const long long sb = layout == 0 ? N * st + 64 : H * sh + 40;
    std::vector<uint16_t> hx((size_t)(B * sb), 0);
    for (auto& x : hx) x = f2bf(frand());
    u16* dx = to_dev(hx);
    CUtensorMap m;
    cuuint64_t dims[4] = {(cuuint64_t)D, (cuuint64_t)H, (cuuint64_t)N, (cuuint64_t)B};
    cuuint64_t strides[3] = {(cuuint64_t)sh * 2, (cuuint64_t)st * 2, (cuuint64_t)sb * 2};
    cuuint32_t box[4] = {64, 1, 64, 1};
    cuuint32_t es[4] = {1, 1, 1, 1};
    CUresult r = g_encode(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, dx, dims, strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
                          CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
      snprintf(buf, sizeof buf, "%s: cuTensorMapEncodeTiled failed (%d)", layout == 0 ? "token-major" : "head-major",
               (int)r);
      report(false, "P4-tma-4d", buf);
      continue;
    }
    unsigned char* dbox;
    CK(cudaMalloc(&dbox, 8192));
    const int coords[2][4] = {{64, 1, 0, 1}, {0, 2, 32, 0}};
    for (auto& c : coords) {
      CK(cudaMemset(dbox, 0xee, 8192));
      probe_tma4<<<1, 32, 8192 + 2048>>>(m, c[0], c[1], c[2], c[3], dbox, derr);
      const bool waited = sync_ok("P4", derr);
      std::vector<uint16_t> hb(4096);
      CK(cudaMemcpy(hb.data(), dbox, 8192, cudaMemcpyDeviceToHost));
      int bad = 0, oob_rows = 0;
      for (int row = 0; row < 64; ++row) {
        const int n = c[2] + row;
        if (n >= N) oob_rows++;
        for (int e = 0; e < 64; ++e) {
          // 128-byte swizzle: 16-byte chunk j of row `row` sits at chunk j ^ (row % 8) of that 128-byte row
          // (rows are 128 bytes apart, the pattern repeats every 8 rows = 1024 bytes).
          const int chunk = (e / 8) ^ (row % 8);
          const uint16_t got = hb[row * 64 + chunk * 8 + e % 8];
          const uint16_t want = n < N ? hx[(size_t)(c[3] * sb + (long long)n * st + c[1] * sh + c[0] + e)] : 0;
          if (got != want) bad++;
        }
      }
      snprintf(buf, sizeof buf, "%s box at (d=%d, h=%d, n=%d, b=%d): %d of 4096 elements wrong, %d rows zero-filled%s",
               layout == 0 ? "token-major padded" : "head-major (non-nested strides)", c[0], c[1], c[2], c[3], bad,
               oob_rows, waited ? "" : ", TMA never completed");
      report(waited && bad == 0, layout == 0 ? "P4-tma-4d-strided-oob" : "P4-tma-4d-head-major", buf);
    }
    CK(cudaFree(dbox));
    CK(cudaFree(dx));
  }

  // P5
  {
    int* dres;
    CK(cudaMalloc(&dres, 12));
    probe_parity<<<1, 32>>>(dres);
    sync_ok("P5", derr);
    int res[3];
    CK(cudaMemcpy(res, dres, 12, cudaMemcpyDeviceToHost));
    snprintf(buf, sizeof buf, "fresh barrier: wait(parity 1)=%d (want 1), test(parity 0)=%d (want 0); after one arrive "
             "wait(parity 0)=%d (want 1)", res[0], res[1], res[2]);
    report(res[0] == 1 && res[1] == 0 && res[2] == 1, "P5-mbarrier-parity", buf);
  }

  printf("probe: %d failed\n", g_fail);
  return g_fail ? 1 : 0;
}
