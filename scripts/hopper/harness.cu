// Correctness and speed of the Hopper prefill kernels (templates/prefill_sm90a.cu) on the GPU machine.
//
// The kernels are rendered (scripts/hopper/render.py --set device --outdir BUILD) and compiled to cubins
// (BUILD/<key>.cubin, see run_on_device.sh); this program loads them through the driver API exactly as
// the Rust loader would: cuModuleLoadData, cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES), one
// by-value parameter block (PrefillSm90Params, 768 bytes) with tensor maps encoded by
// cuTensorMapEncodeTiled, cuLaunchKernel. Driver entry points come from cudaGetDriverEntryPointByVersion,
// so no -lcuda is needed (linking it does no harm).
//
//   nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a scripts/hopper/harness.cu -o harness
//   ./harness BUILD [--check] [--time] [--only SUBSTRING | --key KEY] [--timeout SECONDS]
//
// --check: for every manifest entry, a grid of cases (N = 1, 7, C-1, a non-multiple of the tile, 3W+C+5;
//   B = 2; GQA and MQA and H = Hkv; padded (strided) rows; nc > N/C; rows with logits of +-1e4; a one-CTA and
//   a three-CTA persistent grid; the dynamic tile counter, launched twice) against a float64 CPU reference
//   of docs' contract. Pass: ||O - ref|| / ||ref|| <= 2e-3 (f16) / 8e-3 (bf16); |LSE - ref| <= 1e-3 +
//   4 sqrt(D) eps32 m (m = s max_j sum_d |q_d k_jd|, the project's bound for rows with huge logits); no
//   NaN; nothing written outside O's and LSE's rows (padding and a guard stay poisoned).
// --time: B=1 N=16384 H=16 bf16 for D=128 W=512 C=64 (block, sliding) and D=64 W=256 C=16 (block): CUDA
//   events, 5 warm-ups, median of 30, inputs rotated over > 3x L2; effective TFLOP/s counts 4 D flops per
//   visible (query, key-or-summary) pair; "computed" counts every key block a tile visits.
// One PASS/FAIL line per case, a summary table last; exit status 1 on any FAIL, 3 on a hang.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#define CK(x)                                                                                           \
  do {                                                                                                  \
    cudaError_t e_ = (x);                                                                               \
    if (e_ != cudaSuccess) {                                                                            \
      fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #x, __FILE__, __LINE__, cudaGetErrorString(e_)); \
      fflush(stdout);                                                                                   \
      exit(2);                                                                                          \
    }                                                                                                   \
  } while (0)

// ---- driver API through entry points ----------------------------------------------------------------------
typedef CUresult (*PfnEncode)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
typedef CUresult (*PfnModLoad)(CUmodule*, const void*);
typedef CUresult (*PfnGetFn)(CUfunction*, CUmodule, const char*);
typedef CUresult (*PfnGetGlobal)(CUdeviceptr*, size_t*, CUmodule, const char*);
typedef CUresult (*PfnSetAttr)(CUfunction, CUfunction_attribute, int);
typedef CUresult (*PfnLaunch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                              CUstream, void**, void**);
typedef CUresult (*PfnErrStr)(CUresult, const char**);
static struct {
  PfnEncode encode;
  PfnModLoad modload;
  PfnGetFn getfn;
  PfnGetGlobal getglobal;
  PfnSetAttr setattr;
  PfnLaunch launch;
  PfnErrStr errstr;
} drv;

template <class F>
static void entry(const char* sym, F* out) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q;
  CK(cudaGetDriverEntryPointByVersion(sym, &fn, 12000, cudaEnableDefault, &q));
  if (!fn || q != cudaDriverEntryPointSuccess) {
    fprintf(stderr, "driver entry point %s not found\n", sym);
    exit(2);
  }
  *out = (F)fn;
}
static void load_driver() {
  CK(cudaFree(0));  // primary context current on this thread
  entry("cuTensorMapEncodeTiled", &drv.encode);
  entry("cuModuleLoadData", &drv.modload);
  entry("cuModuleGetFunction", &drv.getfn);
  entry("cuModuleGetGlobal", &drv.getglobal);
  entry("cuFuncSetAttribute", &drv.setattr);
  entry("cuLaunchKernel", &drv.launch);
  entry("cuGetErrorString", &drv.errstr);
}
static std::string cu_err(CUresult r) {
  const char* s = nullptr;
  drv.errstr(r, &s);
  return s ? s : "?";
}

// ---- parameter blocks --------------------------------------------------------------------------------------
// PrefillSm90Params of templates/prefill_sm90a.cu, field for field.
struct Sm90Params {  // aligned like its CUtensorMap members (128 bytes in CUDA 13's cuda.h)
  CUtensorMap tm_q, tm_k, tm_v, tm_ks, tm_vs;
  uint16_t* o;
  float* lse;
  int64_t o_sb, o_st, o_sh;
  int64_t lse_sb, lse_sh;
  int n, h, hkv, nc;
  float scale_log2;
  int batch;
  int* tile_counter;
  int reserved[10];
};
static_assert(sizeof(Sm90Params) == 768 && alignof(Sm90Params) >= 64, "PrefillSm90Params is 768 bytes");
static_assert(offsetof(Sm90Params, tm_k) == 128 && offsetof(Sm90Params, tm_vs) == 512, "layout");
static_assert(offsetof(Sm90Params, o) == 640 && offsetof(Sm90Params, lse) == 648, "layout");
static_assert(offsetof(Sm90Params, o_sb) == 656 && offsetof(Sm90Params, lse_sh) == 688, "layout");
static_assert(offsetof(Sm90Params, n) == 696 && offsetof(Sm90Params, scale_log2) == 712, "layout");
static_assert(offsetof(Sm90Params, batch) == 716 && offsetof(Sm90Params, tile_counter) == 720, "layout");

// PrefillParams of templates/prefill.cu (today's mma.sync kernel, the baseline).
struct BaseParams {
  const uint16_t *q, *k, *v, *ks, *vs;
  uint16_t* o;
  float* lse;
  int64_t q_sb, q_st, q_sh, k_sb, k_st, k_sh, v_sb, v_st, v_sh, ks_sb, ks_st, ks_sh, vs_sb, vs_st, vs_sh;
  int64_t o_sb, o_st, o_sh, lse_sb, lse_sh;
  int n, h, hkv, nc;
  float scale_log2;
  int reserved;
};
static_assert(sizeof(BaseParams) == 240, "PrefillParams is 240 bytes");

// ---- manifest ----------------------------------------------------------------------------------------------
struct Entry {
  std::string kind, key, cufile, defines, kernel, mode, dtype;
  int D, W, C, BM, BN, warps, stages, smem;
  bool sliding() const { return mode == "sliding"; }
  bool bf16() const { return dtype == "bf16"; }
  CUfunction fn = nullptr;
  bool loaded = false;
};
static std::vector<Entry> read_manifest(const std::string& dir) {
  std::vector<Entry> out;
  std::ifstream f(dir + "/manifest.tsv");
  if (!f) {
    fprintf(stderr, "cannot read %s/manifest.tsv\n", dir.c_str());
    exit(2);
  }
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream s(line);
    Entry e;
    std::getline(s, e.kind, '\t');
    std::getline(s, e.key, '\t');
    std::getline(s, e.cufile, '\t');
    std::getline(s, e.defines, '\t');
    std::getline(s, e.kernel, '\t');
    std::string t;
    auto num = [&]() {
      std::getline(s, t, '\t');
      return atoi(t.c_str());
    };
    e.D = num();
    e.W = num();
    e.C = num();
    std::getline(s, e.mode, '\t');
    std::getline(s, e.dtype, '\t');
    e.BM = num();
    e.BN = num();
    e.warps = num();
    e.stages = num();
    e.smem = num();
    out.push_back(e);
  }
  return out;
}

static bool load_entry(Entry& e, const std::string& dir, std::string* why) {
  std::ifstream f(dir + "/" + e.key + ".cubin", std::ios::binary);
  if (!f) {
    *why = "no cubin " + e.key + ".cubin (compile failed?)";
    return false;
  }
  std::vector<char> img((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  CUmodule mod;
  CUresult r = drv.modload(&mod, img.data());
  if (r != CUDA_SUCCESS) {
    *why = "cuModuleLoadData: " + cu_err(r);
    return false;
  }
  r = drv.getfn(&e.fn, mod, e.kernel.c_str());
  if (r != CUDA_SUCCESS) {
    *why = "cuModuleGetFunction(" + e.kernel + "): " + cu_err(r);
    return false;
  }
  r = drv.setattr(e.fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, e.smem);
  if (r != CUDA_SUCCESS) {
    *why = "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES, " + std::to_string(e.smem) + "): " + cu_err(r);
    return false;
  }
  if (e.kind == "sm90") {
    CUdeviceptr gp;
    size_t gs;
    r = drv.getglobal(&gp, &gs, mod, (e.kernel + "_smem_bytes").c_str());
    if (r != CUDA_SUCCESS) {
      *why = "cuModuleGetGlobal(" + e.kernel + "_smem_bytes): " + cu_err(r);
      return false;
    }
    int v = 0;
    CK(cudaMemcpy(&v, (void*)gp, 4, cudaMemcpyDeviceToHost));
    if (v != e.smem) {
      *why = "kernel says " + std::to_string(v) + " bytes of dynamic shared memory, manifest (render.py) " +
             std::to_string(e.smem);
      return false;
    }
  }
  e.loaded = true;
  return true;
}

// ---- host half types ---------------------------------------------------------------------------------------
static uint16_t f2bf(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static float bf2f(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint16_t f2h(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t fe = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (fe == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0u));
  const int e = (int)fe - 127 + 15;
  if (e >= 31) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return (uint16_t)sign;
    mant |= 0x800000u;
    const int shift = 14 - e;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (h & 1u))) h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = sign | ((uint32_t)e << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return (uint16_t)h;
}
static float h2f(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  float f;
  if (e == 0) {
    f = std::ldexp((float)m, -24);
    return sign ? -f : f;
  }
  uint32_t u = e == 31 ? (sign | 0x7f800000u | (m << 13)) : (sign | ((e - 15 + 127) << 23) | (m << 13));
  memcpy(&f, &u, 4);
  return f;
}

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  float uni() { return (float)((next() >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f; }  // [-1, 1)
};

// ---- problems ------------------------------------------------------------------------------------------------
struct Case {
  std::string name;
  int B, N, H, Hkv;
  int nc_extra;  // nc = N / C + nc_extra
  bool strided;  // token rows padded by 8 elements, batch and head rows of LSE padded
  bool large;    // rows with logits of +-1e4
  int grid;      // 0: min(tiles, SMs)
  bool dynamic;  // tile counter (launched twice: the second launch checks the counter was left at zero)
};

// A token-major tensor [B, rows, G, D] in storage type, with strides in elements.
struct T4 {
  int B = 0, rows = 0, G = 0, D = 0;
  int64_t sb = 0, st = 0, sh = 0;
  size_t alloc = 0;  // elements, guard included
  std::vector<uint16_t> h;
  uint16_t* d = nullptr;
  void shape(int b, int r, int g, int dd, bool strided) {
    B = b, rows = r, G = g, D = dd;
    sh = D;
    st = (int64_t)G * D + (strided ? 8 : 0);
    sb = (int64_t)rows * st + (strided ? 32 : 0);
    alloc = (size_t)(B * sb) + 64;
  }
  size_t at(int b, int r, int g, int e) const { return (size_t)(b * sb + r * st + g * sh + e); }
};

struct Run {
  int B, N, H, Hkv, nc, D;
  float scale;
  bool bf16;
  T4 q, k, v, ks, vs, o;
  float* lse = nullptr;
  int64_t lse_sb = 0, lse_sh = 0;
  size_t lse_alloc = 0;
  std::vector<float> lse_h;
};

static float to_f(uint16_t x, bool bf16) { return bf16 ? bf2f(x) : h2f(x); }
static uint16_t from_f(float x, bool bf16) { return bf16 ? f2bf(x) : f2h(x); }

static void alloc_dev(T4& t) {
  CK(cudaMalloc(&t.d, t.alloc * 2));
  CK(cudaMemcpy(t.d, t.h.data(), t.alloc * 2, cudaMemcpyHostToDevice));
}

static void make_inputs(Run& r, const Case& c, const Entry& e, uint64_t seed, bool fill_host = true) {
  r.B = c.B, r.N = c.N, r.H = c.H, r.Hkv = c.Hkv, r.D = e.D, r.bf16 = e.bf16();
  r.nc = c.N / e.C + c.nc_extra;
  r.scale = 1.f / std::sqrt((float)e.D);
  r.q.shape(c.B, c.N, c.H, e.D, c.strided);
  r.k.shape(c.B, c.N, c.Hkv, e.D, c.strided);
  r.v.shape(c.B, c.N, c.Hkv, e.D, c.strided);
  const int ncr = r.nc > 0 ? r.nc : 1;  // a summary tensor of one row stands in when nc == 0
  r.ks.shape(c.B, ncr, c.Hkv, e.D, c.strided);
  r.vs.shape(c.B, ncr, c.Hkv, e.D, c.strided);
  r.o.shape(c.B, c.N, c.H, e.D, c.strided);
  r.lse_sh = c.N + (c.strided ? 4 : 0);
  r.lse_sb = (int64_t)c.H * r.lse_sh + (c.strided ? 8 : 0);
  r.lse_alloc = (size_t)(c.B * r.lse_sb) + 64;
  if (!fill_host) return;
  Rng rng(seed);
  for (T4* t : {&r.q, &r.k, &r.v, &r.ks, &r.vs}) {
    t->h.resize(t->alloc);
    for (auto& x : t->h) x = from_f(rng.uni(), r.bf16);
  }
  if (c.large) {
    // Rows with one huge logit: row i1 meets its +1e4 key in its local window (block 0: the diagonal), row i2
    // in summary 0 (the last blocks a tile visits: the running max jumps at the end), row i3 gets a -1e4 key.
    const float a = std::sqrt(1e4f / (r.scale * e.D));  // q = a u, k = a u: s q.k = 1e4
    auto hot = [&](T4& qt, int b, int i, int h, T4& kt, int j, int hk, float sign) {
      for (int d = 0; d < e.D; ++d) {
        const float u = (rng.next() & 1) ? 1.f : -1.f;
        qt.h[qt.at(b, i, h, d)] = from_f(a * u, r.bf16);
        kt.h[kt.at(b, j, hk, d)] = from_f(sign * a * u, r.bf16);
      }
    };
    const int grp = c.H / c.Hkv;
    const int h2 = c.H > 1 ? 1 : 0;
    for (int b = 0; b < c.B; ++b) {
      const int i1 = c.N - 1, i2 = std::max(c.N - 2, e.C), i3 = c.N / 2;
      hot(r.q, b, i1, 0, r.k, i1 > 0 ? i1 - 1 : 0, 0, 1.f);
      if (r.nc > 0 && c.N > e.C) hot(r.q, b, i2, h2, r.ks, 0, h2 / grp, 1.f);
      hot(r.q, b, i3, c.H - 1, r.k, i3, (c.H - 1) / grp, -1.f);
    }
  }
  r.o.h.assign(r.o.alloc, 0xffff);  // NaN in f16 and bf16
  r.lse_h.assign(r.lse_alloc, NAN);
  for (T4* t : {&r.q, &r.k, &r.v, &r.ks, &r.vs, &r.o}) alloc_dev(*t);
  CK(cudaMalloc(&r.lse, r.lse_alloc * 4));
  CK(cudaMemcpy(r.lse, r.lse_h.data(), r.lse_alloc * 4, cudaMemcpyHostToDevice));
}
static void free_run(Run& r) {
  for (T4* t : {&r.q, &r.k, &r.v, &r.ks, &r.vs, &r.o}) {
    if (t->d) CK(cudaFree(t->d));
    t->d = nullptr;
  }
  if (r.lse) CK(cudaFree(r.lse));
  r.lse = nullptr;
}

// Tensor map over a [B, rows, G, D] tensor: rank 4, dims {D, G, rows, B} (innermost first), strides in bytes
// {sh, st, sb} * 2, box {64, 1, box_rows, 1}, element strides 1, no interleave, 128-byte swizzle, L2 promotion
// 128 bytes, out-of-bounds elements zero-filled.
static bool encode(CUtensorMap* m, const T4& t, int box_rows, bool bf16, std::string* why) {
  cuuint64_t dims[4] = {(cuuint64_t)t.D, (cuuint64_t)t.G, (cuuint64_t)t.rows, (cuuint64_t)t.B};
  cuuint64_t strides[3] = {(cuuint64_t)t.sh * 2, (cuuint64_t)t.st * 2, (cuuint64_t)t.sb * 2};
  cuuint32_t box[4] = {64, 1, (cuuint32_t)box_rows, 1};
  cuuint32_t es[4] = {1, 1, 1, 1};
  CUresult r = drv.encode(m, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, t.d, dims,
                          strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                          CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    *why = "cuTensorMapEncodeTiled: " + cu_err(r);
    return false;
  }
  return true;
}

static int g_sms = 132;
static double g_timeout = 20.0;

static int window_start(int i, int W, bool sliding) { return sliding ? std::max(i - W + 1, 0) : (i / W) * W; }

// Host replica of fe_tile: key blocks a tile visits (for the "computed" flop count).
static long long tiles_blocks(int N, int nc, const Entry& e) {
  long long total = 0;
  for (int m0 = 0; m0 < N; m0 += e.BM) {
    const int m_end = std::min(m0 + e.BM, N);
    const int hi = (m_end - 1) / e.BN;
    const int nl = hi - window_start(m0, e.W, e.sliding()) / e.BN + 1;
    const int ns = std::min((m_end - 1) / e.C, nc);
    total += nl + (ns + e.BN - 1) / e.BN;
  }
  return total;
}
static long long visible_pairs(int N, int nc, const Entry& e) {
  long long t = 0;
  for (int i = 0; i < N; ++i) t += (i - window_start(i, e.W, e.sliding()) + 1) + std::min(i / e.C, nc);
  return t;
}

static bool wait_stream(cudaStream_t s, std::string* why) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    cudaError_t q = cudaStreamQuery(s);
    if (q == cudaSuccess) return true;
    if (q != cudaErrorNotReady) {
      *why = std::string("CUDA error: ") + cudaGetErrorString(q);
      return false;
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > g_timeout) {
      printf("FAIL hang: a launch did not finish within %.0f s (barrier deadlock?); giving up\n", g_timeout);
      fflush(stdout);
      std::_Exit(3);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// Launches entry e on run r. For sm90 kernels `grid` 0 means min(tiles, SMs); counter may be null.
static bool launch(const Entry& e, Run& r, int grid, int* counter, cudaStream_t s, std::string* why) {
  if (e.kind == "sm90") {
    Sm90Params p;
    memset(&p, 0, sizeof p);
    if (!encode(&p.tm_q, r.q, e.BM, r.bf16, why) || !encode(&p.tm_k, r.k, e.BN, r.bf16, why) ||
        !encode(&p.tm_v, r.v, e.BN, r.bf16, why) || !encode(&p.tm_ks, r.ks, e.BN, r.bf16, why) ||
        !encode(&p.tm_vs, r.vs, e.BN, r.bf16, why))
      return false;
    p.o = r.o.d;
    p.lse = r.lse;
    p.o_sb = r.o.sb, p.o_st = r.o.st, p.o_sh = r.o.sh;
    p.lse_sb = r.lse_sb, p.lse_sh = r.lse_sh;
    p.n = r.N, p.h = r.H, p.hkv = r.Hkv, p.nc = r.nc;
    p.scale_log2 = r.scale * 1.4426950408889634f;
    p.batch = r.B;
    p.tile_counter = counter;
    const int tiles = (r.N + e.BM - 1) / e.BM * r.H * r.B;
    const int g = grid > 0 ? std::min(grid, tiles) : std::min(tiles, g_sms);
    void* args[] = {&p};
    CUresult res = drv.launch(e.fn, g, 1, 1, e.warps * 32, 1, 1, e.smem, s, args, nullptr);
    if (res != CUDA_SUCCESS) {
      *why = "cuLaunchKernel: " + cu_err(res);
      return false;
    }
  } else {
    BaseParams p;
    memset(&p, 0, sizeof p);
    p.q = r.q.d, p.k = r.k.d, p.v = r.v.d, p.ks = r.ks.d, p.vs = r.vs.d, p.o = r.o.d, p.lse = r.lse;
    p.q_sb = r.q.sb, p.q_st = r.q.st, p.q_sh = r.q.sh;
    p.k_sb = r.k.sb, p.k_st = r.k.st, p.k_sh = r.k.sh;
    p.v_sb = r.v.sb, p.v_st = r.v.st, p.v_sh = r.v.sh;
    p.ks_sb = r.ks.sb, p.ks_st = r.ks.st, p.ks_sh = r.ks.sh;
    p.vs_sb = r.vs.sb, p.vs_st = r.vs.st, p.vs_sh = r.vs.sh;
    p.o_sb = r.o.sb, p.o_st = r.o.st, p.o_sh = r.o.sh;
    p.lse_sb = r.lse_sb, p.lse_sh = r.lse_sh;
    p.n = r.N, p.h = r.H, p.hkv = r.Hkv, p.nc = r.nc;
    p.scale_log2 = r.scale * 1.4426950408889634f;
    void* args[] = {&p};
    CUresult res =
        drv.launch(e.fn, (r.N + e.BM - 1) / e.BM, r.H, r.B, e.warps * 32, 1, 1, e.smem, s, args, nullptr);
    if (res != CUDA_SUCCESS) {
      *why = "cuLaunchKernel: " + cu_err(res);
      return false;
    }
  }
  return true;
}

// ---- reference and comparison --------------------------------------------------------------------------------
struct Errors {
  double o_rel = 0, lse_worst = 0;  // lse_worst: max |err| / bound (pass <= 1)
  double lse_max_abs = 0;
  long long nan_o = 0, nan_lse = 0, bad_pad = 0, bad_lse_rows = 0;
};

static Errors compare(const Run& r, const Entry& e, int nthreads) {
  std::vector<uint16_t> o(r.o.alloc);
  std::vector<float> lse(r.lse_alloc);
  CK(cudaMemcpy(o.data(), r.o.d, r.o.alloc * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(lse.data(), r.lse, r.lse_alloc * 4, cudaMemcpyDeviceToHost));
  const int rows = r.B * r.H * r.N;
  const int grp = r.H / r.Hkv;
  std::vector<double> num(nthreads, 0), den(nthreads, 0), lworst(nthreads, 0), lmax(nthreads, 0);
  std::vector<long long> nano(nthreads, 0), nanl(nthreads, 0), badl(nthreads, 0);
  // Inputs as float once (the storage values, exactly), indexed like the tensors.
  auto widen = [&](const T4& t) {
    std::vector<float> f(t.alloc);
    for (size_t x = 0; x < t.alloc; ++x) f[x] = to_f(t.h[x], r.bf16);
    return f;
  };
  const std::vector<float> fq = widen(r.q), fk = widen(r.k), fv = widen(r.v), fks = widen(r.ks), fvs = widen(r.vs);
  std::atomic<int> next{0};
  auto work = [&](int tid) {
    std::vector<double> logit, acc(e.D), qd(e.D);
    std::vector<const float*> src;
    for (;;) {
      const int row = next.fetch_add(1);
      if (row >= rows) break;
      const int i = row % r.N, h = (row / r.N) % r.H, b = row / (r.N * r.H);
      const int hk = h / grp;
      const float* qrow = &fq[r.q.at(b, i, h, 0)];
      for (int d = 0; d < e.D; ++d) qd[d] = qrow[d];
      logit.clear();
      src.clear();
      double mabs = 0;
      auto add = [&](const float* krow, const float* vrow) {
        double s = 0, sa = 0;
        for (int d = 0; d < e.D; ++d) {
          const double t = qd[d] * (double)krow[d];
          s += t;
          sa += std::fabs(t);
        }
        logit.push_back(s * r.scale);
        mabs = std::max(mabs, sa * r.scale);
        src.push_back(vrow);
      };
      for (int j = window_start(i, e.W, e.sliding()); j <= i; ++j) add(&fk[r.k.at(b, j, hk, 0)], &fv[r.v.at(b, j, hk, 0)]);
      const int nsum = std::min(i / e.C, r.nc);
      for (int c = 0; c < nsum; ++c) add(&fks[r.ks.at(b, c, hk, 0)], &fvs[r.vs.at(b, c, hk, 0)]);
      double mx = -INFINITY;
      for (double x : logit) mx = std::max(mx, x);
      double l = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (size_t t = 0; t < logit.size(); ++t) {
        const double p = std::exp(logit[t] - mx);
        l += p;
        const float* vrow = src[t];
        for (int d = 0; d < e.D; ++d) acc[d] += p * vrow[d];
      }
      for (int d = 0; d < e.D; ++d) {
        const double ref = acc[d] / l;
        const float got = to_f(o[r.o.at(b, i, h, d)], r.bf16);
        if (!std::isfinite(got)) nano[tid]++;
        num[tid] += (got - ref) * (got - ref);
        den[tid] += ref * ref;
      }
      const double lref = mx + std::log(l);
      const float lg = lse[(size_t)(b * r.lse_sb + h * r.lse_sh + i)];
      if (!std::isfinite(lg)) {
        nanl[tid]++;
      } else {
        const double err = std::fabs(lg - lref);
        const double bound = 1e-3 + 4.0 * std::sqrt((double)e.D) * 1.1920929e-7 * mabs;
        lworst[tid] = std::max(lworst[tid], err / bound);
        lmax[tid] = std::max(lmax[tid], err);
        if (err > bound) badl[tid]++;
      }
    }
  };
  std::vector<std::thread> th;
  for (int t = 0; t < nthreads; ++t) th.emplace_back(work, t);
  for (auto& t : th) t.join();
  Errors er;
  double nn = 0, dd = 0;
  for (int t = 0; t < nthreads; ++t) {
    nn += num[t], dd += den[t];
    er.nan_o += nano[t], er.nan_lse += nanl[t], er.bad_lse_rows += badl[t];
    er.lse_worst = std::max(er.lse_worst, lworst[t]);
    er.lse_max_abs = std::max(er.lse_max_abs, lmax[t]);
  }
  er.o_rel = std::sqrt(nn / (dd > 0 ? dd : 1));
  // Everything outside O's rows and LSE's rows must still hold the poison.
  std::vector<char> valid(r.o.alloc, 0);
  for (int b = 0; b < r.B; ++b)
    for (int i = 0; i < r.N; ++i)
      for (int h = 0; h < r.H; ++h)
        for (int d = 0; d < e.D; ++d) valid[r.o.at(b, i, h, d)] = 1;
  for (size_t x = 0; x < r.o.alloc; ++x)
    if (!valid[x] && o[x] != 0xffff) er.bad_pad++;
  std::vector<char> lvalid(r.lse_alloc, 0);
  for (int b = 0; b < r.B; ++b)
    for (int h = 0; h < r.H; ++h)
      for (int i = 0; i < r.N; ++i) lvalid[(size_t)(b * r.lse_sb + h * r.lse_sh + i)] = 1;
  for (size_t x = 0; x < r.lse_alloc; ++x)
    if (!lvalid[x] && !std::isnan(lse[x])) er.bad_pad++;
  return er;
}

struct Tally {
  int pass = 0, fail = 0;
};

static std::vector<Case> cases_for(const Entry& e) {
  std::vector<Case> cs;
  const int W = e.W, C = e.C;
  cs.push_back({"N=1", 1, 1, 2, 1, 0, false, false, 0, false});
  cs.push_back({"N=7 B=2 H=4/2", 2, 7, 4, 2, 0, false, false, 0, false});
  if (C > 1) cs.push_back({"N=C-1 H=2/2", 1, C - 1, 2, 2, 0, false, false, 0, false});
  cs.push_back({"N=5BM+BN/2+3 H=3/1 one CTA", 1, 5 * e.BM + e.BN / 2 + 3, 3, 1, 0, false, false, 1, false});
  cs.push_back({"N=3W+C+5 B=2 H=4/2 strided nc+3 three CTAs", 2, 3 * W + C + 5, 4, 2, 3, true, false, 3, false});
  cs.push_back({"N=W+2C+3 H=2/1 logits 1e4", 1, W + 2 * C + 3, 2, 1, 0, false, true, 0, false});
  cs.push_back({"N=2W+C+1 B=2 H=4/4 dynamic tiles x2", 2, 2 * W + C + 1, 4, 4, 1, true, true, 5, true});
  return cs;
}

static void check_entry(Entry& e, Tally& tally, int nthreads) {
  std::vector<Case> cs = cases_for(e);
  if (e.kind == "base") {  // the baseline checks the harness: two cases are enough
    std::vector<Case> few;
    for (const Case& c : cs)
      if (c.strided && !c.dynamic) few.push_back(c);
      else if (c.large && !c.dynamic) few.push_back(c);
    cs = few;
  }
  const double tol = e.bf16() ? 8e-3 : 2e-3;
  uint64_t seed = std::hash<std::string>()(e.key);
  int* counter = nullptr;
  CK(cudaMalloc(&counter, 8));
  CK(cudaMemset(counter, 0, 8));
  for (const Case& c : cs) {
    Run r;
    make_inputs(r, c, e, ++seed);
    std::string why;
    bool ok = true;
    const int launches = c.dynamic ? 2 : 1;
    for (int l = 0; l < launches && ok; ++l) {
      if (l > 0) {  // poison again: the second launch must write everything too
        CK(cudaMemcpy(r.o.d, r.o.h.data(), r.o.alloc * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(r.lse, r.lse_h.data(), r.lse_alloc * 4, cudaMemcpyHostToDevice));
      }
      ok = launch(e, r, c.grid, c.dynamic && e.kind == "sm90" ? counter : nullptr, 0, &why) && wait_stream(0, &why);
    }
    int ctr[2] = {0, 0};
    if (ok) CK(cudaMemcpy(ctr, counter, 8, cudaMemcpyDeviceToHost));
    char buf[512];
    if (!ok) {
      snprintf(buf, sizeof buf, "%s", why.c_str());
    } else {
      const Errors er = compare(r, e, nthreads);
      const bool pass = er.nan_o == 0 && er.nan_lse == 0 && er.bad_pad == 0 && er.o_rel <= tol && er.lse_worst <= 1.0 &&
                        ctr[0] == 0 && ctr[1] == 0;
      snprintf(buf, sizeof buf,
               "o_rel=%.2e (tol %.0e) lse_max_abs=%.2e lse_err/bound=%.2f bad_lse_rows=%lld nan_o=%lld nan_lse=%lld "
               "written_outside=%lld%s",
               er.o_rel, tol, er.lse_max_abs, er.lse_worst, er.bad_lse_rows, er.nan_o, er.nan_lse, er.bad_pad,
               (ctr[0] || ctr[1]) ? " TILE COUNTER NOT RESET" : "");
      ok = pass;
    }
    printf("%s %-4s %-72s | %-44s | %s\n", ok ? "PASS" : "FAIL", e.kind.c_str(), e.key.c_str(), c.name.c_str(), buf);
    fflush(stdout);
    (ok ? tally.pass : tally.fail)++;
    free_run(r);
    cudaError_t st = cudaGetLastError();
    if (st != cudaSuccess) {
      printf("FAIL %s: sticky CUDA error %s; stopping this process\n", e.key.c_str(), cudaGetErrorString(st));
      fflush(stdout);
      exit(1);
    }
  }
  CK(cudaFree(counter));
}

// ---- timing ----------------------------------------------------------------------------------------------------
struct TimeRow {
  std::string key, kind, spec, sched;
  double ms, eff, computed;
};

static bool timed_spec(const Entry& e) {
  if (!e.bf16()) return false;
  if (e.D == 128 && e.W == 512 && e.C == 64) return true;
  if (e.D == 64 && e.W == 256 && e.C == 16 && !e.sliding()) return true;
  return false;
}

static void time_entry(const Entry& e, std::vector<TimeRow>& rows, size_t l2) {
  const int B = 1, N = 16384, H = 16;
  Case c{"time", B, N, H, H, 0, false, false, 0, false};
  // Input sets rotated so that the data of one launch is not in L2 for the next: > 3x L2 in all.
  Run proto;
  make_inputs(proto, c, e, 1, false);
  const size_t set_bytes = (proto.q.alloc + proto.k.alloc + proto.v.alloc + proto.ks.alloc + proto.vs.alloc +
                            proto.o.alloc) * 2 + proto.lse_alloc * 4;
  const int nsets = std::max<int>(2, (int)((3 * l2 + set_bytes - 1) / set_bytes) + 1);
  std::vector<Run> sets(nsets);
  for (int s = 0; s < nsets; ++s) {
    Run& r = sets[s];
    make_inputs(r, c, e, 100 + s, false);
    int ti = 0;
    for (T4* t : {&r.q, &r.k, &r.v, &r.ks, &r.vs, &r.o}) {
      CK(cudaMalloc(&t->d, t->alloc * 2));
      // A random 1M-element pattern repeated over the tensor: filling 268 MB element by element on the host
      // would take long, and the kernel's speed does not depend on the values (only that they are finite).
      std::vector<uint16_t> chunk(1 << 20);
      Rng rng(s * 7 + ti++);
      for (auto& x : chunk) x = from_f(rng.uni(), r.bf16);
      for (size_t off = 0; off < t->alloc; off += chunk.size())
        CK(cudaMemcpy(t->d + off, chunk.data(), std::min(chunk.size(), t->alloc - off) * 2, cudaMemcpyHostToDevice));
    }
    CK(cudaMalloc(&r.lse, r.lse_alloc * 4));
  }
  int* counter = nullptr;
  CK(cudaMalloc(&counter, 8));
  CK(cudaMemset(counter, 0, 8));
  const long long pairs = visible_pairs(N, N / e.C, e);
  const double eff_flops = 4.0 * e.D * (double)pairs * B * H;
  const double comp_flops = 4.0 * e.D * (double)tiles_blocks(N, N / e.C, e) * e.BM * e.BN * B * H;
  char spec[128];
  snprintf(spec, sizeof spec, "B=%d N=%d H=%d D=%d W=%d C=%d %s %s", B, N, H, e.D, e.W, e.C, e.mode.c_str(),
           e.dtype.c_str());
  for (int dyn = 0; dyn < (e.kind == "sm90" ? 2 : 1); ++dyn) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    std::vector<float> ms;
    std::string why;
    bool ok = true;
    for (int it = 0; it < 35 && ok; ++it) {
      Run& r = sets[it % nsets];
      CK(cudaEventRecord(a, 0));
      ok = launch(e, r, 0, dyn ? counter : nullptr, 0, &why);
      CK(cudaEventRecord(b, 0));
      ok = ok && wait_stream(0, &why);
      float t = 0;
      if (ok) CK(cudaEventElapsedTime(&t, a, b));
      if (it >= 5) ms.push_back(t);
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    if (!ok) {
      printf("FAIL time %s: %s\n", e.key.c_str(), why.c_str());
      continue;
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    rows.push_back({e.key, e.kind, spec, e.kind == "base" ? "grid" : (dyn ? "dynamic" : "static"), med,
                    eff_flops / (med * 1e-3) / 1e12, comp_flops / (med * 1e-3) / 1e12});
    printf("TIME %-4s %-72s %-8s %s: %.4f ms, %.1f effective TFLOP/s, %.1f computed TFLOP/s\n", e.kind.c_str(),
           e.key.c_str(), rows.back().sched.c_str(), spec, med, rows.back().eff, rows.back().computed);
    fflush(stdout);
  }
  CK(cudaFree(counter));
  for (auto& r : sets) free_run(r);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s BUILD_DIR [--check] [--time] [--only SUBSTRING | --key KEY] [--timeout S]\n", argv[0]);
    return 2;
  }
  std::string dir = argv[1], only, key;
  bool do_check = false, do_time = false;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--check") do_check = true;
    else if (a == "--time") do_time = true;
    else if (a == "--only" && i + 1 < argc) only = argv[++i];
    else if (a == "--key" && i + 1 < argc) key = argv[++i];
    else if (a == "--timeout" && i + 1 < argc) g_timeout = atof(argv[++i]);
  }
  if (!do_check && !do_time) do_check = do_time = true;
  load_driver();
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  printf("harness: %s, sm_%d%d, %d SMs, %.0f MB L2, %zu KB shared memory per block (opt-in)\n", prop.name, prop.major,
         prop.minor, prop.multiProcessorCount, prop.l2CacheSize / 1e6, prop.sharedMemPerBlockOptin / 1024);
  const int nthreads = std::max(2u, std::min(32u, std::thread::hardware_concurrency()));

  std::vector<Entry> es = read_manifest(dir);
  Tally tally;
  std::vector<TimeRow> trows;
  std::vector<std::pair<std::string, Tally>> per;
  for (Entry& e : es) {
    if (!only.empty() && e.key.find(only) == std::string::npos) continue;
    if (!key.empty() && e.key != key) continue;
    std::string why;
    if (!load_entry(e, dir, &why)) {
      printf("FAIL %-4s %-72s | load | %s\n", e.kind.c_str(), e.key.c_str(), why.c_str());
      fflush(stdout);
      if (e.kind == "sm90") tally.fail++;
      per.push_back({e.key, Tally{0, 1}});
      continue;
    }
    Tally t;
    if (do_check) check_entry(e, t, nthreads);
    if (e.kind == "base") {  // the baseline's failures say the harness is wrong, not the new kernel
      if (t.fail) printf("NOTE baseline %s failed %d case(s): suspect the harness\n", e.key.c_str(), t.fail);
    } else {
      tally.pass += t.pass, tally.fail += t.fail;
    }
    per.push_back({e.key, t});
    if (do_time && timed_spec(e) && t.fail == 0) time_entry(e, trows, prop.l2CacheSize);
  }

  printf("\n==== summary ====\n");
  if (do_check) {
    printf("%-76s %5s %5s\n", "kernel", "pass", "fail");
    for (auto& p : per) printf("%-76s %5d %5d\n", p.first.c_str(), p.second.pass, p.second.fail);
  }
  if (!trows.empty()) {
    printf("\n%-4s %-72s %-8s %9s %9s %9s\n", "kind", "kernel", "sched", "ms", "eff TF/s", "comp TF/s");
    for (auto& r : trows)
      printf("%-4s %-72s %-8s %9.4f %9.1f %9.1f\n", r.kind.c_str(), r.key.c_str(), r.sched.c_str(), r.ms, r.eff,
             r.computed);
  }
  printf("\nchecks: %d passed, %d failed\n", tally.pass, tally.fail);
  return tally.fail ? 1 : 0;
}
