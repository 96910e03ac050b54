// flasheva prefill backward: what the mma.sync (prefill_bwd.cu) and the Hopper wgmma
// (prefill_bwd_sm90a.cu) versions share: the parameter block, the Delta kernel `{{ name }}`, the
// segment sum `{{ name }}_dsum`, and the 16-byte stores of a warp's 16 x D fp32 accumulator. The
// including template defines BN (held rows a CTA), NW, THREADS and SUM_ROWS first, and includes
// common.cuh and attention.cuh.
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
  float* dqacc;  // fp32 dQ / scale, [B, H, cdiv(N, 64), 64 x D] tiles, added to by the atomic dK/dV kernel; else null
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
static_assert(sizeof(PrefillBwdParams) == 472, "PrefillBwdParams must match src/ops/prefill_bwd.rs");

// ---- Delta ---------------------------------------------------------------------------------------
// grid (cdiv(N, 64), H, B): a warp per row at a time, 16-byte chunks across the lanes. With an
// atomic dQ accumulator, the tile of the same 64 rows is zeroed first (the dK/dV kernel adds to it).
extern "C" __global__ void __launch_bounds__(THREADS) {{ name }}(const PrefillBwdParams p) {
  const int h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const u16* og = p.o + b * p.o_sb + h * p.o_sh;
  const u16* dg = p.dout + b * p.do_sb + h * p.do_sh;
  float* out = p.delta + ((i64)b * p.h + h) * p.n;
  if (p.dqacc != nullptr) {
    // the accumulator's 64-row tile (prefill_bwd_sm90a.cu: [B, H, cdiv(N, 64), 64 x D], rows past
    // N included; fe_dq_panel there addresses its panels)
    float* acc = p.dqacc + (((i64)b * p.h + h) * ((p.n + 63) / 64) + blockIdx.x) * (64 * FE_D);
    for (int x = threadIdx.x; x < 64 * FE_D / 4; x += THREADS) fe_st16(acc + 4 * x, fe_u32x4{0u, 0u, 0u, 0u});
  }
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

// ---- the dK/dV kernels' work item ----------------------------------------------------------------
// blockIdx.x of a dK/dV kernel (both engines): the summary segments first (they are the long ones),
// `splits` per summary block of BN rows, then the raw key blocks of BN keys; each names its keys
// (rows [j0, lim) of K/V or of the summaries) and the queries that see them, walked in BQ-row steps
// from `start` (n_q steps per query head of the group). BN and BQ are the including template's.
struct FeBwdBlock {
  bool summary;
  int b, hk, j0, lim, seg;
  int nsb;        // summary blocks: cdiv(nc, BN)
  const u16* kg;  // the block's K (or ks) rows of this kv head, row stride kst
  const u16* vg;
  i64 kst, vst;
  int start;  // the first query that sees a key of the block, rounded down to a step
  int n_q;    // query steps per head (0 when no query sees the block)
};

FE_DEV FeBwdBlock fe_bwd_block(const PrefillBwdParams& p) {
  FeBwdBlock k;
  const int N = p.n;
  int i_lo, i_hi;  // the first and the last query that sees a key of the block
  const int nsb = (p.nc + BN - 1) / BN;
  const int n_sum = p.b * p.hkv * nsb * p.splits;
  k.nsb = nsb;
  k.summary = (int)blockIdx.x < n_sum;
  k.seg = 0;
  if (k.summary) {
    int t = blockIdx.x;
    k.seg = t % p.splits;
    t /= p.splits;
    k.j0 = (t % nsb) * BN;
    t /= nsb;
    k.hk = t % p.hkv;
    k.b = t / p.hkv;
    k.lim = p.nc;
    // summary c is seen by every query i >= (c + 1) C; this segment's share of them
    i_lo = max((k.j0 + 1) * FE_C, k.seg * p.seg);
    i_hi = min((k.seg + 1) * p.seg, N) - 1;
    k.kg = p.ks + k.b * p.ks_sb + k.hk * p.ks_sh;
    k.vg = p.vs + k.b * p.vs_sb + k.hk * p.vs_sh;
    k.kst = p.ks_st;
    k.vst = p.vs_st;
  } else {
    const int raw_blocks = (N + BN - 1) / BN;
    int t = blockIdx.x - n_sum;
    k.j0 = (t % raw_blocks) * BN;
    t /= raw_blocks;
    k.hk = t % p.hkv;
    k.b = t / p.hkv;
    k.lim = N;
    // queries that see a key of the block: from its first key to its last key's last viewer
    i_lo = k.j0;
    i_hi = FE_SLIDING ? min(k.j0 + BN - 1 + FE_W - 1, N - 1) : min(((k.j0 + BN - 1) / FE_W + 1) * FE_W - 1, N - 1);
    k.kg = p.k + k.b * p.k_sb + k.hk * p.k_sh;
    k.vg = p.v + k.b * p.v_sb + k.hk * p.v_sh;
    k.kst = p.k_st;
    k.vst = p.v_st;
  }
  k.start = (i_lo / BQ) * BQ;
  k.n_q = i_hi >= i_lo ? (i_hi - k.start) / BQ + 1 : 0;
  return k;
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

// A warp's 16 summary rows' dK (times the scale) and dV, fp32, into its segment's partial sums
// (PART [2, B, HKV, splits, NSB * BN, D]; `my_j0` the warp's first summary row).
FE_DEV void fe_bwd_store_part(const float (&dk)[FE_DT][4], const float (&dv)[FE_DT][4], const PrefillBwdParams& p,
                              int b, int hk, int seg, int nsb, int my_j0, int lane) {
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

