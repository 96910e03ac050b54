// flasheva prefill: {{ name }}
// O_i = softmax([s q_i.k_j for visible local j] ++ [s q_i.ks_c for visible summaries c]) . ([v_j] ++ [vs_c])
// tile {{ tile_name }}: {{ block_m }} query rows per CTA ({{ warps }} warps x {{ warp_rows }} rows), {{ block_n }}
// keys per tile, {{ stages }}-stage cp.async pipeline with one barrier per tile. One pass over the
// local keys, then the summaries. Per warp, 16-key sub-tiles no row can see are skipped; fully
// visible tiles run without a mask; the rest are masked by per-row column ranges.
<% include "common.cuh" %>
<% include "attention.cuh" %>

constexpr int BM = {{ block_m }};
constexpr int BN = {{ block_n }};
constexpr int NW = {{ warps }};
constexpr int MT = BM / (16 * NW);  // 16-row m-tiles per warp
constexpr int STAGES = {{ stages }};
constexpr int THREADS = NW * 32;
constexpr bool QREGS = MT == 1 && FE_D <= 128;
static_assert(MT * 16 * NW == BM, "block_m must be 16 x warps x m-tiles");

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
  float scale_log2;  // scale * log2(e), > 0
  int reserved;
};
static_assert(sizeof(PrefillParams) == 240, "PrefillParams must match src/gpu/params.rs");

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
  fe_load_rows<BM, THREADS>(sQ, tid, qg + m0 * p.q_st, p.q_st, N - m0);
  fe_cp_commit();

  // The tiles this CTA visits: local keys [lo, m_end), BN-aligned, then summaries [0, ns).
  const int lo = (fe_window_start(m0) / BN) * BN;
  const int n_local = (m_end - lo + BN - 1) / BN;
  const int ns = min((m_end - 1) / FE_C, p.nc);
  const int n_tiles = n_local + (ns + BN - 1) / BN;

  auto load_tile = [&](int t, int stage) {
    u16* dk = sK + stage * BN * FE_DP;
    u16* dv = sV + stage * BN * FE_DP;
    if (t < n_local) {
      const int j0 = lo + t * BN;
      fe_load_rows<BN, THREADS>(dk, tid, kg + j0 * p.k_st, p.k_st, N - j0);
      fe_load_rows<BN, THREADS>(dv, tid, vg + j0 * p.v_st, p.v_st, N - j0);
    } else {
      const int c0 = (t - n_local) * BN;
      fe_load_rows<BN, THREADS>(dk, tid, ksg + c0 * p.ks_st, p.ks_st, ns - c0);
      fe_load_rows<BN, THREADS>(dv, tid, vsg + c0 * p.vs_st, p.vs_st, ns - c0);
    }
  };

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_tiles) load_tile(s, s);
    fe_cp_commit();
  }

  // This warp's rows [r_lo, r_hi]; a warp past the end still takes part in loads and barriers.
  const int r_lo = m0 + warp * 16 * MT;
  const int r_hi = min(r_lo + 16 * MT - 1, N - 1);
  const bool active = r_lo < N;
  u16* sQw = sQ + warp * 16 * MT * FE_DP;
  const u32 q_addr = fe_smem_addr(sQw);
  const int vis_lo = min(r_lo / FE_C, p.nc);  // summaries every row of the warp sees
  const int vis_hi = min(r_hi / FE_C, p.nc);  // summaries some row of the warp sees

  FeRowState st[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) fe_state_init(st[mt]);
  u32 qa[QREGS ? MT : 1][QREGS ? FE_KT : 1][4];

  for (int t = 0; t < n_tiles; ++t) {
    // tile t visible to every thread, every warp done with tile t - 1, whose stage is refilled
    fe_stage_top<STAGES>(t, n_tiles, [] {}, load_tile);
    if (QREGS && t == 0) fe_load_q(qa, q_addr, lane);

    const int stage = t % STAGES;
    const u32 k_addr = fe_smem_addr(sK + stage * BN * FE_DP);
    const u32 v_addr = fe_smem_addr(sV + stage * BN * FE_DP);
    if (active) {
      if (t < n_local) {
        const int j0 = lo + t * BN;
        // Columns some row of the warp sees: [window_start(r_lo) - j0, r_hi - j0].
        const int sub_lo = max(0, fe_window_start(r_lo) - j0) / 16;
        const int sub_hi = (min(BN, r_hi - j0 + 1) + 15) / 16;
        const bool full = j0 + BN - 1 <= r_lo && (FE_SLIDING ? j0 > r_hi - FE_W : (j0 / FE_W) == (r_hi / FE_W));
        if (full) {
          fe_attend_tile<MT, BN, false, QREGS>(st, qa, q_addr, k_addr, v_addr, p.scale_log2, lane, 0, BN / 16,
                                               [](int, int&, int&) {});
        } else if (sub_lo < sub_hi) {
          fe_attend_tile<MT, BN, true, QREGS>(st, qa, q_addr, k_addr, v_addr, p.scale_log2, lane, sub_lo, sub_hi,
                                              [&](int r, int& clo, int& chi) {
                                                const int i = r_lo + r;
                                                clo = fe_window_start(i) - j0;
                                                chi = i - j0;
                                              });
        }
      } else {
        const int c0 = (t - n_local) * BN;
        if (c0 + BN <= vis_lo) {
          fe_attend_tile<MT, BN, false, QREGS>(st, qa, q_addr, k_addr, v_addr, p.scale_log2, lane, 0, BN / 16,
                                               [](int, int&, int&) {});
        } else if (c0 < vis_hi) {
          fe_attend_tile<MT, BN, true, QREGS>(st, qa, q_addr, k_addr, v_addr, p.scale_log2, lane, 0,
                                              (min(BN, vis_hi - c0) + 15) / 16,
                                              [&](int r, int& clo, int& chi) {
                                                clo = 0;
                                                chi = min((r_lo + r) / FE_C, p.nc) - 1 - c0;
                                              });
        }
      }
    }
    if (STAGES == 1) __syncthreads();
  }
  fe_cp_wait<0>();

  if (!active) return;
  // The warp's own Q rows in shared memory stage its output (no other warp reads them).
  u16* og = p.o + b * p.o_sb + h * p.o_sh;
  float* lg = p.lse + b * p.lse_sb + h * p.lse_sh;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    fe_state_finish(st[mt]);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = r_lo + mt * 16 + (lane >> 2) + r * 8;
      if (i < N && (lane & 3) == 0) lg[i] = fe_lse(st[mt].m[r], st[mt].l[r]);
    }
  }
  __syncwarp();
  fe_store_rows<MT>(st, sQw, og + r_lo * p.o_st, p.o_st, N - r_lo, lane);
}
