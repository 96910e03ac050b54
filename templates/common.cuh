// flasheva: shared device helpers (self-contained: no CUDA toolkit header is included; NVRTC alone
// compiles this). Rendered for {{ name }} ({{ dtype }}).
//
// Naming: the spec's specializations are FE_-prefixed constants defined here once (FE_D, and for
// the attention ops FE_W, FE_C, FE_SLIDING); a kernel's own tile constants (BM, BN, NW, STAGES,
// THREADS, ...) are unprefixed and local to its template; helpers are fe_-prefixed functions.
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define FE_DEV __device__ __forceinline__
#define FE_NEG_INF (-__int_as_float(0x7f800000))
#define FE_LN2 0.6931471805599453f
#define FE_LOG2E 1.4426950408889634f

constexpr int FE_D = {{ head_dim }};  // head dim
constexpr int FE_C = {{ chunk }};     // chunk: one summary per FE_C tokens
<% if window > 0 %>
constexpr int FE_W = {{ window }};    // local window
constexpr bool FE_SLIDING = {{ sliding }};

// The first raw key query position i sees (its window's start; the last key it sees is i).
FE_DEV int fe_window_start(int i) { return FE_SLIDING ? (i - FE_W + 1 > 0 ? i - FE_W + 1 : 0) : (i / FE_W) * FE_W; }
<% endif %>

<% if dtype == "bf16" %>
#define FE_BF16 1
<% else %>
#define FE_BF16 0
<% endif %>

// ---- storage type <-> fp32, through inline PTX -------------------------------------------------
FE_DEV float fe_to_f32(u16 h) {
#if FE_BF16
  return __int_as_float(((int)h) << 16);
#else
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#endif
}

FE_DEV u16 fe_from_f32(float f) {
  u16 h;
#if FE_BF16
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
  return h;
}

// Two fp32 values into one 32-bit register: `lo` in bits 0..15, `hi` in bits 16..31.
FE_DEV u32 fe_pack2(float lo, float hi) {
  u32 r;
#if FE_BF16
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
  return r;
}

FE_DEV float fe_lo(u32 x) { return fe_to_f32((u16)(x & 0xffffu)); }
FE_DEV float fe_hi(u32 x) { return fe_to_f32((u16)(x >> 16)); }

FE_DEV float fe_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

FE_DEV float fe_log2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The LSE (natural log of the softmax denominator) of a row whose running maximum is `m_log2`
// (log2 domain, scaled logits) and whose sum of exp2(logit - m_log2) is `l`; -inf for an empty row.
FE_DEV float fe_lse(float m_log2, float l) { return l > 0.f ? (m_log2 + fe_log2(l)) * FE_LN2 : FE_NEG_INF; }

// ---- memory ------------------------------------------------------------------------------------
struct __align__(16) fe_u32x4 { u32 x, y, z, w; };

FE_DEV u32 fe_smem_addr(const void* p) {
  u32 a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

// 16-byte asynchronous global->shared copy; when `valid` is false the 16 bytes are zero-filled and
// nothing is read.
FE_DEV void fe_cp_async16(u32 dst, const void* src, bool valid) {
  int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
// The same copy, always valid (no source-size operand, so no per-copy select of it).
FE_DEV void fe_cp_async16_full(u32 dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
FE_DEV void fe_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
FE_DEV void fe_cp_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

FE_DEV fe_u32x4 fe_ld16(const void* p) {
  fe_u32x4 r;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}
FE_DEV void fe_st16(void* p, fe_u32x4 v) {
  asm volatile("st.global.v4.u32 [%0], {%1,%2,%3,%4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

// ---- tensor cores ------------------------------------------------------------------------------
// ldmatrix: four 8x8 b16 matrices; lane l gives the row address of matrix l/8, row l%8.
FE_DEV void fe_ldsm_x4(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
FE_DEV void fe_ldsm_x4_t(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// D += A * B, m16n8k16, fp32 accumulators.
FE_DEV void fe_mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#if FE_BF16
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

FE_DEV float fe_warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
FE_DEV float fe_warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// The top of step t (of n) of a block's S-deep cp.async copy pipeline (the prefill's key tiles, the
// backward's dK/dV and dQ steps): step t's stage has landed and, after `visible()` (what else the
// engine needs before its products may read the copies) and a barrier, every thread sees it; then
// the stage that step t + S - 1 uses is refilled by `load(step, stage)` (step t - 1 read it, and
// every thread finished that step). With one stage, step t's own copies are made here, and the
// loop must end each step with a barrier.
template <int S, class Visible, class Load>
FE_DEV void fe_stage_top(int t, int n, Visible visible, Load load) {
  if (S == 1) {
    load(t, 0);
    fe_cp_commit();
    fe_cp_wait<0>();
  } else {
    fe_cp_wait<(S > 1 ? S - 2 : 0)>();
  }
  visible();
  __syncthreads();
  if (S > 1) {
    const int tn = t + S - 1;
    if (tn < n) load(tn, tn % S);
    fe_cp_commit();
  }
}
