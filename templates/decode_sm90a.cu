// flasheva decode for Hopper (sm_90a), fed by bulk tensor copies: {{ name }}, tile {{ tile_name }}
// The same visible sets, split plan, warp merge and last-block merge of the splits as decode.cu; only
// the way K and V reach shared memory differs: one producer thread issues TMA loads of whole
// {{ block_n }}-row K and V tiles into a {{ stages }}-stage ring (full/empty mbarriers), and each of the
// {{ warps }} - 1 consumer warps attends the tiles i = warp, warp + NW, ... of the block. A tile is one
// request instead of 2 x {{ block_n }} x D / 8 per-thread 16-byte copies, and the ring is as deep as
// shared memory allows without costing registers.
// The ring's visible rows are read in slot order: the visible raw keys of the query at p are exactly
// slots [0, n_local) (block mode: positions floor(p/W) W .. p are slots 0 .. p mod W; sliding: every
// slot once p >= W - 1, else slots 0 .. p), and attention does not depend on the order of its keys.
// Rows a tile loads past the visible ones (stale slots, summaries not yet complete) may hold anything:
// their logits are masked by assignment, and their V rows are zeroed in shared memory before P.V.
<% include "common.cuh" %>
<% include "attention.cuh" %>
<% include "hopper.cuh" %>

constexpr int G = {{ group }};
constexpr int HT = {{ head_tiles }};
constexpr int ROWS = {{ decode_rows }};
constexpr int BN = {{ block_n }};
constexpr int NWT = {{ warps }};  // warps in all: the producer (the last warp) and NW consumers
constexpr int NW = NWT - 1;
constexpr int STAGES = {{ stages }};
constexpr int THREADS = NWT * 32;
static_assert(FE_D == 64 || FE_D == 128, "the TMA decode takes head_dim 64 or 128");
static_assert(BN == 16 || BN == 32 || BN == 64, "block_n must be 16, 32 or 64");
static_assert(NW >= 2 && NW <= 8, "warps must be 3..9 (a producer and 2..8 consumers)");
static_assert(STAGES >= 2 && STAGES <= 8, "stages must be 2..8");
// Tile i goes to consumer warp i % NW and to stage i % STAGES. A consumer waits on a stage's full
// barrier by phase parity, which is only sound if it has itself seen the stage's previous phase
// complete: with STAGES a multiple of NW every tile of a stage belongs to the same warp (i and
// i - STAGES have the same i % NW), so it has.
static_assert(STAGES % NW == 0, "stages must be a multiple of the consumer warps (warps - 1)");

<% include "decode_common.cuh" %>

// Must match `DecodeTmaParams` in src/ops/decode.rs.
struct __align__(128) DecodeTmaParams {
  CUtensorMap tm_kr;  //   0: ring keys [B, W, Hkv, D]
  CUtensorMap tm_vr;  // 128
  CUtensorMap tm_ks;  // 256: summary keys [B, MAXNC, Hkv, D]
  CUtensorMap tm_vs;  // 384
  DecodeParams d;     // 512
};
static_assert(sizeof(DecodeTmaParams) == 896, "DecodeTmaParams must match src/ops/decode.rs");

// ---- shared memory (byte offsets from a 1024-aligned base) --------------------------------------
constexpr int PANELS = FE_D / 64;
constexpr int TILE_BYTES = BN * FE_D * 2;  // one K or one V tile: PANELS panels of BN x 128 bytes
constexpr int Q_BYTES = (ROWS * FE_DP * 2 + 1023) / 1024 * 1024;
constexpr int RING_BYTES = STAGES * 2 * TILE_BYTES;
constexpr int MERGE_BYTES = NW * (ROWS * FE_D + 2 * ROWS) * 4;  // the warp merge, after the ring
constexpr int OFF_Q = 0;
constexpr int OFF_KV = Q_BYTES;
constexpr int OFF_BAR = OFF_KV + (RING_BYTES > MERGE_BYTES ? RING_BYTES : MERGE_BYTES);
constexpr int OFF_LAST = OFF_BAR + 16 * STAGES;
constexpr int SMEM_BYTES = 1024 + OFF_LAST + 16;
static_assert(SMEM_BYTES <= 232448, "tile needs more than the 227 KiB of shared memory a block may have");
extern "C" __constant__ int {{ name }}_smem_bytes = SMEM_BYTES;


extern "C" __global__ void __launch_bounds__(THREADS, 1) {{ name }}(const __grid_constant__ DecodeTmaParams tp) {
  extern __shared__ __align__(1024) unsigned char fe_smem[];
  const DecodeParams& p = tp.d;
  const u32 raw = fe_smem_addr(fe_smem);
  const u32 sbase = (raw + 1023u) & ~1023u;
  unsigned char* sb_ptr = fe_smem + (sbase - raw);
  u16* sQ = reinterpret_cast<u16*>(sb_ptr + OFF_Q);
  float* scratch = reinterpret_cast<float*>(sb_ptr + OFF_KV);
  int* last = reinterpret_cast<int*>(sb_ptr + OFF_LAST);
  const u32 bar = sbase + OFF_BAR;  // full[s] at bar + 8 s, empty[s] at bar + 8 (STAGES + s)

  const int split = blockIdx.x;
  const int hk = blockIdx.y / HT;
  const int h0 = hk * G + (blockIdx.y % HT) * ROWS;
  const int nrows = min(ROWS, G - (int)(blockIdx.y % HT) * ROWS);
  const int b = blockIdx.z;
  const int tid = threadIdx.x;
  const int warp = __shfl_sync(0xffffffffu, tid >> 5, 0);
  const int lane = tid & 31;
  const int pos = p.len[b] - 1;

  const int lo = pos < 0 ? 0 : fe_window_start(pos);
  const int n_local = pos < 0 ? 0 : pos - lo + 1;  // visible ring slots: [0, n_local)
  const int ns = pos < 0 ? 0 : min(pos / FE_C, p.max_nc);
  const int t_local = (n_local + BN - 1) / BN;
  const int n_tiles = t_local + (ns + BN - 1) / BN;
  const int t_begin = (int)(((i64)n_tiles * split) / p.splits);
  const int t_end = (int)(((i64)n_tiles * (split + 1)) / p.splits);
  const int ntile = t_end - t_begin;

  if (tid == 0) {
#pragma unroll 1
    for (int s = 0; s < STAGES; ++s) {
      fe_mbar_init(bar + 8 * s, 1);
      fe_mbar_init(bar + 8 * (STAGES + s), 1);
    }
    fe_mbar_init_fence();
  }
  __syncthreads();

  FeRowState st[1];
  fe_state_init(st[0]);
  if (warp == NW) {
    // ---- the producer: one thread issues every tile's K and V loads, STAGES ahead at most
    if (lane == 0) {
      fe_prefetch_tmap(&tp.tm_kr);
      fe_prefetch_tmap(&tp.tm_vr);
      fe_prefetch_tmap(&tp.tm_ks);
      fe_prefetch_tmap(&tp.tm_vs);
#pragma unroll 1
      for (int i = 0; i < ntile; ++i) {
        const int s = i % STAGES;
        const u32 par = (u32)((i / STAGES) & 1);
        fe_mbar_wait(bar + 8 * (STAGES + s), par ^ 1u);  // the stage's previous tile is consumed
        const u32 full = bar + 8 * s;
        fe_mbar_arrive_tx(full, 2 * TILE_BYTES);
        const int t = t_begin + i;
        const bool ring = t < t_local;
        const int row = ring ? t * BN : (t - t_local) * BN;
        const CUtensorMap* mk = ring ? &tp.tm_kr : &tp.tm_ks;
        const CUtensorMap* mv = ring ? &tp.tm_vr : &tp.tm_vs;
        const u32 k_dst = sbase + OFF_KV + s * 2 * TILE_BYTES;
#pragma unroll
        for (int pn = 0; pn < PANELS; ++pn) {
          fe_tma_load_4d(k_dst + pn * BN * 128, mk, pn * 64, hk, row, b, full);
          fe_tma_load_4d(k_dst + TILE_BYTES + pn * BN * 128, mv, pn * 64, hk, row, b, full);
        }
      }
    }
    __syncwarp();
  } else {
    // ---- the consumers: the query tile once, then every NW-th tile of the block
    const u16* qg = p.q + b * p.q_sb;
    fe_load_rows<ROWS, NW * 32>(sQ, tid, qg + h0 * p.q_sh, p.q_sh, pos >= 0 ? nrows : 0);
    fe_cp_commit();
    fe_cp_wait<0>();
    fe_bar_sync(1, NW * 32);  // every consumer's share of Q has landed
    const u32 q_addr = fe_smem_addr(sQ);
    u32 qa[1][FE_KT][4];
    fe_load_q(qa, q_addr, lane);
#pragma unroll 1
    for (int i = warp; i < ntile; i += NW) {
      const int s = i % STAGES;
      fe_mbar_wait(bar + 8 * s, (u32)((i / STAGES) & 1));
      const int t = t_begin + i;
      const int valid = t < t_local ? min(BN, n_local - t * BN) : min(BN, ns - (t - t_local) * BN);
      const u32 k_addr = sbase + OFF_KV + s * 2 * TILE_BYTES;
      const u32 v_addr = k_addr + TILE_BYTES;
      if (valid == BN) {
        fe_attend_tile<1, BN, false, true, 1>(st, qa, q_addr, k_addr, v_addr, p.scale_log2, lane, 0, BN / 16,
                                              [](int, int&, int&) {});
      } else {
        // rows past the visible ones: zero their V (whole 128-byte rows, so the swizzle does not
        // matter), mask their logits
        const fe_u32x4 zero = {0u, 0u, 0u, 0u};
        for (int u = lane; u < (BN - valid) * PANELS * 8; u += 32) {
          const int r = valid + u / (PANELS * 8);
          const int rem = u % (PANELS * 8);
          const u32 a = v_addr + (rem / 8) * BN * 128 + r * 128 + (rem % 8) * 16;
          asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};" ::"r"(a), "r"(zero.x), "r"(zero.y), "r"(zero.z),
                       "r"(zero.w)
                       : "memory");
        }
        __syncwarp();
        fe_attend_tile<1, BN, true, true, 1>(st, qa, q_addr, k_addr, v_addr, p.scale_log2, lane, 0, (valid + 15) / 16,
                                             [&](int, int& clo, int& chi) {
                                               clo = 0;
                                               chi = valid - 1;
                                             });
        // the zeros were written by this warp's threads: order them before the next TMA write
        fe_fence_proxy_async();
      }
      __syncwarp();
      if (lane == 0) fe_mbar_arrive(bar + 8 * (STAGES + s));
    }
    fe_state_finish(st[0]);
  }

  // Every tile was consumed, so every load has landed: the ring is free for the warp merge (the
  // consumers hold row states, the producer none).
  fe_decode_finish<NW, THREADS>(p, st[0], scratch, last, b, h0, nrows, split, warp, lane, tid);
}
