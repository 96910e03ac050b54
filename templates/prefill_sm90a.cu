// flasheva prefill for Hopper (sm_90a): {{ name }}, tile {{ tile_name }}
// O_i = softmax([s q_i.k_j for visible local j] ++ [s q_i.ks_c for visible summaries c]) . ([v_j] ++ [vs_c])
//
// Warp-specialised, persistent, FlashAttention-3 style (docs/hopper-prefill.md has the full design and
// the host-side contract):
//  - warpgroup 0 (the producer) gives registers back (setmaxnreg.dec); one of its threads walks the
//    CTA's query tiles and issues TMA loads: Q (one buffer), then, for every key block the tile can see,
//    K and V into a {{ stages }}-stage ring with full/empty mbarriers (K and V separately).
//  - warpgroups 1..NC (the consumers, setmaxnreg.inc) own 64 query rows each ({{ block_m }} per tile) and run
//    S = Q.K^T (wgmma, both operands in shared memory, 128-byte swizzle, K-major), online softmax in
//    registers, O += P.V (wgmma, P from registers, V in shared memory read MN-major). The softmax of block
//    j overlaps the P.V wgmma of block j-1; with two consumers they take turns issuing (pingpong).
//  - EVA structure at compile time: each tile visits exactly the key blocks it can see: local keys from
//    the window start of its first row to the diagonal (diagonal first), then the summary blocks
//    [0, min((m_end-1)/C, nc)). Blocks every row of a warpgroup fully sees run without mask code.
//  - EXTEND (the extend op, docs/hopper-prefill.md "Extend"): query row t of sequence b is position
//    L0[b] + t; keys come from a workspace that {{ name }}_gather fills first (the ring's last W tokens,
//    then the T new ones: key row j is position L0 - W + j; the summaries; zeros wherever nothing is
//    cached or a row lies past T), so the attention is the prefill's with positions offset per
//    sequence. Tiles past a sequence's T are skipped.
<% include "common.cuh" %>
<% include "hopper.cuh" %>

// The spec (common.cuh): FE_D head dim, FE_W window, FE_C chunk, FE_SLIDING local mode, fe_window_start(i).
constexpr bool EXTEND = {{ extend }};
constexpr int BM = {{ block_m }};
constexpr int BN = {{ block_n }};
constexpr int NWARPS = {{ warps }};
constexpr int STAGES = {{ stages }};

constexpr int NC = NWARPS / 4 - 1;  // consumer warpgroups
constexpr int NT = NWARPS * 32;
static_assert(FE_D == 64 || FE_D == 128 || FE_D == 256, "head_dim must be 64, 128 or 256");
static_assert(NC == 2 || NC == 3, "warps must be 12 (2 consumer warpgroups) or 16 (3)");
static_assert(BM == 64 * NC, "block_m must be 64 x consumer warpgroups");
static_assert(BN == 64 || BN == 128, "block_n must be 64 or 128");
static_assert(STAGES >= 2 && STAGES <= 8, "stages must be 2..8");
static_assert(FE_W > 0 && FE_C > 0, "window and chunk must be positive");

// Experiments (not template context: -D on the compiler command line overrides the defaults).
#ifndef FE_PINGPONG
#define FE_PINGPONG 0  // 1: the two consumer warpgroups take turns issuing their wgmma (named barriers 1, 2);
                       // off by default: measured 1-2.5% slower on the H200 (docs/VALIDATION.md, 2026-11-28)
#endif
#ifndef FE_SETMAXNREG
#define FE_SETMAXNREG 1  // 0: no register reallocation (diagnostic: consumers then spill at D=128)
#endif
#ifndef FE_V_DESC_SWAP
#define FE_V_DESC_SWAP 0  // 1: V's descriptor with lbo/sbo swapped (diagnostic; probe P2 says which is right)
#endif
constexpr bool PINGPONG = FE_PINGPONG != 0 && NC == 2;

// Two Q buffers where they fit in shared memory (the K/V ring and 2 x Q; otherwise one): the next
// tile's Q then lands while this tile runs, which lets a consumer issue the next tile's first Q.K^T
// together with this tile's last P.V (XOVER: the tensor pipe stays busy across the tile boundary,
// and the epilogue runs under that Q.K^T), and lets it stage its output in the Q buffer it is done with
// (OSTAGE: 16-byte coalesced stores instead of 4-byte ones; the producer reuses that buffer only after
// the stores have read it). OSTAGE is on (+8 % at D=128 on the H200), XOVER off (-6 % there, neutral at
// D=64: the harness's timings, docs/VALIDATION.md); -D FE_XOVER=1 / FE_OSTAGE=0 switch them.
constexpr int SMEM_BYTES_Q2 = 1024 + (2 * BM + 2 * STAGES * BN) * FE_D * 2 + 8 * (4 * STAGES + 5);
constexpr int QBUF = SMEM_BYTES_Q2 <= 232448 ? 2 : 1;
#ifndef FE_XOVER
#define FE_XOVER 0  // measured slower on the H200 (320 -> 301 TFLOP/s at D=128 block, device run 14)
#endif
#ifndef FE_OSTAGE
#define FE_OSTAGE 1
#endif
constexpr bool XOVER = FE_XOVER != 0 && QBUF == 2;
constexpr bool OSTAGE = FE_OSTAGE != 0 && QBUF == 2;

// Registers per thread after setmaxnreg (the CTA's pool is NT x (65536/NT rounded down to 8)):
// 2 consumers: 128 x 32 + 256 x 232 <= 384 x 168; 3 consumers: 128 x 32 + 384 x 160 = 512 x 128.
// (The producer thread needs ~28 registers: 24 spills.)
#ifndef FE_REG_PRODUCER
#define FE_REG_PRODUCER 32
#endif
#ifndef FE_REG_CONSUMER
#define FE_REG_CONSUMER (NC == 2 ? 232 : 160)
#endif
constexpr int REG_PRODUCER = FE_REG_PRODUCER;
constexpr int REG_CONSUMER = FE_REG_CONSUMER;
static_assert(REG_PRODUCER % 8 == 0 && REG_CONSUMER % 8 == 0 && REG_PRODUCER >= 24 && REG_CONSUMER <= 256,
              "setmaxnreg takes multiples of 8 in [24, 256]");
static_assert(128 * REG_PRODUCER + 128 * NC * REG_CONSUMER <= ((65536 / NT) & ~7) * NT,
              "the warpgroups' registers after setmaxnreg must fit the CTA's allocation at launch");

// ---- shared memory (byte offsets from a 1024-aligned base) -------------------------------------------
// Every operand tile is stored as D/64 "panels" of rows x 128 bytes (64 elements), written by TMA with the
// 128-byte swizzle; panel p holds columns 64p..64p+63. A panel starts on a 1024-byte boundary.
constexpr int PANELS = FE_D / 64;
constexpr int Q_PANEL = BM * 128;
constexpr int KV_PANEL = BN * 128;
constexpr int Q_BYTES = PANELS * Q_PANEL;    // BM x D x 2 (one Q buffer)
constexpr int KV_BYTES = PANELS * KV_PANEL;  // BN x D x 2 (one K or one V block)
constexpr int OFF_Q = 0;
constexpr int OFF_K = OFF_Q + QBUF * Q_BYTES;
constexpr int OFF_V = OFF_K + STAGES * KV_BYTES;
constexpr int OFF_BAR = OFF_V + STAGES * KV_BYTES;
constexpr int BAR_FULL_K = 0;             // + stage
constexpr int BAR_FULL_V = STAGES;        // + stage
constexpr int BAR_EMPTY_K = 2 * STAGES;   // + stage
constexpr int BAR_EMPTY_V = 3 * STAGES;   // + stage
constexpr int BAR_Q_FULL = 4 * STAGES;       // + Q buffer (two, whether or not the second is used)
constexpr int BAR_Q_EMPTY = 4 * STAGES + 2;  // + Q buffer
constexpr int OFF_SLOT = OFF_BAR + 8 * (4 * STAGES + 4);  // int[2]: the tile in each Q buffer
// Dynamic shared memory to launch with: 1024 (alignment slack) + (QBUF BM + 2 STAGES BN) D 2 + 8 (4 STAGES + 5).
constexpr int SMEM_BYTES = 1024 + OFF_SLOT + 8;
static_assert(SMEM_BYTES == 1024 + (QBUF * BM + 2 * STAGES * BN) * FE_D * 2 + 8 * (4 * STAGES + 5),
              "shared-memory layout and its formula disagree");
static_assert(SMEM_BYTES <= 232448, "tile needs more than the 227 KiB of shared memory a block may have");

constexpr int NAMED_BAR_PP = 1;   // named barriers 1 and 2: pingpong turns of consumer warpgroups 0 and 1
constexpr int NAMED_BAR_EPI = 3;  // named barriers 3..2+NC: a consumer warpgroup's staged output is complete

// Must match the host side field for field (docs/hopper-prefill.md, "Parameter block").
struct __align__(128) PrefillSm90Params {
  CUtensorMap tm_q;   //   0: Q  [B, N, H, D]
  CUtensorMap tm_k;   // 128: K  [B, N, Hkv, D]
  CUtensorMap tm_v;   // 256: V  [B, N, Hkv, D]
  CUtensorMap tm_ks;  // 384: ks [B, nc, Hkv, D]
  CUtensorMap tm_vs;  // 512: vs [B, nc, Hkv, D]
  u16* o;             // 640: O [B, N, H, D], strides below (elements)
  float* lse;         // 648: LSE [B, H, N] fp32, strides below (elements; token stride 1)
  i64 o_sb, o_st, o_sh;  // 656, 664, 672
  i64 lse_sb, lse_sh;    // 680, 688
  int n;                 // 696: tokens N
  int h;                 // 700: query heads H
  int hkv;               // 704: key/value heads Hkv (H % Hkv == 0)
  int nc;                // 708: summary rows present in ks/vs
  float scale_log2;      // 712: scale * log2(e), > 0
  int batch;             // 716: B
  int* tile_counter;     // 720: null = static schedule; else 2 ints, zero before the first launch
  const int* start;      // 728: EXTEND: L0 per sequence [B] (n is then Tmax, nc the summary slots)
  const int* count;      // 736: EXTEND: T per sequence [B]
  int reserved[6];       // 744..767: zero
};
static_assert(sizeof(PrefillSm90Params) == 768, "PrefillSm90Params is 768 bytes");

// The launch needs this much dynamic shared memory (readable with cuModuleGetGlobal).
extern "C" __constant__ int {{ name }}_smem_bytes = SMEM_BYTES;

// One query tile of one (batch, head): which key blocks it visits. Tiles are numbered so that the
// heaviest (the latest query positions: most summaries) come first; heads vary fastest so that the
// query heads of one GQA group run side by side.
struct FeTile {
  int h, b, m0;
  int hi_blk;    // the diagonal key block (block index in units of BN)
  int n_local;   // local key blocks: hi_blk, hi_blk - 1, ..., hi_blk - n_local + 1
  int n_blocks;  // n_local + summary blocks 0, 1, .. (0: nothing to do, EXTEND rows past T)
  int n;         // the sequence's query rows (prefill N, extend T)
  int pos0;      // position of query row 0 (prefill 0, extend L0)
  int kofs;      // key row = position + kofs (prefill 0, extend W - L0)
};
FE_DEV FeTile fe_tile(int t, const PrefillSm90Params& p) {
  const int nqb = (p.n + BM - 1) / BM;
  const int hb = p.h * p.batch;
  const int q = t / hb;
  const int rem = t - q * hb;
  FeTile r;
  r.h = rem % p.h;
  r.b = rem / p.h;
  r.m0 = (nqb - 1 - q) * BM;
  r.n = p.n;
  r.pos0 = 0;
  r.kofs = 0;
  if (EXTEND) {
    // (clamped: a bad length on the device must not send stores past the [B, Tmax, ...] outputs)
    r.pos0 = max(__ldg(p.start + r.b), 0);
    r.n = min(max(__ldg(p.count + r.b), 0), p.n);
    r.kofs = FE_W - r.pos0;
    if (r.m0 >= r.n) {
      r.hi_blk = r.n_local = r.n_blocks = 0;
      return r;
    }
  }
  const int m_end = min(r.m0 + BM, r.n);
  r.hi_blk = (r.pos0 + m_end - 1 + r.kofs) / BN;
  r.n_local = r.hi_blk - (fe_window_start(r.pos0 + r.m0) + r.kofs) / BN + 1;
  const int ns = min((r.pos0 + m_end - 1) / FE_C, p.nc);  // summaries some row of the tile sees
  r.n_blocks = r.n_local + (ns + BN - 1) / BN;
  return r;
}

// The next tile a CTA takes: from the dynamic schedule's counter, or gridDim.x further.
FE_DEV int fe_next_tile(const PrefillSm90Params& p, int tile) {
  return p.tile_counter ? (int)gridDim.x + atomicAdd(p.tile_counter, 1) : tile + (int)gridDim.x;
}

// ---- producer: one thread ------------------------------------------------------------------------------
// The k-th tile a CTA works on uses Q buffer fe_qbuf(k); its barriers' phase parity is fe_qpar(k).
FE_DEV int fe_qbuf(int k) { return QBUF == 2 ? (k & 1) : 0; }
FE_DEV u32 fe_qpar(int k) { return (u32)(QBUF == 2 ? (k >> 1) & 1 : k & 1); }

FE_DEV void fe_producer(const PrefillSm90Params& p, u32 sbase, int* slot) {
  const int total = ((p.n + BM - 1) / BM) * p.h * p.batch;
  fe_prefetch_tmap(&p.tm_q);
  fe_prefetch_tmap(&p.tm_k);
  fe_prefetch_tmap(&p.tm_v);
  fe_prefetch_tmap(&p.tm_ks);
  fe_prefetch_tmap(&p.tm_vs);
  const u32 bar = sbase + OFF_BAR;
  int s = 0;
  u32 ph = 0;
  int tile = blockIdx.x;
  for (int kq = 0;; ++kq) {
    if (EXTEND) {
      while (tile < total && fe_tile(tile, p).n_blocks == 0) tile = fe_next_tile(p, tile);  // past T
    }
    const int qb = fe_qbuf(kq);
    const u32 qfull = bar + 8 * (BAR_Q_FULL + qb);
    // The consumers are done with this Q buffer's previous tile (its Q, its slot, its staged output).
    fe_mbar_wait(bar + 8 * (BAR_Q_EMPTY + qb), fe_qpar(kq) ^ 1u);
    // The slot is written before q_full's arrival (release) and read after its wait (acquire); the
    // consumers read it before arriving on q_empty, which this thread waited for above. Both sides
    // use atomics, so the hand-off is not a data race even for a checker that does not model
    // mbarrier ordering (racecheck reported it with plain accesses: device run 2).
    if (tile >= total) {
      atomicExch(slot + qb, -1);
      fe_mbar_arrive(qfull);
      break;
    }
    atomicExch(slot + qb, tile);
    const FeTile t = fe_tile(tile, p);
    const int hk = t.h / (p.h / p.hkv);
    fe_mbar_arrive_tx(qfull, Q_BYTES);
#pragma unroll
    for (int pn = 0; pn < PANELS; ++pn)
      fe_tma_load_4d(sbase + OFF_Q + qb * Q_BYTES + pn * Q_PANEL, &p.tm_q, pn * 64, t.h, t.m0, t.b, qfull);
#pragma unroll 1
    for (int j = 0; j < t.n_blocks; ++j) {
      const bool local = j < t.n_local;
      const CUtensorMap* mk = local ? &p.tm_k : &p.tm_ks;
      const CUtensorMap* mv = local ? &p.tm_v : &p.tm_vs;
      const int row = local ? (t.hi_blk - j) * BN : (j - t.n_local) * BN;
      fe_mbar_wait(bar + 8 * (BAR_EMPTY_K + s), ph ^ 1u);
      fe_mbar_arrive_tx(bar + 8 * (BAR_FULL_K + s), KV_BYTES);
#pragma unroll
      for (int pn = 0; pn < PANELS; ++pn)
        fe_tma_load_4d(sbase + OFF_K + s * KV_BYTES + pn * KV_PANEL, mk, pn * 64, hk, row, t.b,
                       bar + 8 * (BAR_FULL_K + s));
      fe_mbar_wait(bar + 8 * (BAR_EMPTY_V + s), ph ^ 1u);
      fe_mbar_arrive_tx(bar + 8 * (BAR_FULL_V + s), KV_BYTES);
#pragma unroll
      for (int pn = 0; pn < PANELS; ++pn)
        fe_tma_load_4d(sbase + OFF_V + s * KV_BYTES + pn * KV_PANEL, mv, pn * 64, hk, row, t.b,
                       bar + 8 * (BAR_FULL_V + s));
      if (++s == STAGES) {
        s = 0;
        ph ^= 1u;
      }
    }
    tile = fe_next_tile(p, tile);
  }
  if (p.tile_counter) {
    // The last CTA to finish fetching leaves both counters at zero for the next launch on the stream.
    __threadfence();
    if (atomicAdd(p.tile_counter + 1, 1) == (int)gridDim.x - 1) {
      atomicExch(p.tile_counter, 0);
      atomicExch(p.tile_counter + 1, 0);
    }
  }
}

// ---- consumers -----------------------------------------------------------------------------------------
// S[64 x BN] = Q[64 x D] . K[BN x D]^T for this warpgroup's 64 query rows. Both operands K-major: 16 columns
// of D per wgmma, 4 per 128-byte panel row (+32 bytes each), then the next panel.
FE_DEV void fe_issue_qk(float (&S)[BN / 2], u64 dq, u32 k_addr) {
  const u64 dk = fe_desc_sw128(k_addr, 16, 1024);
#pragma unroll
  for (int kk = 0; kk < FE_D / 16; ++kk) {
    fe_wgmma_ss(S, fe_desc_add(dq, (kk / 4) * Q_PANEL + (kk % 4) * 32),
                fe_desc_add(dk, (kk / 4) * KV_PANEL + (kk % 4) * 32), kk > 0 ? 1 : 0);
  }
}

// O[64 x D] += P[64 x BN] . V[BN x D]; P from registers (P[4k..4k+3] is the A fragment of keys 16k..16k+15),
// V read MN-major: 16 keys (2048 bytes) per wgmma; D/64 panels KV_PANEL bytes apart (leading byte offset).
FE_DEV void fe_issue_pv(float (&O)[FE_D / 2], const u32 (&P)[BN / 4], u32 v_addr) {
  const u64 dv = FE_V_DESC_SWAP ? fe_desc_sw128(v_addr, 1024, KV_PANEL) : fe_desc_sw128(v_addr, KV_PANEL, 1024);
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    fe_wgmma_rs(O, P[4 * kk], P[4 * kk + 1], P[4 * kk + 2], P[4 * kk + 3], fe_desc_add(dv, kk * 2048));
  }
}

template <int K>
struct FeLog2 {
  static constexpr int value = 1 + FeLog2<K / 2>::value;
};
template <>
struct FeLog2<1> {
  static constexpr int value = 0;
};

// Online softmax over one block, in place. Accumulator layout (wgmma .m64nNk16, fp32 D): this thread
// holds rows r0 = 16 warp + lane/4 (r = 0) and r0 + 8 (r = 1), and for each 8-column group g the columns
// 8g + 2(lane%4) + {0,1}: S[4g + 2r + e]. When MASK, column c of row r is visible iff lo[r] <= c <= hi[r].
// Afterwards S holds exp2(s * scale_log2 - m_new); alpha = exp2(m_old - m_new) rescales O and l.
template <bool MASK>
FE_DEV void fe_softmax(float (&S)[BN / 2], float (&m)[2], float (&l)[2], float (&alpha)[2], const int (&lo)[2],
                       const int (&hi)[2], float scale_log2, int quad) {
  if (MASK) {
#pragma unroll
    for (int g = 0; g < BN / 8; ++g) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = 8 * g + 2 * quad + (e & 1);
        const int r = e >> 1;
        if (c < lo[r] || c > hi[r]) S[4 * g + e] = FE_NEG_INF;
      }
    }
  }
  float red[2][BN / 4];
#pragma unroll
  for (int g = 0; g < BN / 8; ++g) {
#pragma unroll
    for (int e = 0; e < 4; ++e) red[e >> 1][2 * g + (e & 1)] = S[4 * g + e];
  }
#pragma unroll
  for (int lvl = 0; lvl < FeLog2<BN / 4>::value; ++lvl) {
    const int w = (BN / 8) >> lvl;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
      if (i < w) {
        red[0][i] = fmaxf(red[0][i], red[0][i + w]);
        red[1][i] = fmaxf(red[1][i], red[1][i + w]);
      }
    }
  }
  float base[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = red[r][0];
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[r], mx * scale_log2);
    // A row that has seen nothing yet keeps m = -inf; 0 as the reference makes exp2 give 0, not NaN.
    base[r] = (m_new == FE_NEG_INF) ? 0.f : m_new;
    alpha[r] = fe_exp2(m[r] - base[r]);
    m[r] = m_new;
  }
#pragma unroll
  for (int g = 0; g < BN / 8; ++g) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float pv = fe_exp2(fmaf(S[4 * g + e], scale_log2, -base[e >> 1]));
      S[4 * g + e] = pv;
      red[e >> 1][2 * g + (e & 1)] = pv;
    }
  }
#pragma unroll
  for (int lvl = 0; lvl < FeLog2<BN / 4>::value; ++lvl) {
    const int w = (BN / 8) >> lvl;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
      if (i < w) {
        red[0][i] += red[0][i + w];
        red[1][i] += red[1][i + w];
      }
    }
  }
  l[0] = l[0] * alpha[0] + red[0][0];
  l[1] = l[1] * alpha[1] + red[1][0];
}

// P (the A fragment of P.V) from the probabilities: A-fragment register k of a 16-key step holds, like the
// accumulator, two adjacent columns of one row, so P[j] packs S[2j] (low half) and S[2j+1].
FE_DEV void fe_to_p(u32 (&P)[BN / 4], const float (&S)[BN / 2]) {
#pragma unroll
  for (int j = 0; j < BN / 4; ++j) P[j] = fe_pack2(S[2 * j], S[2 * j + 1]);
}

FE_DEV void fe_rescale(float (&O)[FE_D / 2], const float (&alpha)[2]) {
  if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
    for (int g = 0; g < FE_D / 8; ++g) {
      O[4 * g + 0] *= alpha[0];
      O[4 * g + 1] *= alpha[0];
      O[4 * g + 2] *= alpha[1];
      O[4 * g + 3] *= alpha[1];
    }
  }
}

// Block j of tile t, as seen by rows ra, rb of this thread and [r_lo, r_lo + 63] of its warpgroup: whether a
// mask is needed, and each row's visible column range of the block.
// Rows are positions here (t.pos0 added: the same for prefill, where it is 0).
FE_DEV bool fe_block_cols(const FeTile& t, int j, int r_lo, int ra, int rb, int nc, int (&lo)[2], int (&hi)[2]) {
  r_lo += t.pos0;
  ra += t.pos0;
  rb += t.pos0;
  if (j < t.n_local) {
    const int k0 = (t.hi_blk - j) * BN - t.kofs;  // position of the block's first key
    lo[0] = fe_window_start(ra) - k0;
    hi[0] = ra - k0;
    lo[1] = fe_window_start(rb) - k0;
    hi[1] = rb - k0;
    return !(k0 + BN - 1 <= r_lo && k0 >= fe_window_start(r_lo + 63));
  }
  const int c0 = (j - t.n_local) * BN;
  lo[0] = lo[1] = 0;
  hi[0] = min(ra / FE_C, nc) - 1 - c0;
  hi[1] = min(rb / FE_C, nc) - 1 - c0;
  return !(c0 + BN <= min(r_lo / FE_C, nc));
}

FE_DEV void fe_warp_arrive(u32 bar, int lane) {
  __syncwarp();
  if (lane == 0) fe_mbar_arrive(bar);
}

// Rows and masks of one consumer warpgroup's 64 rows of a tile.
struct FeRows {
  int r_lo, ra, rb;
};
FE_DEV FeRows fe_rows(const FeTile& t, int wg, int row_in_wg) {
  FeRows r;
  r.r_lo = t.m0 + 64 * wg;
  r.ra = r.r_lo + row_in_wg;
  r.rb = r.ra + 8;
  return r;
}

// Block j's scores S (already in registers) through the online softmax, then into P.
FE_DEV void fe_softmax_block(const FeTile& t, int j, const FeRows& r, int nc, float (&S)[BN / 2], float (&m)[2],
                             float (&l)[2], float (&alpha)[2], float sl2, int quad) {
  int lo[2], hi[2];
  if (fe_block_cols(t, j, r.r_lo, r.ra, r.rb, nc, lo, hi)) {
    fe_softmax<true>(S, m, l, alpha, lo, hi, sl2, quad);
  } else {
    fe_softmax<false>(S, m, l, alpha, lo, hi, sl2, quad);
  }
}

// The tile's output rows of this warpgroup: O / l in the storage type, and LSE. With OSTAGE (and O's
// addresses 16-byte aligned) the rows are staged in the warpgroup's 64 rows of the Q buffer `stage`
// (swizzled like Q: 16-byte unit u of row r at u ^ (r % 8), conflict-free both ways) and written with
// coalesced 16-byte stores; otherwise each thread stores its 4-byte pairs directly.
FE_DEV void fe_epilogue(const PrefillSm90Params& p, const FeTile& t, const FeRows& r, float (&O)[FE_D / 2],
                        const float (&m)[2], float (&l)[2], u32 stage, int wg, int tid, int quad) {
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    l[k] += __shfl_xor_sync(0xffffffffu, l[k], 1);
    l[k] += __shfl_xor_sync(0xffffffffu, l[k], 2);
  }
  const float inv0 = l[0] > 0.f ? 1.f / l[0] : 0.f;
  const float inv1 = l[1] > 0.f ? 1.f / l[1] : 0.f;
  const int n = t.n;
  u16* ob = p.o + t.b * p.o_sb + t.h * p.o_sh;
  const bool aligned = ((reinterpret_cast<unsigned long long>(p.o) | (unsigned long long)(p.o_sb | p.o_st | p.o_sh) * 2) & 15) == 0;
  if (OSTAGE && aligned) {
    const int row = r.ra - r.r_lo;  // 0..7 + 16 warp (row + 8 has the same swizzle)
#pragma unroll
    for (int g = 0; g < FE_D / 8; ++g) {
      const u32 a = stage + (g / 8) * Q_PANEL + row * 128 + (((g % 8) ^ (row % 8)) << 4) + 4 * quad;
      fe_st_shared_u32(a, fe_pack2(O[4 * g] * inv0, O[4 * g + 1] * inv0));
      fe_st_shared_u32(a + 8 * 128, fe_pack2(O[4 * g + 2] * inv1, O[4 * g + 3] * inv1));
    }
    fe_bar_sync(NAMED_BAR_EPI + wg, 128);  // the warpgroup's rows are staged
    constexpr int UNITS = FE_D / 8;        // 16-byte units per row
#pragma unroll 2
    for (int k = 0; k < 64 * UNITS / 128; ++k) {
      const int i = tid + 128 * k;
      const int rr = i / UNITS, u = i % UNITS;
      const fe_u32x4 v = fe_ld_shared_v4(stage + (u / 8) * Q_PANEL + rr * 128 + (((u % 8) ^ (rr % 8)) << 4));
      if (r.r_lo + rr < n) fe_st16(ob + (i64)(r.r_lo + rr) * p.o_st + 8 * u, v);
    }
  } else {
    if (r.ra < n) {
      u16* orow = ob + (i64)r.ra * p.o_st + 2 * quad;
#pragma unroll
      for (int g = 0; g < FE_D / 8; ++g)
        *reinterpret_cast<u32*>(orow + 8 * g) = fe_pack2(O[4 * g] * inv0, O[4 * g + 1] * inv0);
    }
    if (r.rb < n) {
      u16* orow = ob + (i64)r.rb * p.o_st + 2 * quad;
#pragma unroll
      for (int g = 0; g < FE_D / 8; ++g)
        *reinterpret_cast<u32*>(orow + 8 * g) = fe_pack2(O[4 * g + 2] * inv1, O[4 * g + 3] * inv1);
    }
  }
  if (quad == 0) {
    float* lg = p.lse + t.b * p.lse_sb + t.h * p.lse_sh;
    if (r.ra < n) lg[r.ra] = fe_lse(m[0], l[0]);
    if (r.rb < n) lg[r.rb] = fe_lse(m[1], l[1]);
  }
}

// The tile in Q buffer fe_qbuf(k) once its Q has landed (-1: no more tiles). Broadcast from lane 0:
// the compiler then knows every value derived from it is warp-uniform (wgmma in code it must assume
// divergent gets serialized, ptxas C7520).
FE_DEV int fe_fetch_tile(u32 bar, int* slot, int k, int lane) {
  fe_mbar_wait(bar + 8 * (BAR_Q_FULL + fe_qbuf(k)), fe_qpar(k));
  return __shfl_sync(0xffffffffu, (lane == 0) ? atomicAdd(slot + fe_qbuf(k), 0) : 0, 0);
}

FE_DEV void fe_consumer(const PrefillSm90Params& p, u32 sbase, int* slot, int wg) {
  const int tid = threadIdx.x - 128 * (wg + 1);
  const int lane = tid & 31;
  const int quad = lane & 3;
  const int row_in_wg = 16 * (tid >> 5) + (lane >> 2);
  const u32 bar = sbase + OFF_BAR;
  const float sl2 = p.scale_log2;
  // This warpgroup's 64 rows of Q buffer 0 (1024-aligned: 64 rows x 128 bytes = 8 atoms).
  const u32 q_rows = sbase + OFF_Q + wg * 64 * 128;
  int s = 0;
  u32 ph = 0;
  if (PINGPONG && wg == 1) fe_bar_arrive(NAMED_BAR_PP + 0, 256);  // warpgroup 0 issues first

  float S[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) S[i] = 0.f;  // (overwritten by the first wgmma; no undefined inputs)
  // Block 0 of a tile: its S = Q.K^T is issued ahead, with the previous tile's last P.V (XOVER) or after
  // the previous tile's output, and waited for at the top of the tile.
  int tile = fe_fetch_tile(bar, slot, 0, lane);
  if (tile >= 0) {
    fe_mbar_wait(bar + 8 * (BAR_FULL_K + s), ph);
    if (PINGPONG) fe_bar_sync(NAMED_BAR_PP + wg, 256);
    fe_wgmma_fence();
    fe_issue_qk(S, fe_desc_sw128(q_rows, 16, 1024), sbase + OFF_K + s * KV_BYTES);
    fe_wgmma_commit();
    if (PINGPONG) fe_bar_arrive(NAMED_BAR_PP + 1 - wg, 256);
    fe_wgmma_wait<0>();
    fe_fence_regs(S);
  }

#pragma unroll 1
  for (int kq = 0; tile >= 0; ++kq) {
    const int qb = fe_qbuf(kq);
    const u64 dq = fe_desc_sw128(q_rows + qb * Q_BYTES, 16, 1024);
    const FeTile t = fe_tile(tile, p);
    const FeRows r = fe_rows(t, wg, row_in_wg);

    float O[FE_D / 2];
#pragma unroll
    for (int i = 0; i < FE_D / 2; ++i) O[i] = 0.f;
    u32 P[BN / 4];
    float m[2] = {FE_NEG_INF, FE_NEG_INF};
    float l[2] = {0.f, 0.f};
    float alpha[2];

    fe_warp_arrive(bar + 8 * (BAR_EMPTY_K + s), lane);
    if (!OSTAGE && t.n_blocks == 1) fe_warp_arrive(bar + 8 * (BAR_Q_EMPTY + qb), lane);
    fe_softmax_block(t, 0, r, p.nc, S, m, l, alpha, sl2, quad);
    fe_to_p(P, S);

#pragma unroll 1
    for (int j = 1; j < t.n_blocks; ++j) {
      const int sp = s;
      const u32 pph = ph;
      if (++s == STAGES) {
        s = 0;
        ph ^= 1u;
      }
      fe_mbar_wait(bar + 8 * (BAR_FULL_K + s), ph);
      fe_mbar_wait(bar + 8 * (BAR_FULL_V + sp), pph);  // (long since landed: loaded right after K of j-1)
      if (PINGPONG) fe_bar_sync(NAMED_BAR_PP + wg, 256);
      fe_fence_regs(P);
      fe_fence_regs(O);
      fe_wgmma_fence();
      fe_issue_qk(S, dq, sbase + OFF_K + s * KV_BYTES);
      fe_wgmma_commit();
      fe_issue_pv(O, P, sbase + OFF_V + sp * KV_BYTES);
      fe_wgmma_commit();
      if (PINGPONG) fe_bar_arrive(NAMED_BAR_PP + 1 - wg, 256);
      fe_wgmma_wait<1>();  // S of block j is ready; P.V of block j-1 may still run
      fe_fence_regs(S);
      fe_warp_arrive(bar + 8 * (BAR_EMPTY_K + s), lane);
      if (!OSTAGE && j == t.n_blocks - 1) fe_warp_arrive(bar + 8 * (BAR_Q_EMPTY + qb), lane);
      fe_softmax_block(t, j, r, p.nc, S, m, l, alpha, sl2, quad);
      fe_wgmma_wait<0>();  // P.V of block j-1 is done: V of its stage, P and O are free
      fe_fence_regs(O);
      fe_fence_regs(S);
      fe_warp_arrive(bar + 8 * (BAR_EMPTY_V + sp), lane);
      fe_rescale(O, alpha);
      fe_to_p(P, S);
    }

    // The last block's P.V, and with XOVER the next tile's first Q.K^T with it.
    int next = XOVER ? fe_fetch_tile(bar, slot, kq + 1, lane) : -1;
    const int s_last = s;
    fe_mbar_wait(bar + 8 * (BAR_FULL_V + s_last), ph);
    if (++s == STAGES) {
      s = 0;
      ph ^= 1u;
    }
    if (XOVER && next >= 0) fe_mbar_wait(bar + 8 * (BAR_FULL_K + s), ph);
    if (PINGPONG) fe_bar_sync(NAMED_BAR_PP + wg, 256);
    fe_fence_regs(P);
    fe_fence_regs(O);
    fe_wgmma_fence();
    fe_issue_pv(O, P, sbase + OFF_V + s_last * KV_BYTES);
    fe_wgmma_commit();
    if (XOVER) {
      // Unconditional, so that no branch separates it from the P.V (ptxas would serialize every wgmma):
      // after the last tile it multiplies whatever the buffers hold and the result is dropped.
      fe_issue_qk(S, fe_desc_sw128(q_rows + fe_qbuf(kq + 1) * Q_BYTES, 16, 1024), sbase + OFF_K + s * KV_BYTES);
      fe_wgmma_commit();
    }
    if (PINGPONG) fe_bar_arrive(NAMED_BAR_PP + 1 - wg, 256);
    if (XOVER) {
      fe_wgmma_wait<1>();  // the last P.V is done; the next tile's Q.K^T may still run
    } else {
      fe_wgmma_wait<0>();
    }
    fe_fence_regs(O);
    fe_warp_arrive(bar + 8 * (BAR_EMPTY_V + s_last), lane);

    fe_epilogue(p, t, r, O, m, l, q_rows + qb * Q_BYTES, wg, tid, quad);
    if (OSTAGE) {
      // The staged rows have been read (and written out): the producer may load a later tile's Q here.
      fe_fence_proxy_async();
      fe_warp_arrive(bar + 8 * (BAR_Q_EMPTY + qb), lane);
    }
    if (!XOVER) {
      next = fe_fetch_tile(bar, slot, kq + 1, lane);
      if (next >= 0) fe_mbar_wait(bar + 8 * (BAR_FULL_K + s), ph);
      // (unconditional, as above: after the last tile the result is dropped)
      if (PINGPONG) fe_bar_sync(NAMED_BAR_PP + wg, 256);
      fe_wgmma_fence();
      fe_issue_qk(S, fe_desc_sw128(q_rows + fe_qbuf(kq + 1) * Q_BYTES, 16, 1024), sbase + OFF_K + s * KV_BYTES);
      fe_wgmma_commit();
      if (PINGPONG) fe_bar_arrive(NAMED_BAR_PP + 1 - wg, 256);
    }
    fe_wgmma_wait<0>();  // the next tile's block-0 scores (no wgmma in flight across iterations)
    fe_fence_regs(S);
    tile = next;
  }
  // Warpgroup 1 arrived once more on warpgroup 0's turn barrier than warpgroup 0 synced on it.
  if (PINGPONG && wg == 0) fe_bar_sync(NAMED_BAR_PP + 0, 256);
}

extern "C" __global__ void __launch_bounds__(NT, 1) {{ name }}(const __grid_constant__ PrefillSm90Params p) {
  extern __shared__ __align__(1024) unsigned char fe_smem[];
  const u32 raw = fe_smem_addr(fe_smem);
  const u32 sbase = (raw + 1023u) & ~1023u;
  int* slot = reinterpret_cast<int*>(fe_smem + (sbase - raw) + OFF_SLOT);
  if (threadIdx.x == 0) {
    const u32 bar = sbase + OFF_BAR;
#pragma unroll 1
    for (int s = 0; s < STAGES; ++s) {
      fe_mbar_init(bar + 8 * (BAR_FULL_K + s), 1);
      fe_mbar_init(bar + 8 * (BAR_FULL_V + s), 1);
      fe_mbar_init(bar + 8 * (BAR_EMPTY_K + s), NC * 4);
      fe_mbar_init(bar + 8 * (BAR_EMPTY_V + s), NC * 4);
    }
    for (int b = 0; b < 2; ++b) {
      fe_mbar_init(bar + 8 * (BAR_Q_FULL + b), 1);
      fe_mbar_init(bar + 8 * (BAR_Q_EMPTY + b), NC * 4);
    }
    fe_mbar_init_fence();
  }
  __syncthreads();
  const int wg = __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0);  // warp-uniform, see above
  if (wg == 0) {
    if (FE_SETMAXNREG) fe_setmaxnreg_dec<REG_PRODUCER>();
    if (threadIdx.x == 0) fe_producer(p, sbase, slot);
  } else {
    if (FE_SETMAXNREG) fe_setmaxnreg_inc<REG_CONSUMER>();
    fe_consumer(p, sbase, slot, wg - 1);
  }
}
<% if extend %>

// ---- extend: the gather that runs before {{ name }} --------------------------------------------------
// Fills the workspace the attention's tensor maps read: kx, vx [B, W + TMAX, Hkv, D] (key row j of
// sequence b is position L0 - W + j: the ring's slot (L0 - W + j) mod W for j < W, new token j - W
// after), ksx, vsx [B, MAXNC, Hkv, D] (the summaries; PAGED: through the page table). Rows that hold
// no token (a position below 0, a new row at or past T, a summary not complete by L0 + T - 1) are
// zeros: the attention multiplies masked probabilities (exact zeros) by them, and a zero times junk
// could be NaN. Only rows some tile's key blocks reach are written (up to W + T and (L0 + T) / C,
// rounded up to 128 rows, the largest block). grid (row groups, B), 256 threads; each thread moves
// 16-byte units of one row.
constexpr bool PAGED = {{ paged }};
struct ExtendGatherParams {
  const u16* k;   // new keys [B, TMAX, Hkv, D] (strides below, elements)
  const u16* v;
  const u16* kr;  // ring [B, W, Hkv, D] (PAGED: slot pool [S, W, Hkv, D], row slot[b])
  const u16* vr;
  const u16* ks;  // summaries [B, MAXNC, Hkv, D] (PAGED: page pool [P, PAGE, Hkv, D])
  const u16* vs;
  const int* start;  // L0 [B]
  const int* count;  // T [B]
  const int* slot;   // PAGED: [B]
  const int* pt;     // PAGED: [B, MAXP]
  u16* kx;           // workspace, contiguous
  u16* vx;
  u16* ksx;
  u16* vsx;
  i64 k_sb, k_st, k_sh, v_sb, v_st, v_sh;
  i64 kr_sb, kr_ss, kr_sh, vr_sb, vr_ss, vr_sh;
  i64 ks_sb, ks_st, ks_sh, vs_sb, vs_st, vs_sh;
  i64 pt_sb;
  int batch, tmax, hkv, maxnc;
  int page;  // PAGED: summary rows per page
  int rows_per_block;
};
static_assert(sizeof(ExtendGatherParams) == 288, "ExtendGatherParams must match src/ops/extend.rs");

constexpr int GATHER_THREADS = 256;
extern "C" __global__ void __launch_bounds__(GATHER_THREADS) {{ name }}_gather(const ExtendGatherParams p) {
  const int b = blockIdx.y;
  const int l0 = max(__ldg(p.start + b), 0);
  const int t_new = min(max(__ldg(p.count + b), 0), p.tmax);
  const int ncb = min((l0 + t_new) / FE_C, p.maxnc);  // summaries complete by L0 + T - 1
  const int kv_rows = FE_W + p.tmax;
  const int kv_reach = min((FE_W + t_new + 127) / 128 * 128, kv_rows);
  const int s_reach = min((ncb + 127) / 128 * 128, p.maxnc);
  constexpr int UNITS = FE_D / 8;  // 16-byte units per head row
  const int units_per_row = p.hkv * UNITS;
  const i64 rb = PAGED ? (i64)__ldg(p.slot + b) : (i64)b;
  const int j0 = blockIdx.x * p.rows_per_block;
  const int j1 = min(j0 + p.rows_per_block, kv_rows + p.maxnc);
  const fe_u32x4 zero = {0u, 0u, 0u, 0u};
  for (int i = threadIdx.x; i < (j1 - j0) * units_per_row * 2; i += GATHER_THREADS) {
    const int kv = i / ((j1 - j0) * units_per_row);  // 0: K, 1: V
    const int rem = i - kv * (j1 - j0) * units_per_row;
    const int j = j0 + rem / units_per_row;
    const int hu = rem % units_per_row;
    const int hk = hu / UNITS;
    const int u = hu % UNITS;
    const u16* src = nullptr;
    u16* dst;
    if (j < kv_rows) {
      if (j >= kv_reach) continue;
      dst = (kv ? p.vx : p.kx) + (((i64)b * kv_rows + j) * p.hkv + hk) * FE_D + 8 * u;
      if (j < FE_W) {
        const int pos = l0 - FE_W + j;
        if (pos >= 0) {
          src = kv ? p.vr + rb * p.vr_sb + (i64)(pos % FE_W) * p.vr_ss + hk * p.vr_sh
                   : p.kr + rb * p.kr_sb + (i64)(pos % FE_W) * p.kr_ss + hk * p.kr_sh;
        }
      } else if (j - FE_W < t_new) {
        const i64 t = j - FE_W;
        src = kv ? p.v + b * p.v_sb + t * p.v_st + hk * p.v_sh : p.k + b * p.k_sb + t * p.k_st + hk * p.k_sh;
      }
    } else {
      const int c = j - kv_rows;
      if (c >= s_reach) continue;
      dst = (kv ? p.vsx : p.ksx) + (((i64)b * p.maxnc + c) * p.hkv + hk) * FE_D + 8 * u;
      if (c < ncb) {
        i64 base_row, row;
        if (PAGED) {
          base_row = __ldg(p.pt + b * p.pt_sb + c / p.page);
          row = c % p.page;
        } else {
          base_row = b;
          row = c;
        }
        src = kv ? p.vs + base_row * p.vs_sb + row * p.vs_st + hk * p.vs_sh
                 : p.ks + base_row * p.ks_sb + row * p.ks_st + hk * p.ks_sh;
      }
    }
    fe_st16(dst, src ? fe_ld16(src + 8 * u) : zero);
  }
}
<% endif %>
