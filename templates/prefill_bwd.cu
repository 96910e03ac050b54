// flasheva prefill backward (mma.sync): {{ name }}
// The gradients of prefill from the forward's O and LSE (FlashAttention-2's recomputation), in four
// kernels of one module, the same four as the Triton backward and with the same schedule:
//   {{ name }}       Delta[b, h, i] = sum_d dO[b, i, h, d] O[b, i, h, d] (fp32, the workspace);
//   {{ name }}_dkdv  one CTA per raw key block, or per segment of a summary block's queries, of
//                    BN = 16 x warps keys (16 per warp); it walks the query heads of its kv group
//                    and the BQ-row query blocks that see its keys: S^T = K Q^T, P^T from the LSE,
//                    dP^T = V dO^T, dS^T = P^T (dP^T - Delta), dV += P^T dO, dK += dS^T Q, every
//                    product on tensor cores with the accumulators in registers;
//   {{ name }}_dsum  the summary segments' fp32 partial sums added in order (no atomics);
//   {{ name }}_dq    one CTA per BN query rows (16 per warp), the forward's walk over the key
//                    tiles of BQ keys they see: S = Q K^T, dP = dO V^T, dS, dQ += dS K.
// tile {{ tile_name }}: BQ = {{ block_m }}, BN = {{ block_n }}, {{ warps }} warps, {{ stages }}-stage cp.async pipeline.
<% include "common.cuh" %>
<% include "attention.cuh" %>

constexpr int BQ = {{ block_m }};   // streamed rows a step: queries (dkdv), keys (dq)
constexpr int BN = {{ block_n }};   // held rows: keys (dkdv), queries (dq), 16 per warp
constexpr int NW = {{ warps }};
constexpr int STAGES = {{ stages }};
constexpr int THREADS = NW * 32;
constexpr int SUM_ROWS = 16;        // summary rows per CTA of the segment sum
static_assert(BN == 16 * NW, "block_n must be 16 x warps");
static_assert(BQ % 16 == 0 && BQ <= 64, "block_m must be 16, 32 or 64");
#define FE_POS_INF __int_as_float(0x7f800000)

FE_DEV void fe_st_f32x2(float* p, float a, float b) {
  asm volatile("st.global.v2.f32 [%0], {%1,%2};" ::"l"(p), "f"(a), "f"(b) : "memory");
}
FE_DEV void fe_st_u32x2(void* p, u32 a, u32 b) {
  asm volatile("st.global.v2.u32 [%0], {%1,%2};" ::"l"(p), "r"(a), "r"(b) : "memory");
}
FE_DEV void fe_ld_f32x4(const float* p, float (&x)[4]) {
  asm volatile("ld.global.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(x[0]), "=f"(x[1]), "=f"(x[2]), "=f"(x[3]) : "l"(p));
}

// Must match `PrefillBwdParams` in src/ops/prefill_bwd.rs field for field.
struct PrefillBwdParams {
  const u16* q;
  const u16* k;
  const u16* v;
  const u16* ks;
  const u16* vs;
  const u16* o;
  const u16* dout;
  const float* lse;
  u16* dq;
  u16* dk;
  u16* dv;
  u16* dks;
  u16* dvs;
  float* delta;  // [B, H, N]
  float* part;   // [2, B, HKV, splits, NSB * BN, D]
  i64 q_sb, q_st, q_sh;
  i64 k_sb, k_st, k_sh;
  i64 v_sb, v_st, v_sh;
  i64 ks_sb, ks_st, ks_sh;
  i64 vs_sb, vs_st, vs_sh;
  i64 o_sb, o_st, o_sh;
  i64 do_sb, do_st, do_sh;
  i64 dq_sb, dq_st, dq_sh;
  i64 dk_sb, dk_st, dk_sh;
  i64 dv_sb, dv_st, dv_sh;
  i64 dks_sb, dks_st, dks_sh;
  i64 dvs_sb, dvs_st, dvs_sh;
  i64 lse_sb, lse_sh;
  int b;       // sequences
  int n;       // tokens
  int h;       // query heads
  int hkv;     // key/value heads
  int nc;      // summaries in use: min(N / C, rows of ks)
  int ncr;     // rows of ks, vs, dks, dvs
  int splits;  // segments of a summary block's queries
  int seg;     // query rows per segment, a multiple of BQ
  float scale;
  float scale_log2;  // scale * log2(e)
};
static_assert(sizeof(PrefillBwdParams) == 464, "PrefillBwdParams must match src/ops/prefill_bwd.rs");

// ---- Delta ---------------------------------------------------------------------------------------
// grid (cdiv(N, 64), H, B): a warp per row at a time, 16-byte chunks across the lanes.
extern "C" __global__ void __launch_bounds__(THREADS) {{ name }}(const PrefillBwdParams p) {
  const int h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const u16* og = p.o + b * p.o_sb + h * p.o_sh;
  const u16* dg = p.dout + b * p.do_sb + h * p.do_sh;
  float* out = p.delta + ((i64)b * p.h + h) * p.n;
  for (int r = warp; r < 64; r += NW) {
    const int i = blockIdx.x * 64 + r;
    if (i >= p.n) break;
    float acc = 0.f;
    for (int c = lane; c < FE_CH; c += 32) {
      const fe_u32x4 x = fe_ld16(og + i * p.o_st + c * 8);
      const fe_u32x4 y = fe_ld16(dg + i * p.do_st + c * 8);
      acc += fe_lo(x.x) * fe_lo(y.x) + fe_hi(x.x) * fe_hi(y.x) + fe_lo(x.y) * fe_lo(y.y) + fe_hi(x.y) * fe_hi(y.y) +
             fe_lo(x.z) * fe_lo(y.z) + fe_hi(x.z) * fe_hi(y.z) + fe_lo(x.w) * fe_lo(y.w) + fe_hi(x.w) * fe_hi(y.w);
    }
    acc = fe_warp_sum(acc);
    if (lane == 0) out[i] = acc;
  }
}

// A warp's 16 x D fp32 accumulator, times `mul`, to rows of the storage type through shared memory
// (`stage`: 16 FE_DP-strided rows only this warp uses), as whole 16-byte stores: row r goes to
// `out + r * stride` if r < valid.
FE_DEV void fe_bwd_store(const float (&acc)[FE_DT][4], float mul, u16* stage, u16* out, i64 stride, int valid,
                         int lane) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    u16* row = stage + ((lane >> 2) + r * 8) * FE_DP + (lane & 3) * 2;
#pragma unroll
    for (int dt = 0; dt < FE_DT; ++dt) {
      *reinterpret_cast<u32*>(row + dt * 8) = fe_pack2(acc[dt][2 * r] * mul, acc[dt][2 * r + 1] * mul);
    }
  }
  __syncwarp();
#pragma unroll
  for (int i = lane; i < 16 * FE_CH; i += 32) {
    const int r = i / FE_CH, c = i % FE_CH;
    if (r < valid) fe_st16(out + r * stride + c * 8, *reinterpret_cast<const fe_u32x4*>(stage + r * FE_DP + c * 8));
  }
}

// Packs accumulator columns [16 kk, 16 kk + 16) of a 16-row fp32 tile into an A operand.
template <int NT>
FE_DEV void fe_bwd_pack_a(u32 (&a)[4], const float (&s)[NT][4], int kk) {
  a[0] = fe_pack2(s[2 * kk][0], s[2 * kk][1]);
  a[1] = fe_pack2(s[2 * kk][2], s[2 * kk][3]);
  a[2] = fe_pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
  a[3] = fe_pack2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// s[16 x 8 NB] = A[16 x D] B[8 NB x D]^T for A at a_addr (A-operand lane offset applied) and B at
// b_addr (B-operand lane offset applied), both FE_DP-strided in shared memory.
template <int NB>
FE_DEV void fe_bwd_qk(float (&s)[NB][4], u32 a_addr, u32 b_addr) {
#pragma unroll
  for (int i = 0; i < NB; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[i][e] = 0.f;
  }
#pragma unroll
  for (int kk = 0; kk < FE_KT; ++kk) {
    u32 a[4];
    fe_ldsm_x4(a, a_addr + (u32)(kk * 32));
#pragma unroll
    for (int nn = 0; nn < NB / 2; ++nn) {
      u32 bb[4];
      fe_ldsm_x4(bb, b_addr + (u32)(nn * 16 * FE_DP * 2 + kk * 32));
      fe_mma(s[2 * nn], a, bb[0], bb[1]);
      fe_mma(s[2 * nn + 1], a, bb[2], bb[3]);
    }
  }
}

// acc[16 x D] += P[16 x 8 NB] X[8 NB x D], P from registers, X at x_addr (A-operand lane offset
// applied: read transposed), FE_DP-strided.
template <int NB>
FE_DEV void fe_bwd_pv(float (&acc)[FE_DT][4], const float (&pr)[NB][4], u32 x_addr) {
#pragma unroll
  for (int kk = 0; kk < NB / 2; ++kk) {
    u32 a[4];
    fe_bwd_pack_a(a, pr, kk);
#pragma unroll
    for (int dn = 0; dn < FE_D / 16; ++dn) {
      u32 bb[4];
      fe_ldsm_x4_t(bb, x_addr + (u32)(kk * 16 * FE_DP * 2 + dn * 32));
      fe_mma(acc[2 * dn], a, bb[0], bb[1]);
      fe_mma(acc[2 * dn + 1], a, bb[2], bb[3]);
    }
  }
}

// ---- dK, dV (raw key blocks) and the summary blocks' partial sums ---------------------------------
// A 1-D grid of B * HKV * (NSB * splits + cdiv(N, BN)) CTAs, NSB = cdiv(nc, BN), the summary
// segments first (they are the long ones).
extern "C" __global__ void __launch_bounds__(THREADS, 1) {{ name }}_dkdv(const PrefillBwdParams p) {
  extern __shared__ __align__(16) unsigned char fe_smem[];
  u16* sK = (u16*)fe_smem;                        // BN x D: the CTA's keys
  u16* sV = sK + BN * FE_DP;                      // BN x D: their values
  u16* sQ = sV + BN * FE_DP;                      // STAGES x BQ x D
  u16* sO = sQ + STAGES * BQ * FE_DP;             // STAGES x BQ x D: dO
  float* sL = (float*)(sO + STAGES * BQ * FE_DP);  // STAGES x BQ: LSE * log2(e), +inf past N
  float* sD = sL + STAGES * BQ;                    // STAGES x BQ: Delta

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int N = p.n;
  const int group = p.h / p.hkv;
  const int nsb = (p.nc + BN - 1) / BN;
  const int n_sum = p.b * p.hkv * nsb * p.splits;
  const bool summary = (int)blockIdx.x < n_sum;
  int b, hk, j0, lim, i_lo, i_hi, seg = 0;
  if (summary) {
    int t = blockIdx.x;
    seg = t % p.splits;
    t /= p.splits;
    j0 = (t % nsb) * BN;
    t /= nsb;
    hk = t % p.hkv;
    b = t / p.hkv;
    lim = p.nc;
    // summary c is seen by every query i >= (c + 1) C; this segment's share of them
    i_lo = max((j0 + 1) * FE_C, seg * p.seg);
    i_hi = min((seg + 1) * p.seg, N) - 1;
  } else {
    const int raw_blocks = (N + BN - 1) / BN;
    int t = blockIdx.x - n_sum;
    j0 = (t % raw_blocks) * BN;
    t /= raw_blocks;
    hk = t % p.hkv;
    b = t / p.hkv;
    lim = N;
    // queries that see a key of the block: from its first key to its last key's last viewer
    i_lo = j0;
    i_hi = FE_SLIDING ? min(j0 + BN - 1 + FE_W - 1, N - 1) : min(((j0 + BN - 1) / FE_W + 1) * FE_W - 1, N - 1);
  }
  const u16* kg = summary ? p.ks + b * p.ks_sb + hk * p.ks_sh : p.k + b * p.k_sb + hk * p.k_sh;
  const u16* vg = summary ? p.vs + b * p.vs_sb + hk * p.vs_sh : p.v + b * p.v_sb + hk * p.v_sh;
  const i64 kst = summary ? p.ks_st : p.k_st;
  const i64 vst = summary ? p.vs_st : p.v_st;
  fe_load_rows<BN, THREADS>(sK, tid, kg + j0 * kst, kst, lim - j0);
  fe_load_rows<BN, THREADS>(sV, tid, vg + j0 * vst, vst, lim - j0);
  fe_cp_commit();

  const int start = (i_lo / BQ) * BQ;
  const int n_q = i_hi >= i_lo ? (i_hi - start) / BQ + 1 : 0;
  const int n_steps = group * n_q;

  auto load_step = [&](int t, int stage) {
    const int h = hk * group + t / n_q;
    const int i0 = start + (t % n_q) * BQ;
    fe_load_rows<BQ, THREADS>(sQ + stage * BQ * FE_DP, tid, p.q + b * p.q_sb + h * p.q_sh + i0 * p.q_st, p.q_st,
                              N - i0);
    fe_load_rows<BQ, THREADS>(sO + stage * BQ * FE_DP, tid, p.dout + b * p.do_sb + h * p.do_sh + i0 * p.do_st,
                              p.do_st, N - i0);
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

  float dk[FE_DT][4], dv[FE_DT][4];
#pragma unroll
  for (int i = 0; i < FE_DT; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  }
  const u32 k_a = fe_smem_addr(sK + warp * 16 * FE_DP) + fe_lane_off_a(lane);
  const u32 v_a = fe_smem_addr(sV + warp * 16 * FE_DP) + fe_lane_off_a(lane);
  const int my_j0 = j0 + warp * 16;  // this warp's keys

  for (int t = 0; t < n_steps; ++t) {
    if (STAGES == 1) {
      load_step(t, 0);
      fe_cp_commit();
      fe_cp_wait<0>();
    } else {
      fe_cp_wait<(STAGES > 1 ? STAGES - 2 : 0)>();
    }
    __syncthreads();
    if (STAGES > 1) {
      const int tn = t + STAGES - 1;
      if (tn < n_steps) load_step(tn, tn % STAGES);
      fe_cp_commit();
    }
    const int stage = t % STAGES;
    const int i0 = start + (t % n_q) * BQ;
    const u32 q_base = fe_smem_addr(sQ + stage * BQ * FE_DP);
    const u32 o_base = fe_smem_addr(sO + stage * BQ * FE_DP);
    const float* lse2 = sL + stage * BQ;
    const float* dlt = sD + stage * BQ;

    float s[BQ / 8][4], dp[BQ / 8][4];
    fe_bwd_qk<BQ / 8>(s, k_a, q_base + fe_lane_off_b(lane));   // S^T = K Q^T
    fe_bwd_qk<BQ / 8>(dp, v_a, o_base + fe_lane_off_b(lane));  // dP^T = V dO^T

    // Every (key, query) pair of this step visible (no mask work)?
    const bool full = summary ? j0 + BN <= min(i0 / FE_C, p.nc)
                              : (j0 + BN - 1 <= i0 && j0 >= fe_window_start(min(i0 + BQ - 1, N - 1)));
#pragma unroll
    for (int nt = 0; nt < BQ / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + (lane & 3) * 2 + (e & 1);
        const int i = i0 + col;
        const int j = my_j0 + (lane >> 2) + 8 * (e >> 1);
        bool vis = true;
        if (!full) vis = summary ? j < min(i / FE_C, p.nc) : (j <= i && j >= fe_window_start(i) && j < N);
        const float pv = vis ? fe_exp2(fmaf(s[nt][e], p.scale_log2, -lse2[col])) : 0.f;
        s[nt][e] = pv;
        dp[nt][e] = pv * (dp[nt][e] - dlt[col]);
      }
    }
    fe_bwd_pv<BQ / 8>(dv, s, o_base + fe_lane_off_a(lane));   // dV += P^T dO
    fe_bwd_pv<BQ / 8>(dk, dp, q_base + fe_lane_off_a(lane));  // dK += dS^T Q
    if (STAGES == 1) __syncthreads();
  }
  fe_cp_wait<0>();
  __syncthreads();  // every warp is done with sK: each now stages its own 16 rows there

  if (!summary) {
    u16* stage = sK + warp * 16 * FE_DP;
    const int valid = N - my_j0;
    if (valid > 0) {
      fe_bwd_store(dk, p.scale, stage, p.dk + b * p.dk_sb + hk * p.dk_sh + my_j0 * p.dk_st, p.dk_st, valid, lane);
      __syncwarp();
      fe_bwd_store(dv, 1.f, stage, p.dv + b * p.dv_sb + hk * p.dv_sh + my_j0 * p.dv_st, p.dv_st, valid, lane);
    }
  } else {
    const i64 nrows = (i64)nsb * BN;
    const i64 half = (i64)p.b * p.hkv * p.splits * nrows * FE_D;
    float* base = p.part + ((((i64)b * p.hkv + hk) * p.splits + seg) * nrows + my_j0) * FE_D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float* row = base + ((lane >> 2) + r * 8) * FE_D + (lane & 3) * 2;
#pragma unroll
      for (int dt = 0; dt < FE_DT; ++dt) {
        fe_st_f32x2(row + dt * 8, dk[dt][2 * r] * p.scale, dk[dt][2 * r + 1] * p.scale);
        fe_st_f32x2(row + half + dt * 8, dv[dt][2 * r], dv[dt][2 * r + 1]);
      }
    }
  }
}

// ---- dks, dvs: the segments added in order ------------------------------------------------------
// grid (cdiv(NCR, SUM_ROWS), HKV, B); every one of the NCR rows is written, zero at or past nc.
extern "C" __global__ void __launch_bounds__(THREADS) {{ name }}_dsum(const PrefillBwdParams p) {
  const int hk = blockIdx.y, b = blockIdx.z;
  const int nsb = (p.nc + BN - 1) / BN;
  const i64 nrows = (i64)nsb * BN;
  const i64 half = (i64)p.b * p.hkv * p.splits * nrows * FE_D;
  constexpr int Q4 = FE_D / 4;  // 4-float groups per row
  for (int w = threadIdx.x; w < SUM_ROWS * Q4; w += THREADS) {
    const int c = blockIdx.x * SUM_ROWS + w / Q4;
    const int d = (w % Q4) * 4;
    if (c >= p.ncr) break;
    float k4[4] = {0.f, 0.f, 0.f, 0.f}, v4[4] = {0.f, 0.f, 0.f, 0.f};
    if (c < p.nc) {
      for (int sg = 0; sg < p.splits; ++sg) {
        const float* src = p.part + ((((i64)b * p.hkv + hk) * p.splits + sg) * nrows + c) * FE_D + d;
        float x[4], y[4];
        fe_ld_f32x4(src, x);
        fe_ld_f32x4(src + half, y);
#pragma unroll
        for (int e = 0; e < 4; ++e) k4[e] += x[e], v4[e] += y[e];
      }
    }
    u16* dk = p.dks + b * p.dks_sb + hk * p.dks_sh + c * p.dks_st + d;
    u16* dv = p.dvs + b * p.dvs_sb + hk * p.dvs_sh + c * p.dvs_st + d;
    fe_st_u32x2(dk, fe_pack2(k4[0], k4[1]), fe_pack2(k4[2], k4[3]));
    fe_st_u32x2(dv, fe_pack2(v4[0], v4[1]), fe_pack2(v4[2], v4[3]));
  }
}

// ---- dQ ------------------------------------------------------------------------------------------
// grid (cdiv(N, BN), H, B), the latest query blocks (which see the most summaries) first. The
// forward's walk: the raw key tiles of BQ keys from the block's first window start, then the
// summaries it sees.
extern "C" __global__ void __launch_bounds__(THREADS, 1) {{ name }}_dq(const PrefillBwdParams p) {
  extern __shared__ __align__(16) unsigned char fe_smem[];
  u16* sQ = (u16*)fe_smem;             // BN x D
  u16* sO = sQ + BN * FE_DP;           // BN x D: dO
  u16* sK = sO + BN * FE_DP;           // STAGES x BQ x D
  u16* sV = sK + STAGES * BQ * FE_DP;  // STAGES x BQ x D

  const int qblock = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (p.h / p.hkv);
  const int N = p.n;
  const int m0 = qblock * BN;
  const int m_end = min(m0 + BN, N);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

  const u16* kg = p.k + b * p.k_sb + hk * p.k_sh;
  const u16* vg = p.v + b * p.v_sb + hk * p.v_sh;
  const u16* ksg = p.ks + b * p.ks_sb + hk * p.ks_sh;
  const u16* vsg = p.vs + b * p.vs_sb + hk * p.vs_sh;
  fe_load_rows<BN, THREADS>(sQ, tid, p.q + b * p.q_sb + h * p.q_sh + m0 * p.q_st, p.q_st, N - m0);
  fe_load_rows<BN, THREADS>(sO, tid, p.dout + b * p.do_sb + h * p.do_sh + m0 * p.do_st, p.do_st, N - m0);
  fe_cp_commit();

  const int lo = (fe_window_start(m0) / BQ) * BQ;
  const int n_local = (m_end - lo + BQ - 1) / BQ;
  const int ns = min((m_end - 1) / FE_C, p.nc);
  const int n_tiles = n_local + (ns + BQ - 1) / BQ;

  auto load_tile = [&](int t, int stage) {
    u16* dk = sK + stage * BQ * FE_DP;
    u16* dv = sV + stage * BQ * FE_DP;
    if (t < n_local) {
      const int j0 = lo + t * BQ;
      fe_load_rows<BQ, THREADS>(dk, tid, kg + j0 * p.k_st, p.k_st, N - j0);
      fe_load_rows<BQ, THREADS>(dv, tid, vg + j0 * p.v_st, p.v_st, N - j0);
    } else {
      const int c0 = (t - n_local) * BQ;
      fe_load_rows<BQ, THREADS>(dk, tid, ksg + c0 * p.ks_st, p.ks_st, ns - c0);
      fe_load_rows<BQ, THREADS>(dv, tid, vsg + c0 * p.vs_st, p.vs_st, ns - c0);
    }
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_tiles) load_tile(s, s);
    fe_cp_commit();
  }

  // This warp's rows [r_lo, r_hi]; each lane's two rows' LSE and Delta in registers.
  const int r_lo = m0 + warp * 16;
  const int r_hi = min(r_lo + 15, N - 1);
  const bool active = r_lo < N;
  float lse2[2], dlt[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = r_lo + (lane >> 2) + 8 * r;
    const bool ok = i < N;
    lse2[r] = ok ? p.lse[b * p.lse_sb + h * p.lse_sh + i] * FE_LOG2E : FE_POS_INF;
    dlt[r] = ok ? p.delta[((i64)b * p.h + h) * N + i] : 0.f;
  }
  const u32 q_a = fe_smem_addr(sQ + warp * 16 * FE_DP) + fe_lane_off_a(lane);
  const u32 o_a = fe_smem_addr(sO + warp * 16 * FE_DP) + fe_lane_off_a(lane);
  float dq[FE_DT][4];
#pragma unroll
  for (int i = 0; i < FE_DT; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[i][e] = 0.f;
  }

  for (int t = 0; t < n_tiles; ++t) {
    if (STAGES == 1) {
      load_tile(t, 0);
      fe_cp_commit();
      fe_cp_wait<0>();
    } else {
      fe_cp_wait<(STAGES > 1 ? STAGES - 2 : 0)>();
    }
    __syncthreads();
    if (STAGES > 1) {
      const int tn = t + STAGES - 1;
      if (tn < n_tiles) load_tile(tn, tn % STAGES);
      fe_cp_commit();
    }
    const int stage = t % STAGES;
    const bool local = t < n_local;
    const int j0 = local ? lo + t * BQ : (t - n_local) * BQ;
    // does any row of the warp see a key of the tile, and do all of them see all of it?
    bool any, full;
    if (local) {
      any = j0 <= r_hi && j0 + BQ - 1 >= fe_window_start(r_lo);
      full = j0 + BQ - 1 <= r_lo && j0 >= fe_window_start(r_hi);
    } else {
      any = j0 < min(r_hi / FE_C, p.nc);
      full = j0 + BQ <= min(r_lo / FE_C, p.nc);
    }
    if (active && any) {
      const u32 k_base = fe_smem_addr(sK + stage * BQ * FE_DP);
      const u32 v_base = fe_smem_addr(sV + stage * BQ * FE_DP);
      float s[BQ / 8][4], dp[BQ / 8][4];
      fe_bwd_qk<BQ / 8>(s, q_a, k_base + fe_lane_off_b(lane));   // S = Q K^T
      fe_bwd_qk<BQ / 8>(dp, o_a, v_base + fe_lane_off_b(lane));  // dP = dO V^T
#pragma unroll
      for (int nt = 0; nt < BQ / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1;
          const int i = r_lo + (lane >> 2) + 8 * r;
          const int j = j0 + nt * 8 + (lane & 3) * 2 + (e & 1);
          bool vis = true;
          if (!full) vis = local ? (j <= i && j >= fe_window_start(i)) : j < min(i / FE_C, p.nc);
          const float pv = vis ? fe_exp2(fmaf(s[nt][e], p.scale_log2, -lse2[r])) : 0.f;
          dp[nt][e] = pv * (dp[nt][e] - dlt[r]);
        }
      }
      fe_bwd_pv<BQ / 8>(dq, dp, k_base + fe_lane_off_a(lane));  // dQ += dS K
    }
    if (STAGES == 1) __syncthreads();
  }
  fe_cp_wait<0>();
  if (!active) return;
  // The warp's own Q rows in shared memory stage its output (no other warp reads them).
  fe_bwd_store(dq, p.scale, sQ + warp * 16 * FE_DP, p.dq + b * p.dq_sb + h * p.dq_sh + r_lo * p.dq_st, p.dq_st,
               N - r_lo, lane);
}
