// flasheva prefill: {{ name }}
// O_i = softmax([s q_i.k_j for visible local j] ++ [s q_i.ks_c for visible summaries c]) . ([v_j] ++ [vs_c])
// tile {{ tile_name }}: {{ block_m }} query rows per CTA ({{ warps }} warps x 16), {{ block_n }} keys per
// tile, {{ stages }}-stage cp.async pipeline. One pass over the local keys, then the summaries; tiles a
// warp cannot see are skipped, fully visible ones run without a mask.
<% include "common.cuh" %>
<% include "attention.cuh" %>

constexpr int W = {{ window }};
constexpr int C = {{ chunk }};
constexpr bool SLIDING = {{ sliding }};
constexpr int BM = {{ block_m }};
constexpr int BN = {{ block_n }};
constexpr int NW = {{ warps }};
constexpr int STAGES = {{ stages }};
constexpr int THREADS = NW * 32;
constexpr bool QREGS = FE_D <= 128;

// Must match `PrefillParams` in src/gpu/params.rs field for field.
struct PrefillParams {
  const u16* q;
  const u16* k;
  const u16* v;
  const u16* ks;
  const u16* vs;
  u16* o;
  float* lse;
  i64 q_sb, q_st, q_sh;
  i64 k_sb, k_st, k_sh;
  i64 v_sb, v_st, v_sh;
  i64 ks_sb, ks_st, ks_sh;
  i64 vs_sb, vs_st, vs_sh;
  i64 o_sb, o_st, o_sh;
  i64 lse_sb, lse_sh;
  int n;      // tokens
  int h;      // query heads
  int hkv;    // key/value heads
  int nc;     // summary rows present in ks/vs
  float scale_log2;  // scale * log2(e)
  int reserved;
};
static_assert(sizeof(PrefillParams) == 240, "PrefillParams must match src/gpu/params.rs");


FE_DEV int fe_window_start(int i) { return SLIDING ? (i - W + 1 > 0 ? i - W + 1 : 0) : (i / W) * W; }

extern "C" __global__ void __launch_bounds__(THREADS, 1) {{ name }}(const PrefillParams p) {
  extern __shared__ __align__(16) unsigned char fe_smem[];
  u16* sQ = (u16*)fe_smem;
  u16* sK = sQ + BM * FE_DP;
  u16* sV = sK + STAGES * BN * FE_DP;

  // Heaviest query blocks (latest positions see the most summaries) are scheduled first.
  const int qblock = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int hk = h / (p.h / p.hkv);
  const int N = p.n;
  const int m0 = qblock * BM;
  const int m_end = min(m0 + BM, N);
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;

  const u16* qg = p.q + b * p.q_sb + h * p.q_sh;
  const u16* kg = p.k + b * p.k_sb + hk * p.k_sh;
  const u16* vg = p.v + b * p.v_sb + hk * p.v_sh;
  const u16* ksg = p.ks + b * p.ks_sb + hk * p.ks_sh;
  const u16* vsg = p.vs + b * p.vs_sb + hk * p.vs_sh;

  // Q tile (its own cp.async group, complete before the first K/V tile is used).
  fe_load_rows<BM, THREADS>(sQ, tid, qg, [&](int r) -> const u16* {
    const int i = m0 + r;
    return i < N ? qg + i * p.q_st : nullptr;
  });
  fe_cp_commit();

  // The tiles this CTA visits: local keys [lo, m_end), BN-aligned, then summaries [0, ns).
  const int lo = (fe_window_start(m0) / BN) * BN;
  const int n_local = (m_end - lo + BN - 1) / BN;
  const int ns = min((m_end - 1) / C, p.nc);
  const int n_tiles = n_local + (ns + BN - 1) / BN;

  auto load_tile = [&](int t, int stage) {
    u16* dk = sK + stage * BN * FE_DP;
    u16* dv = sV + stage * BN * FE_DP;
    if (t < n_local) {
      const int j0 = lo + t * BN;
      fe_load_rows<BN, THREADS>(dk, tid, kg, [&](int r) -> const u16* {
        return j0 + r < N ? kg + (j0 + r) * p.k_st : nullptr;
      });
      fe_load_rows<BN, THREADS>(dv, tid, vg, [&](int r) -> const u16* {
        return j0 + r < N ? vg + (j0 + r) * p.v_st : nullptr;
      });
    } else {
      const int c0 = (t - n_local) * BN;
      fe_load_rows<BN, THREADS>(dk, tid, ksg, [&](int r) -> const u16* {
        return c0 + r < ns ? ksg + (c0 + r) * p.ks_st : nullptr;
      });
      fe_load_rows<BN, THREADS>(dv, tid, vsg, [&](int r) -> const u16* {
        return c0 + r < ns ? vsg + (c0 + r) * p.vs_st : nullptr;
      });
    }
  };

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_tiles) load_tile(s, s);
    fe_cp_commit();
  }

  // This warp's rows [r_lo, r_hi]; a warp past the end still takes part in loads and barriers.
  const int r_lo = m0 + warp * 16;
  const int r_hi = min(r_lo + 15, N - 1);
  const bool active = r_lo < N;
  const u32 q_addr = fe_smem_addr(sQ + warp * 16 * FE_DP);

  FeRowState st;
  fe_state_init(st);
  u32 qa[QREGS ? FE_KT : 1][4];

  for (int t = 0; t < n_tiles; ++t) {
    const int tn = t + STAGES - 1;
    if (tn < n_tiles) load_tile(tn, tn % STAGES);
    fe_cp_commit();
    fe_cp_wait<STAGES - 1>();
    __syncthreads();
    if (QREGS && t == 0) fe_load_q(qa, q_addr, lane);

    const int stage = t % STAGES;
    const u32 k_addr = fe_smem_addr(sK + stage * BN * FE_DP);
    const u32 v_addr = fe_smem_addr(sV + stage * BN * FE_DP);
    if (active) {
      if (t < n_local) {
        const int j0 = lo + t * BN;
        const int j1 = j0 + BN - 1;
        const bool any = j0 <= r_hi && j1 >= fe_window_start(r_lo);
        const bool full = j1 <= r_lo && (SLIDING ? j0 > r_hi - W : (j0 / W) == (r_hi / W));
        if (full) {
          fe_attend_tile<BN, false, QREGS>(st, qa, q_addr, k_addr, v_addr, p.scale_log2, lane,
                                           [](int, int) { return true; });
        } else if (any) {
          fe_attend_tile<BN, true, QREGS>(st, qa, q_addr, k_addr, v_addr, p.scale_log2, lane,
                                          [&](int r, int c) {
                                            const int i = r_lo + r;
                                            const int j = j0 + c;
                                            return j <= i && (SLIDING ? j > i - W : (j / W) == (i / W));
                                          });
        }
      } else {
        const int c0 = (t - n_local) * BN;
        const int vis_lo = min(r_lo / C, p.nc);  // summaries every row of the warp sees
        const int vis_hi = min(r_hi / C, p.nc);  // summaries some row of the warp sees
        if (c0 + BN <= vis_lo) {
          fe_attend_tile<BN, false, QREGS>(st, qa, q_addr, k_addr, v_addr, p.scale_log2, lane,
                                           [](int, int) { return true; });
        } else if (c0 < vis_hi) {
          fe_attend_tile<BN, true, QREGS>(st, qa, q_addr, k_addr, v_addr, p.scale_log2, lane,
                                          [&](int r, int c) { return c0 + c < min((r_lo + r) / C, p.nc); });
        }
      }
    }
    __syncthreads();
  }
  fe_cp_wait<0>();

  if (!active) return;
  fe_state_finish(st);
  u16* og = p.o + b * p.o_sb + h * p.o_sh;
  float* lg = p.lse + b * p.lse_sb + h * p.lse_sh;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = r_lo + (lane >> 2) + r * 8;
    if (i >= N) continue;
    const float inv = 1.f / st.l[r];
    u16* orow = og + i * p.o_st + (lane & 3) * 2;
#pragma unroll
    for (int dt = 0; dt < FE_DT; ++dt) {
      *reinterpret_cast<u32*>(orow + dt * 8) = fe_pack2(st.o[dt][2 * r] * inv, st.o[dt][2 * r + 1] * inv);
    }
    if ((lane & 3) == 0) lg[i] = (st.m[r] + fe_log2(st.l[r])) * FE_LN2;
  }
}
