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

<% include "prefill_bwd_common.cuh" %>

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
  const FeBwdBlock blk = fe_bwd_block(p);
  const bool summary = blk.summary;
  const int b = blk.b, hk = blk.hk, j0 = blk.j0, seg = blk.seg;
  const int start = blk.start, n_q = blk.n_q, nsb = blk.nsb;
  fe_load_rows<BN, THREADS>(sK, tid, blk.kg + j0 * blk.kst, blk.kst, blk.lim - j0);
  fe_load_rows<BN, THREADS>(sV, tid, blk.vg + j0 * blk.vst, blk.vst, blk.lim - j0);
  fe_cp_commit();

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
    fe_stage_top<STAGES>(t, n_steps, [] {}, load_step);
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
    fe_bwd_store_part(dk, dv, p, b, hk, seg, nsb, my_j0, lane);
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
    fe_stage_top<STAGES>(t, n_tiles, [] {}, load_tile);
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
