// flasheva decode: {{ name }}
// One new query per sequence at position p = len[b] - 1 against the raw ring buffer (token t in slot
// t mod W) and the summary cache; visible sets are exactly prefill's for row p.
// Split-KV: grid.x splits the visible items of a sequence; the {{ group }} query heads of a kv head are
// one {{ decode_rows }}-row head tile ({{ head_tiles }} tile(s) per kv head), so every K/V byte is read once
// per tile. 16 rows: the heads are the MMA's M dimension; 8 rows (tile knob block_m = 8): the keys are,
// and the heads its N (the swapped tile of decode_common.cuh).
// Within a CTA each of the {{ warps }} warps streams its own K/V tiles ({{ block_n }} keys, {{ stages }}
// stages); warps, then splits (in {{ name }}_combine), are merged with the log-sum-exp rule.
// PAGED (decode_paged, the contract's item 7): the ring is row slot[b] of a slot pool and summary c is
// row c % page of page pt[b][c / page] of a page pool; everything else is the contiguous kernel.
<% include "common.cuh" %>
<% include "attention.cuh" %>

constexpr int G = {{ group }};
constexpr int HT = {{ head_tiles }};
constexpr int ROWS = {{ decode_rows }};
constexpr int BN = {{ block_n }};
constexpr int NW = {{ warps }};
constexpr int STAGES = {{ stages }};
constexpr int THREADS = NW * 32;
constexpr bool QREGS = FE_D <= 128;
constexpr bool PAGED = {{ paged }};
// The swapped tile (decode_common.cuh): keys as the MMA's M dimension, up to 8 heads as its N.
constexpr bool KQ = ROWS == 8;
static_assert(ROWS == 8 || ROWS == 16, "decode head tiles are 8 (swapped) or 16 rows");

constexpr bool QR = QREGS && !KQ;  // the 16-row tile keeps Q in registers
// K/V tiles in 128-byte-swizzled panels (fe_sw_addr) where D is a multiple of 64, else in padded
// rows: with padded rows a 128-byte line of a source row straddled two 128-byte rows of shared
// memory and the copies asked L2 for 1.5x the sectors they read (runs 53 and 55).
constexpr int KVSW = {{ kv_swizzle }} ? 1 : 0;  // (the rule: decode_kv_swizzled in src/tile.rs)
constexpr int KV_ROW = KVSW ? FE_D : FE_DP;  // elements per K/V row in shared memory

<% include "decode_common.cuh" %>

template <bool B, class T, class F>
struct FeIf {
  using type = T;
};
template <class T, class F>
struct FeIf<false, T, F> {
  using type = F;
};
using FeState = typename FeIf<KQ, FeColState, FeRowState>::type;

// The warp's query fragments, for the 16-row tile (into registers if QR) or the swapped one.
FE_DEV void fe_decode_load_q(FeRowState (&)[1], u32 (&qa)[1][QR ? FE_KT : 1][4], u32 (&)[FE_KT][2], u32 q_addr,
                             int lane) {
  if (QR) fe_load_q(qa, q_addr, lane);
}
FE_DEV void fe_decode_load_q(FeColState (&)[1], u32 (&)[1][QR ? FE_KT : 1][4], u32 (&qb)[FE_KT][2], u32 q_addr,
                             int lane) {
  fe_kq_load_q(qb, q_addr, lane);
}

// One K/V tile of `valid` visible keys (the rest masked), for the warp's head tile: the 16-row tile
// (Q fragments qa, or Q re-read at q_addr) or the swapped one (Q^T fragments qb).
template <bool MASKED>
FE_DEV void fe_decode_tile(FeRowState (&st)[1], const u32 (&qa)[1][QR ? FE_KT : 1][4], const u32 (&)[FE_KT][2],
                           u32 q_addr, u32 k_addr, u32 v_addr, float scale_log2, int lane, int valid) {
  fe_attend_tile<1, BN, MASKED, QR, KVSW>(st, qa, q_addr, k_addr, v_addr, scale_log2, lane, 0, (valid + 15) / 16,
                                    [&](int, int& clo, int& chi) {
                                      clo = 0;
                                      chi = valid - 1;
                                    });
}
template <bool MASKED>
FE_DEV void fe_decode_tile(FeColState (&st)[1], const u32 (&)[1][QR ? FE_KT : 1][4], const u32 (&qb)[FE_KT][2],
                           u32, u32 k_addr, u32 v_addr, float scale_log2, int lane, int valid) {
  fe_kq_attend<BN, MASKED, KVSW>(st[0], qb, k_addr, v_addr, scale_log2, lane, (valid + 15) / 16, valid);
}


extern "C" __global__ void __launch_bounds__(THREADS, 1) {{ name }}(const DecodeParams p) {
  extern __shared__ __align__(16) unsigned char fe_smem[];
  u16* sQ = (u16*)fe_smem;
  u16* sKV = sQ + ROWS * FE_DP + (threadIdx.x >> 5) * (STAGES * 2 * BN * KV_ROW);
  float* scratch = (float*)(sQ + ROWS * FE_DP);

  const int split = blockIdx.x;
  const int hk = blockIdx.y / HT;
  const int h0 = hk * G + (blockIdx.y % HT) * ROWS;
  const int nrows = min(ROWS, G - (int)(blockIdx.y % HT) * ROWS);
  const int b = blockIdx.z;
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int pos = p.len[b] - 1;
  // PAGED: the ring's row in the slot pool, loaded beside the length (it does not depend on it)
  const i64 rb = PAGED ? (i64)__ldg(p.slot + b) : (i64)b;

  const int lo = pos < 0 ? 0 : fe_window_start(pos);
  const int n_local = pos < 0 ? 0 : pos - lo + 1;
  const int ns = pos < 0 ? 0 : min(pos / FE_C, p.max_nc);
  const int t_local = (n_local + BN - 1) / BN;
  const int n_tiles = t_local + (ns + BN - 1) / BN;
  const int t_begin = (int)(((i64)n_tiles * split) / p.splits);
  const int t_end = (int)(((i64)n_tiles * (split + 1)) / p.splits);
  // This warp's tiles: t_begin + warp, t_begin + warp + NW, ...
  const int my_tiles = t_end - t_begin > warp ? (t_end - t_begin - warp + NW - 1) / NW : 0;

  const u16* krg = p.kr + rb * p.kr_sb + hk * p.kr_sh;
  const u16* vrg = p.vr + rb * p.vr_sb + hk * p.vr_sh;
  const u16* ksg = p.ks + (PAGED ? 0 : b * p.ks_sb) + hk * p.ks_sh;
  const u16* vsg = p.vs + (PAGED ? 0 : b * p.vs_sb) + hk * p.vs_sh;
  // PAGED: summary c is in page pt[b][c / page] at row c % page; pages of a power-of-two size (what
  // engines use) take a shift and a mask, other sizes a division.
  const int* ptb = PAGED ? p.pt + b * p.pt_sb : nullptr;
  const int pshift = PAGED && (p.page & (p.page - 1)) == 0 ? __ffs(p.page) - 1 : -1;
  auto page_of = [&](int c, int& row) -> i64 {
    int pg;
    if (pshift >= 0) {
      pg = c >> pshift;
      row = c & (p.page - 1);
    } else {
      pg = c / p.page;
      row = c - pg * p.page;
    }
    return (i64)__ldg(ptb + pg);
  };

  // Pages a multiple of BN rows (what engines use): a summary tile lies in one page. Each lane
  // holds the page id of one of this warp's tiles: `pg_cur` those of tiles [32j, 32j + 32),
  // `pg_next` those of the next 32, asked for when the loop enters the 32 before them; a tile's
  // id is a shuffle, so no tile's copies wait on the page table (run 26: one id loaded a tile
  // ahead left the paged decode 12-16 % behind the contiguous one at small batches, where
  // summaries are 80 % of the rows). Other page sizes look up every row.
  const bool whole_pages = PAGED && p.page % BN == 0;
  auto tile_page_id = [&](int k) -> int {
    const int t = t_begin + warp + k * NW;
    if (!whole_pages || k >= my_tiles || t < t_local) return -1;
    int row;
    return (int)page_of((t - t_local) * BN, row);
  };
  int pg_cur = tile_page_id(lane);
  int pg_next = tile_page_id(32 + lane);
  // Tile k's page id (-1 for a ring tile); called by every lane of the warp for k = 0, 1, 2, ...
  // in order (a new 32 rotates the ids and asks for the 32 after them).
  auto page_id = [&](int k) -> i64 {
    if (!whole_pages) return -1;
    if (k >= 32 && (k & 31) == 0) {
      pg_cur = pg_next;
      pg_next = tile_page_id(k + 32 + lane);
    }
    return (i64)__shfl_sync(0xffffffffu, pg_cur, k & 31);
  };

  // A tile's K and V rows when they are evenly strided: unpredicated copies when every row is
  // visible (all but a sequence's last tile), guarded ones otherwise.
  auto load_strided = [&](u16* dk, u16* dv, const u16* kb, i64 kst, const u16* vb, i64 vst, int valid) {
    if (valid >= BN) {
      fe_load_rows<BN, 32, KVSW != 0, true>(dk, lane, kb, kst, BN);
      fe_load_rows<BN, 32, KVSW != 0, true>(dv, lane, vb, vst, BN);
    } else {
      fe_load_rows<BN, 32, KVSW != 0>(dk, lane, kb, kst, valid);
      fe_load_rows<BN, 32, KVSW != 0>(dv, lane, vb, vst, valid);
    }
  };
  auto load_tile = [&](int k, int stage, i64 tile_pg) {
    const int t = t_begin + warp + k * NW;
    u16* dk = sKV + stage * 2 * BN * KV_ROW;
    u16* dv = dk + BN * KV_ROW;
    if (t < t_local) {
      const int u0 = t * BN;
      // ring slots (lo + u0 + r) mod W: one strided run unless the tile wraps or is the last
      const int s0 = (lo + u0) % FE_W;
      if (u0 + BN <= n_local && s0 + BN <= FE_W) {
        load_strided(dk, dv, krg + s0 * p.kr_ss, p.kr_ss, vrg + s0 * p.vr_ss, p.vr_ss, BN);
        return;
      }
      fe_load_rows_map<BN, 32, KVSW != 0>(dk, lane, krg, [&](int r) -> const u16* {
        return u0 + r < n_local ? krg + ((lo + u0 + r) % FE_W) * p.kr_ss : nullptr;
      });
      fe_load_rows_map<BN, 32, KVSW != 0>(dv, lane, vrg, [&](int r) -> const u16* {
        return u0 + r < n_local ? vrg + ((lo + u0 + r) % FE_W) * p.vr_ss : nullptr;
      });
    } else if (PAGED && whole_pages) {
      const int c0 = (t - t_local) * BN;
      const int row0 = pshift >= 0 ? (c0 & (p.page - 1)) : c0 % p.page;
      load_strided(dk, dv, ksg + tile_pg * p.ks_sb + row0 * p.ks_st, p.ks_st, vsg + tile_pg * p.vs_sb + row0 * p.vs_st,
                   p.vs_st, ns - c0);
    } else if (PAGED) {
      const int c0 = (t - t_local) * BN;
      fe_load_rows_map<BN, 32, KVSW != 0>(dk, lane, ksg, [&](int r) -> const u16* {
        if (c0 + r >= ns) return nullptr;
        int row;
        const i64 pg = page_of(c0 + r, row);
        return ksg + pg * p.ks_sb + row * p.ks_st;
      });
      fe_load_rows_map<BN, 32, KVSW != 0>(dv, lane, vsg, [&](int r) -> const u16* {
        if (c0 + r >= ns) return nullptr;
        int row;
        const i64 pg = page_of(c0 + r, row);
        return vsg + pg * p.vs_sb + row * p.vs_st;
      });
    } else {
      const int c0 = (t - t_local) * BN;
      load_strided(dk, dv, ksg + c0 * p.ks_st, p.ks_st, vsg + c0 * p.vs_st, p.vs_st, ns - c0);
    }
  };

  // PAGED: the prologue's page ids, shuffled out of pg_cur (whose load is issued above; the shuffle
  // waits for it, and so do Q's copies below).
  i64 pro_pg[STAGES];
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) pro_pg[s] = page_id(s);

  const u16* qg = p.q + b * p.q_sb;
  fe_load_rows<ROWS, THREADS>(sQ, tid, qg + h0 * p.q_sh, p.q_sh, pos >= 0 ? nrows : 0);
  fe_cp_commit();

  // Each warp's K/V pipeline starts before the query tile has landed (one memory latency less per
  // block: at small batches every block starts at once). The query tile's copies are the oldest
  // group, so waiting until only the prologue's STAGES - 1 groups may be pending means this
  // thread's share of Q is in; the barrier then makes all of Q visible to every warp.
  FeState st[1];
  fe_state_init(st[0]);
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < my_tiles) load_tile(s, s, pro_pg[s]);
    fe_cp_commit();
  }
  fe_cp_wait<STAGES - 1>();
  __syncthreads();
  const u32 q_addr = fe_smem_addr(sQ);
  u32 qa[1][QR ? FE_KT : 1][4];
  u32 qb[FE_KT][2];  // (the swapped tile only; unused otherwise)
  fe_decode_load_q(st, qa, qb, q_addr, lane);
  for (int k = 0; k < my_tiles; ++k) {
    const int kn = k + STAGES - 1;
    const i64 pg = page_id(kn);
    if (kn < my_tiles) load_tile(kn, kn % STAGES, pg);
    fe_cp_commit();
    fe_cp_wait<STAGES - 1>();
    __syncwarp();
    const int t = t_begin + warp + k * NW;
    const int valid = t < t_local ? min(BN, n_local - t * BN) : min(BN, ns - (t - t_local) * BN);
    const u32 k_addr = fe_smem_addr(sKV + (k % STAGES) * 2 * BN * KV_ROW);
    const u32 v_addr = k_addr + BN * KV_ROW * 2;
    if (valid == BN) {
      fe_decode_tile<false>(st, qa, qb, q_addr, k_addr, v_addr, p.scale_log2, lane, BN);
    } else {
      fe_decode_tile<true>(st, qa, qb, q_addr, k_addr, v_addr, p.scale_log2, lane, valid);
    }
    __syncwarp();
  }
  fe_cp_wait<0>();
  fe_state_finish(st[0]);

  // Merge the warps through shared memory (the K/V buffers are free now), write the rows or this
  // split's partials, merge the splits in the last block.
  fe_decode_finish<NW, THREADS>(p, st[0], scratch, reinterpret_cast<int*>(scratch), b, h0, nrows, split, warp,
                                lane, tid);
}

// Merges the per-split partial results of {{ name }} where its launch could not (the first launch
// on a stream under graph capture, when no counters can be allocated): grid (H, B), one warp per
// head and sequence, the last block's merge.
constexpr int COMBINE_THREADS = 32;
extern "C" __global__ void __launch_bounds__(COMBINE_THREADS) {{ name }}_combine(const DecodeParams p) {
  fe_merge_splits<1>(p, blockIdx.y, blockIdx.x, 1, 0, threadIdx.x);
}
