// flasheva prefill backward (Hopper, sm_90a, wgmma): {{ name }}
// The same four kernels and schedule as the mma.sync backward (prefill_bwd.cu), with the products
// on warpgroup MMA (wgmma) from 128-byte-swizzled shared memory:
//   {{ name }}       Delta (prefill_bwd_common.cuh);
//   {{ name }}_dkdv  one CTA per BN = 64 x warpgroups keys (raw keys, or a segment of a summary
//                    block's queries); each warpgroup holds 64 keys and their dK, dV (fp32, in
//                    registers) and walks the query heads of the kv group and the 64-row query
//                    blocks that see the CTA's keys: S^T = K Q^T and dP^T = V dO^T (both operands
//                    from shared memory, K-major), P^T and dS^T in registers, then dV += P^T dO and
//                    dK += dS^T Q with P^T and dS^T as register A operands and dO, Q read MN-major;
//   {{ name }}_dsum  the segments' partial sums added in order (prefill_bwd_common.cuh);
//   {{ name }}_dq    one CTA per BN query rows (64 per warpgroup), the forward's walk over 64-key
//                    tiles: S = Q K^T, dP = dO V^T, dS in registers, dQ += dS K with K read MN-major.
// and, with two warpgroups at D = 128, the atomic dQ mode's two (the plan runs Delta, these, and
// the segment sum):
//   {{ name }}_dkdv_atomic  the dK/dV kernel that also writes each step's dS^T to shared memory and
//                    computes dQ's share dS K (each warpgroup one 64-column panel over all 128 keys,
//                    both operands read MN-major), stages it in shared memory and adds it to an fp32
//                    accumulator with one bulk reduction per warpgroup and step
//                    (cp.reduce.async.bulk ... add.f32). The dQ kernel's recomputation of S and dP
//                    (two of seven products) is not needed;
//   {{ name }}_dq_atomic    the accumulator times the scale to dq's storage type.
// The accumulator is tiled as the reductions write it: [B, H, cdiv(N, 64), D / 64 panels, 8, 128, 4]
// fp32, a 64-query x 64-column panel as 16 KiB in the order of the wgmma accumulator fragment (float4
// v of thread t of the warpgroup at (v * 128 + t) * 16 bytes: conflict-free 16-byte stores).
// Loads are 16-byte cp.async copies into the swizzled layout (chunk c of row r at chunk c ^ (r & 7)
// of its 128-byte row: what the wgmma descriptors' 128-byte swizzle mode reads), double-buffered.
// The four-kernel mode has no atomics: bitwise reproducible run to run, like the other engines. The
// atomic mode's sums depend on the order the reductions land in (not reproducible bit for bit).
// tile {{ tile_name }}: BQ = {{ block_m }}, BN = {{ block_n }}, {{ warps }} warps, {{ stages }}-stage pipeline.
<% include "common.cuh" %>
<% include "attention.cuh" %>
<% include "hopper.cuh" %>

constexpr int BQ = {{ block_m }};  // streamed rows a step: queries (dkdv), keys (dq)
constexpr int BN = {{ block_n }};  // held rows: keys (dkdv), queries (dq), 64 per warpgroup
constexpr int NW = {{ warps }};
constexpr int WGS = NW / 4;
constexpr int STAGES = {{ stages }};
constexpr int THREADS = NW * 32;
constexpr int SUM_ROWS = 16;
static_assert(BQ == 64, "block_m must be 64 (the wgmma N of S^T and the K of dV, dK)");
static_assert(NW % 4 == 0 && BN == 64 * WGS, "block_n must be 64 x warpgroups");
static_assert(FE_D == 64 || FE_D == 128, "head_dim must be 64 or 128 (whole 128-byte swizzle panels)");
static_assert(STAGES == 1 || STAGES == 2, "1 or 2 stages");

<% include "prefill_bwd_common.cuh" %>

constexpr int PANELS = FE_D / 64;
constexpr int HELD_PANEL = BN * 128;  // bytes of one 64-column panel of a held tile
constexpr int STEP_PANEL = BQ * 128;  // ... of a streamed tile
constexpr int HELD_BYTES = PANELS * HELD_PANEL;
constexpr int STEP_BYTES = PANELS * STEP_PANEL;
// The atomic dQ mode exists with two warpgroups at D = 128 (the host's has_atomic_mode):
// warpgroup w computes dQ's columns [64 w, 64 w + 64) over all 128 keys, 32 accumulator registers
// beside dK and dV. (One warpgroup would need both panels over its own 64 keys: one after the
// other, it ran slower than the dQ pass; at once, it spills.) Its dS^T tile: BN key rows of 64
// queries (128 bytes, swizzled), after the streamed stages (unused by the four-kernel mode).
#define FE_ATOMIC_DQ ({{ warps }} == 8 && {{ head_dim }} == 128)
// ... and two staging buffers per warpgroup for its dQ panel (step t's in buffer t % 2).
constexpr int DQ_PANEL_BYTES = 64 * 64 * 4;
constexpr int DS_BYTES = FE_ATOMIC_DQ ? BN * 128 + 2 * WGS * DQ_PANEL_BYTES : 0;
// dK/dV: K, V | Q, dO stages | dS^T, dQ staging (atomic tiles) | LSE, Delta stages. dQ: Q, dO |
// K, V stages. 1024 bytes of slack align the base (the swizzle atoms must start on 1024-byte
// boundaries).
constexpr int SMEM_DKDV = 1024 + 2 * HELD_BYTES + STAGES * 2 * STEP_BYTES + DS_BYTES + STAGES * 2 * BQ * 4;
constexpr int SMEM_DQ = 1024 + 2 * HELD_BYTES + STAGES * 2 * STEP_BYTES;
static_assert(SMEM_DKDV <= 232448 && SMEM_DQ <= 232448, "tile needs more than 227 KiB of shared memory");
static_assert(NW * 16 * FE_DP * 2 <= 2 * HELD_BYTES, "the epilogue stages each warp's rows in the held tiles");
// What the loader checks against the host's formula (and gives every entry point).
extern "C" __constant__ int {{ name }}_smem_bytes = SMEM_DKDV > SMEM_DQ ? SMEM_DKDV : SMEM_DQ;
#define FE_ACC (FE_D / 2)  // fp32 accumulator registers of a 64 x D tile per thread

// R rows, D wide, of a token-major tensor into D/64 swizzled panels (R x 128 bytes each, 1024-aligned)
// at shared address `dst`: row r starts at `base + r * stride` and is read only if r < valid.
template <int R>
FE_DEV void fe_load_sw(u32 dst, int tid, const u16* base, i64 stride, int valid) {
  constexpr int TOTAL = R * FE_CH;
  static_assert(TOTAL % THREADS == 0 && THREADS % FE_CH == 0, "whole passes of 16-byte chunks");
  constexpr int STEP = THREADS / FE_CH;  // a multiple of 8: every row of a thread has the same r & 7
  static_assert(STEP % 8 == 0, "a thread's rows must share their swizzle phase");
  const int r0 = tid / FE_CH, c = tid % FE_CH;
  const u16* src = base + r0 * stride + c * 8;
  const u32 d0 = dst + (u32)((c >> 3) * (R * 128) + r0 * 128 + (((c & 7) ^ (r0 & 7)) << 4));
#pragma unroll
  for (int k = 0; k < TOTAL / THREADS; ++k) {
    const int r = r0 + k * STEP;
    const bool ok = r < valid;
    fe_cp_async16(d0 + (u32)(k * STEP * 128), ok ? src + (i64)k * STEP * stride : base, ok);
  }
}

// D[64 x 64] = A[64 x D] B[64 x D]^T, both K-major in swizzled panels: A's 64 rows at `a` (panels
// `a_panel` bytes apart), B's at `b` (panels `b_panel` apart).
FE_DEV void fe_bwd_ss(float (&d)[32], u32 a, int a_panel, u32 b, int b_panel) {
  const u64 da = fe_desc_sw128(a, 16, 1024), db = fe_desc_sw128(b, 16, 1024);
#pragma unroll
  for (int kk = 0; kk < FE_D / 16; ++kk) {
    fe_wgmma_ss(d, fe_desc_add(da, (kk / 4) * a_panel + (kk % 4) * 32), fe_desc_add(db, (kk / 4) * b_panel + (kk % 4) * 32),
                kk > 0 ? 1 : 0);
  }
}

// acc[64 x D] += X[64 x 64] Y[64 x D]: X from registers (x[4k..4k+3], the A fragment of columns
// 16k..16k+15), Y read MN-major from the streamed (or held) tile at `y`: 64 rows, panels `panel`
// bytes apart, 16 rows (2048 bytes) a step.
FE_DEV void fe_bwd_rs(float (&acc)[FE_ACC], const u32 (&x)[16], u32 y, int panel) {
  const u64 dy = fe_desc_sw128(y, panel, 1024);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) fe_wgmma_rs(acc, x[4 * kk], x[4 * kk + 1], x[4 * kk + 2], x[4 * kk + 3], fe_desc_add(dy, kk * 2048));
}

// The atomic mode's fp32 accumulator panel of query rows [i0, i0 + 64) (i0 a multiple of 64) and
// columns [64 panel, 64 panel + 64) of head h, sequence b (the layout above; the Delta kernel in
// prefill_bwd_common.cuh zeroes whole tiles with the same tile index).
FE_DEV float* fe_dq_panel(const PrefillBwdParams& p, int b, int h, int i0, int panel) {
  const i64 tiles = (p.n + 63) / 64;
  return p.dqacc + ((((i64)b * p.h + h) * tiles + i0 / 64) * (FE_D / 64) + panel) * (64 * 64);
}

// ---- dK, dV (and, with ATOMIC, dQ's share) ---------------------------------------------------------
template <bool ATOMIC>
FE_DEV void fe_dkdv(const PrefillBwdParams& p) {
  static_assert(!ATOMIC || (WGS == 2 && FE_D == 128), "the atomic dQ mode takes two warpgroups at D = 128");
  extern __shared__ __align__(1024) unsigned char fe_smem[];
  const u32 base = (fe_smem_addr(fe_smem) + 1023u) & ~1023u;
  unsigned char* gbase = fe_smem + (base - fe_smem_addr(fe_smem));
  const u32 sK = base, sV = sK + HELD_BYTES, sQ = sV + HELD_BYTES, sO = sQ + STAGES * STEP_BYTES;
  const u32 sS = sO + STAGES * STEP_BYTES;  // DS_BYTES: dS^T, then the dQ staging buffers
  const u32 sDQ = sS + BN * 128;
  float* sL = (float*)(gbase + 2 * HELD_BYTES + STAGES * 2 * STEP_BYTES + DS_BYTES);  // STAGES x BQ: LSE * log2(e)
  float* sD = sL + STAGES * BQ;                                             // STAGES x BQ: Delta

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
  const int N = p.n;
  const int group = p.h / p.hkv;
  const FeBwdBlock blk = fe_bwd_block(p);
  const bool summary = blk.summary;
  const int b = blk.b, hk = blk.hk, j0 = blk.j0, seg = blk.seg;
  const int start = blk.start, n_q = blk.n_q, nsb = blk.nsb;
  fe_load_sw<BN>(sK, tid, blk.kg + j0 * blk.kst, blk.kst, blk.lim - j0);
  fe_load_sw<BN>(sV, tid, blk.vg + j0 * blk.vst, blk.vst, blk.lim - j0);
  fe_cp_commit();

  const int n_steps = group * n_q;

  auto load_step = [&](int t, int stage) {
    const int h = hk * group + t / n_q;
    const int i0 = start + (t % n_q) * BQ;
    fe_load_sw<BQ>(sQ + stage * STEP_BYTES, tid, p.q + b * p.q_sb + h * p.q_sh + i0 * p.q_st, p.q_st, N - i0);
    fe_load_sw<BQ>(sO + stage * STEP_BYTES, tid, p.dout + b * p.do_sb + h * p.do_sh + i0 * p.do_st, p.do_st, N - i0);
    for (int r = tid; r < BQ; r += THREADS) {
      const int i = i0 + r;
      const bool ok = i < N;
      sL[stage * BQ + r] = ok ? p.lse[b * p.lse_sb + h * p.lse_sh + i] * FE_LOG2E : FE_POS_INF;
      sD[stage * BQ + r] = ok ? p.delta[((i64)b * p.h + h) * N + i] : 0.f;
    }
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_steps) load_step(s, s);
    fe_cp_commit();
  }

  float dk[FE_ACC], dv[FE_ACC];
#pragma unroll
  for (int i = 0; i < FE_ACC; ++i) dk[i] = dv[i] = 0.f;
  // this warpgroup's 64 keys (A operands of S^T and dP^T), this warp's 16 of them
  const u32 k_rows = sK + wg * 64 * 128, v_rows = sV + wg * 64 * 128;
  const int my_j0 = j0 + warp * 16;

  // ATOMIC: thread 0 of each warpgroup issues its reductions (predicated, not branched: a branch
  // made the compiler serialize the wgmma)
  const bool reducer = ATOMIC && (tid & 127) == 0;

  for (int t = 0; t < n_steps; ++t) {
    // ATOMIC: step t - 2's reduction has read buffer t % 2 (step t - 1's may still be reading) before
    // anyone passes the barrier below
    if (ATOMIC) fe_bulk_wait_read_if<1>(reducer);
    // the copies are also made visible to the wgmma (async proxy) before the barrier
    fe_stage_top<STAGES>(t, n_steps, [] { fe_fence_proxy_async(); }, load_step);
    const int stage = t % STAGES;
    const int i0 = start + (t % n_q) * BQ;
    const u32 q_st = sQ + stage * STEP_BYTES, o_st = sO + stage * STEP_BYTES;
    const float* lse2 = sL + stage * BQ;
    const float* dlt = sD + stage * BQ;

    float s[32], dp[32];
    fe_wgmma_fence();
    fe_bwd_ss(s, k_rows, HELD_PANEL, q_st, STEP_PANEL);  // S^T = K Q^T
    fe_wgmma_commit();
    fe_bwd_ss(dp, v_rows, HELD_PANEL, o_st, STEP_PANEL);  // dP^T = V dO^T
    fe_wgmma_commit();

    const bool full = summary ? j0 + BN <= min(i0 / FE_C, p.nc)
                              : (j0 + BN - 1 <= i0 && j0 >= fe_window_start(min(i0 + BQ - 1, N - 1)));
    fe_wgmma_wait<1>();
    fe_fence_regs(s);
#pragma unroll
    for (int x = 0; x < 32; ++x) {
      const int col = (x >> 2) * 8 + (lane & 3) * 2 + (x & 1);
      const int i = i0 + col;
      const int j = my_j0 + (lane >> 2) + 8 * ((x >> 1) & 1);
      bool vis = true;
      if (!full) vis = summary ? j < min(i / FE_C, p.nc) : (j <= i && j >= fe_window_start(i) && j < N);
      s[x] = vis ? fe_exp2(fmaf(s[x], p.scale_log2, -lse2[col])) : 0.f;
    }
    // dV += P^T dO runs while dS^T is computed (its group was committed after dP^T's, so waiting
    // for all but the newest group waits for dP^T only)
    u32 pa[16], da[16];
#pragma unroll
    for (int x = 0; x < 32; x += 2) pa[x / 2] = fe_pack2(s[x], s[x + 1]);
    fe_fence_regs(pa);
    fe_fence_regs(dv);
    fe_wgmma_fence();
    fe_bwd_rs(dv, pa, o_st, STEP_PANEL);  // dV += P^T dO
    fe_wgmma_commit();
    fe_wgmma_wait<1>();
    fe_fence_regs(dp);
#pragma unroll
    for (int x = 0; x < 32; x += 2) {
      const int col = (x >> 2) * 8 + (lane & 3) * 2;
      da[x / 2] = fe_pack2(s[x] * (dp[x] - dlt[col]), s[x + 1] * (dp[x + 1] - dlt[col + 1]));
    }
    fe_fence_regs(da);
    fe_fence_regs(dk);
    fe_wgmma_fence();
    fe_bwd_rs(dk, da, q_st, STEP_PANEL);  // dK += dS^T Q
    fe_wgmma_commit();
    if constexpr (ATOMIC) {
      // dS^T to shared memory under dK's product (this warp's 16 key rows, 64 queries, the
      // swizzled layout), where dQ's product reads all 128 rows MN-major
#pragma unroll
      for (int x = 0; x < 32; x += 2) {
        const int row = warp * 16 + (lane >> 2) + 8 * ((x >> 1) & 1);
        const int c = x >> 2;
        fe_st_shared_u32(sS + row * 128 + ((c ^ (row & 7)) << 4) + (lane & 3) * 4, da[x / 2]);
      }
      fe_fence_proxy_async();
      fe_bar_sync(1, THREADS);  // both warpgroups' rows are read by each
      // the descriptors are made here each step (kept across the loop, they spill at two stages)
      u32 s_base = sS;
      asm volatile("" : "+r"(s_base));
      const u64 s_cols = fe_desc_sw128(s_base, 8192, 1024);
      const u64 k_cols = fe_desc_sw128(s_base - (sS - sK) + wg * HELD_PANEL, HELD_PANEL, 1024);
      // dQ[64 x 64] (this warpgroup's column panel) = dS[64 x 128] K[128 x 64]
      float dq[32];
      fe_wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        fe_wgmma_ss<1, 1>(dq, fe_desc_add(s_cols, kk * 2048), fe_desc_add(k_cols, kk * 2048), kk > 0 ? 1 : 0);
      }
      fe_wgmma_commit();
      fe_wgmma_wait<0>();
      fe_fence_regs(dq);
      // staged in fragment order (rows past N included: their dS is zero) and added to the
      // accumulator by one bulk reduction of the warpgroup's panel (run 39's profile: 32 vector
      // reductions per thread held their registers in the memory pipe's queue, and the fences
      // after them waited for them to land)
      const u32 panel = sDQ + ((t & 1) * WGS + wg) * DQ_PANEL_BYTES;
#pragma unroll
      for (int v = 0; v < 8; ++v) {
        fe_st_shared_v4(panel + (v * 128 + (tid & 127)) * 16, dq[4 * v], dq[4 * v + 1], dq[4 * v + 2], dq[4 * v + 3]);
      }
      fe_fence_proxy_async();
      fe_bar_sync(2 + wg, 128);
      fe_bulk_reduce_add_f32_if(reducer, fe_dq_panel(p, b, hk * group + t / n_q, i0, wg), panel, DQ_PANEL_BYTES);
    } else {
      fe_wgmma_wait<0>();
    }
    fe_fence_regs(dk);
    fe_fence_regs(dv);
    // the next step's copies refill the stage just read (with two stages the next step's first
    // barrier orders that, and the next dS^T's writes after every warpgroup's reads of this one)
    if (STAGES == 1) __syncthreads();
  }
  fe_cp_wait<0>();
  __syncthreads();  // every warpgroup is done with K and V: the warps stage their rows there

  auto& dk4 = *reinterpret_cast<float(*)[FE_DT][4]>(dk);
  auto& dv4 = *reinterpret_cast<float(*)[FE_DT][4]>(dv);
  if (!summary) {
    u16* stage = (u16*)gbase + warp * 16 * FE_DP;
    const int valid = N - my_j0;
    if (valid > 0) {
      fe_bwd_store(dk4, p.scale, stage, p.dk + b * p.dk_sb + hk * p.dk_sh + my_j0 * p.dk_st, p.dk_st, valid, lane);
      __syncwarp();
      fe_bwd_store(dv4, 1.f, stage, p.dv + b * p.dv_sb + hk * p.dv_sh + my_j0 * p.dv_st, p.dv_st, valid, lane);
    }
  } else {
    fe_bwd_store_part(dk4, dv4, p, b, hk, seg, nsb, my_j0, lane);
  }
  if (ATOMIC) fe_bulk_wait_if<0>(reducer);  // the reductions are done before the CTA ends
}

extern "C" __global__ void __launch_bounds__(THREADS, 1) {{ name }}_dkdv(const PrefillBwdParams p) { fe_dkdv<false>(p); }
#if FE_ATOMIC_DQ
extern "C" __global__ void __launch_bounds__(THREADS, 1) {{ name }}_dkdv_atomic(const PrefillBwdParams p) {
  fe_dkdv<true>(p);
}
#endif

// ---- dQ ------------------------------------------------------------------------------------------
// grid (cdiv(N, BN), H, B), the latest query blocks first; each warpgroup skips the tiles none of
// its 64 rows sees (wgmma runs per warpgroup, so the decision is per warpgroup).
extern "C" __global__ void __launch_bounds__(THREADS, 1) {{ name }}_dq(const PrefillBwdParams p) {
  extern __shared__ __align__(1024) unsigned char fe_smem[];
  const u32 base = (fe_smem_addr(fe_smem) + 1023u) & ~1023u;
  unsigned char* gbase = fe_smem + (base - fe_smem_addr(fe_smem));
  const u32 sQ = base, sO = sQ + HELD_BYTES, sK = sO + HELD_BYTES, sV = sK + STAGES * STEP_BYTES;

  const int qblock = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (p.h / p.hkv);
  const int N = p.n;
  const int m0 = qblock * BN;
  const int m_end = min(m0 + BN, N);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;

  const u16* kg = p.k + b * p.k_sb + hk * p.k_sh;
  const u16* vg = p.v + b * p.v_sb + hk * p.v_sh;
  const u16* ksg = p.ks + b * p.ks_sb + hk * p.ks_sh;
  const u16* vsg = p.vs + b * p.vs_sb + hk * p.vs_sh;
  fe_load_sw<BN>(sQ, tid, p.q + b * p.q_sb + h * p.q_sh + m0 * p.q_st, p.q_st, N - m0);
  fe_load_sw<BN>(sO, tid, p.dout + b * p.do_sb + h * p.do_sh + m0 * p.do_st, p.do_st, N - m0);
  fe_cp_commit();

  const int lo = (fe_window_start(m0) / BQ) * BQ;
  const int n_local = (m_end - lo + BQ - 1) / BQ;
  const int ns = min((m_end - 1) / FE_C, p.nc);
  const int n_tiles = n_local + (ns + BQ - 1) / BQ;

  auto load_tile = [&](int t, int stage) {
    const u32 dk = sK + stage * STEP_BYTES, dv = sV + stage * STEP_BYTES;
    if (t < n_local) {
      const int j0 = lo + t * BQ;
      fe_load_sw<BQ>(dk, tid, kg + j0 * p.k_st, p.k_st, N - j0);
      fe_load_sw<BQ>(dv, tid, vg + j0 * p.v_st, p.v_st, N - j0);
    } else {
      const int c0 = (t - n_local) * BQ;
      fe_load_sw<BQ>(dk, tid, ksg + c0 * p.ks_st, p.ks_st, ns - c0);
      fe_load_sw<BQ>(dv, tid, vsg + c0 * p.vs_st, p.vs_st, ns - c0);
    }
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_tiles) load_tile(s, s);
    fe_cp_commit();
  }

  // This warpgroup's rows [g_lo, g_hi], this warp's [r_lo, ...]; each lane's two rows' LSE and Delta.
  const int g_lo = m0 + wg * 64;
  const int g_hi = min(g_lo + 63, N - 1);
  const bool active = g_lo < N;
  const int r_lo = m0 + warp * 16;
  float lse2[2], dlt[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = r_lo + (lane >> 2) + 8 * r;
    const bool ok = i < N;
    lse2[r] = ok ? p.lse[b * p.lse_sb + h * p.lse_sh + i] * FE_LOG2E : FE_POS_INF;
    dlt[r] = ok ? p.delta[((i64)b * p.h + h) * N + i] : 0.f;
  }
  const u32 q_rows = sQ + wg * 64 * 128, o_rows = sO + wg * 64 * 128;
  float dq[FE_ACC];
#pragma unroll
  for (int i = 0; i < FE_ACC; ++i) dq[i] = 0.f;

  for (int t = 0; t < n_tiles; ++t) {
    fe_stage_top<STAGES>(t, n_tiles, [] { fe_fence_proxy_async(); }, load_tile);
    const int stage = t % STAGES;
    const bool local = t < n_local;
    const int j0 = local ? lo + t * BQ : (t - n_local) * BQ;
    bool any, full;
    if (local) {
      any = j0 <= g_hi && j0 + BQ - 1 >= fe_window_start(g_lo);
      full = j0 + BQ - 1 <= g_lo && j0 >= fe_window_start(g_hi);
    } else {
      any = j0 < min(g_hi / FE_C, p.nc);
      full = j0 + BQ <= min(g_lo / FE_C, p.nc);
    }
    if (active && any) {
      const u32 k_st = sK + stage * STEP_BYTES, v_st = sV + stage * STEP_BYTES;
      float s[32], dp[32];
      fe_wgmma_fence();
      fe_bwd_ss(s, q_rows, HELD_PANEL, k_st, STEP_PANEL);  // S = Q K^T
      fe_wgmma_commit();
      fe_bwd_ss(dp, o_rows, HELD_PANEL, v_st, STEP_PANEL);  // dP = dO V^T
      fe_wgmma_commit();
      fe_wgmma_wait<1>();
      fe_fence_regs(s);
#pragma unroll
      for (int x = 0; x < 32; ++x) {
        const int r = (x >> 1) & 1;
        const int i = r_lo + (lane >> 2) + 8 * r;
        const int j = j0 + (x >> 2) * 8 + (lane & 3) * 2 + (x & 1);
        bool vis = true;
        if (!full) vis = local ? (j <= i && j >= fe_window_start(i)) : j < min(i / FE_C, p.nc);
        s[x] = vis ? fe_exp2(fmaf(s[x], p.scale_log2, -lse2[r])) : 0.f;
      }
      fe_wgmma_wait<0>();
      fe_fence_regs(dp);
      u32 da[16];
#pragma unroll
      for (int x = 0; x < 32; x += 2) {
        const int r = (x >> 1) & 1;
        da[x / 2] = fe_pack2(s[x] * (dp[x] - dlt[r]), s[x + 1] * (dp[x + 1] - dlt[r]));
      }
      fe_fence_regs(da);
      fe_fence_regs(dq);
      fe_wgmma_fence();
      fe_bwd_rs(dq, da, k_st, STEP_PANEL);  // dQ += dS K
      fe_wgmma_commit();
      fe_wgmma_wait<0>();
      fe_fence_regs(dq);
    }
    if (STAGES == 1) __syncthreads();
  }
  fe_cp_wait<0>();
  __syncthreads();  // every warpgroup is done with Q: the warps stage their rows there
  if (r_lo >= N) return;
  auto& dq4 = *reinterpret_cast<float(*)[FE_DT][4]>(dq);
  fe_bwd_store(dq4, p.scale, (u16*)gbase + warp * 16 * FE_DP, p.dq + b * p.dq_sb + h * p.dq_sh + r_lo * p.dq_st,
               p.dq_st, N - r_lo, lane);
}

#if FE_ATOMIC_DQ
// ---- dQ from the atomic mode's accumulator ---------------------------------------------------------
// grid (cdiv(N, 64), H, B): one 64-row tile of the accumulator times the scale, its panels read in
// the fragment order, written as rows (16-byte stores) through shared memory. That tile is static
// shared memory, and the loader gives every entry point of the module SMEM_DKDV of dynamic shared
// memory: together they must fit the 227 KiB a block may opt into.
static_assert(SMEM_DKDV + 64 * FE_DP * 2 <= 232448,
              "the atomic dQ conversion's static tile and the module's dynamic shared memory exceed 227 KiB");
extern "C" __global__ void __launch_bounds__(THREADS) {{ name }}_dq_atomic(const PrefillBwdParams p) {
  __shared__ __align__(16) u16 tile[64 * FE_DP];
  const int h = blockIdx.y, b = blockIdx.z;
  const int i0 = blockIdx.x * 64;
  const int rows = min(64, p.n - i0);
  for (int q = threadIdx.x; q < (FE_D / 64) * 8 * 128; q += THREADS) {
    const int panel = q / 1024, v = (q / 128) % 8, t = q % 128;
    const int lane = t & 31, row = (t >> 5) * 16 + (lane >> 2), col = panel * 64 + v * 8 + (lane & 3) * 2;
    float a[4];
    fe_ld_f32x4(fe_dq_panel(p, b, h, i0, panel) + (v * 128 + t) * 4, a);
    *reinterpret_cast<u32*>(tile + row * FE_DP + col) = fe_pack2(a[0] * p.scale, a[1] * p.scale);
    *reinterpret_cast<u32*>(tile + (row + 8) * FE_DP + col) = fe_pack2(a[2] * p.scale, a[3] * p.scale);
  }
  __syncthreads();
  u16* out = p.dq + b * p.dq_sb + h * p.dq_sh + i0 * p.dq_st;
  for (int x = threadIdx.x; x < rows * FE_CH; x += THREADS) {
    const int r = x / FE_CH, c = x % FE_CH;
    fe_st16(out + r * p.dq_st + c * 8, *reinterpret_cast<const fe_u32x4*>(tile + r * FE_DP + c * 8));
  }
}
#endif
