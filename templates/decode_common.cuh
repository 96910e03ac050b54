// flasheva decode: what the decode kernels share (templates/decode.cu, templates/decode_sm90a.cu):
// the parameter block and the merge of the splits' partial rows. (Included after common.cuh.)
// Must match `DecodeParams` in src/ops/decode.rs field for field.
struct DecodeParams {
  const u16* q;
  const u16* kr;
  const u16* vr;
  const u16* ks;
  const u16* vs;
  const int* len;
  u16* o;
  float* lse;
  float* ws_o;   // [splits, B, H, D] unnormalized partial outputs (splits > 1)
  float* ws_ml;  // [splits, B, H, 2] partial (max, sum), log2 domain
  i64 q_sb, q_sh;
  i64 kr_sb, kr_ss, kr_sh;
  i64 vr_sb, vr_ss, vr_sh;
  i64 ks_sb, ks_st, ks_sh;
  i64 vs_sb, vs_st, vs_sh;
  i64 o_sb, o_sh;
  i64 lse_sb, lse_sh;
  int b;       // batch
  int h;       // query heads
  int hkv;     // key/value heads
  int max_nc;  // summary slots in ks/vs
  int splits;
  float scale_log2;  // scale * log2(e), > 0
  int page;          // PAGED: summary rows per page (> 0)
  const int* slot;   // PAGED: [B] each sequence's row of the ring pools (kr_sb, vr_sb: the pools' row strides)
  const int* pt;     // PAGED: [B, MAXP] each sequence's pages (ks_sb, vs_sb: the page pools' page strides)
  i64 pt_sb;         // PAGED: the page table's row stride
  int* counters;     // split and merged here: [B, gridDim.y] finished splits, zero before and after
                     // the launch; null: {{ name }}_combine merges the splits
};
static_assert(sizeof(DecodeParams) == 288, "DecodeParams must match src/ops/decode.rs");

// The last block of a (sequence, head tile) to finish merges every split's partial rows (written
// by all blocks to ws_o / ws_ml) into o and lse: a warp per row, each lane D/32 columns, one pass
// over the splits with their loads independent of each other. Reads go through L2 (ld.cg): the
// partials were written by other blocks.
template <int WARPS>
FE_DEV void fe_merge_splits(const DecodeParams& p, int b, int h0, int nrows, int warp, int lane) {
  constexpr int CPL = (FE_D + 31) / 32;  // columns per lane
  const i64 sstride = (i64)p.b * p.h;    // rows between two splits' partials
  for (int r = warp; r < nrows; r += WARPS) {
    const int h = h0 + r;
    const i64 row = (i64)b * p.h + h;
    float mx = FE_NEG_INF;
    for (int s = lane; s < p.splits; s += 32) mx = fmaxf(mx, __ldcg(p.ws_ml + (s * sstride + row) * 2));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float acc[CPL];
#pragma unroll
    for (int c = 0; c < CPL; ++c) acc[c] = 0.f;
    float lsum = 0.f;
    if (mx != FE_NEG_INF) {  // (a sequence with len <= 0: every split empty, o = 0, lse = -inf)
#pragma unroll 4
      for (int s = 0; s < p.splits; ++s) {
        const i64 rs = s * sstride + row;
        const float w = fe_exp2(__ldcg(p.ws_ml + rs * 2) - mx);
        lsum += __ldcg(p.ws_ml + rs * 2 + 1) * w;
#pragma unroll
        for (int c = 0; c < CPL; ++c) {
          const int d = lane + 32 * c;
          if (d < FE_D) acc[c] += __ldcg(p.ws_o + rs * FE_D + d) * w;
        }
      }
    }
    const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
#pragma unroll
    for (int c = 0; c < CPL; ++c) {
      const int d = lane + 32 * c;
      if (d < FE_D) p.o[b * p.o_sb + h * p.o_sh + d] = fe_from_f32(acc[c] * inv);
    }
    if (lane == 0) p.lse[b * p.lse_sb + h * p.lse_sh] = fe_lse(mx, lsum);
  }
}

// The end of a decode block, after its main loop: the warps' row states (warps 0 .. NSTATE - 1 hold
// one) merged through shared memory `scratch` (free by then), then o and lse written (one split)
// or this split's partial rows; split with counters, the block that finishes last for its
// (sequence, head tile) merges the splits and leaves the counter at zero. Every thread of the
// block (NTHREADS) calls it; `last` is a shared int, which may alias `scratch`.
template <int NSTATE, int NTHREADS>
FE_DEV void fe_decode_finish(const DecodeParams& p, const FeRowState& st, float* scratch, int* last, int b, int h0,
                             int nrows, int split, int warp, int lane, int tid) {
  __syncthreads();
  if (warp < NSTATE) {
    float* wo = scratch + warp * (ROWS * FE_D + 2 * ROWS);
    float* wm = wo + ROWS * FE_D;
    float* wl = wm + ROWS;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = (lane >> 2) + r * 8;
#pragma unroll
      for (int dt = 0; dt < FE_DT; ++dt) {
        wo[row * FE_D + dt * 8 + (lane & 3) * 2] = st.o[dt][2 * r];
        wo[row * FE_D + dt * 8 + (lane & 3) * 2 + 1] = st.o[dt][2 * r + 1];
      }
      if ((lane & 3) == 0) {
        wm[row] = st.m[r];
        wl[row] = st.l[r];
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < nrows * FE_D; idx += NTHREADS) {
    const int r = idx / FE_D;
    const int d = idx % FE_D;
    float mmax = FE_NEG_INF;
#pragma unroll
    for (int w = 0; w < NSTATE; ++w) mmax = fmaxf(mmax, scratch[w * (ROWS * FE_D + 2 * ROWS) + ROWS * FE_D + r]);
    float lsum = 0.f, acc = 0.f;
    if (mmax != FE_NEG_INF) {
#pragma unroll
      for (int w = 0; w < NSTATE; ++w) {
        const float* wo = scratch + w * (ROWS * FE_D + 2 * ROWS);
        const float f = fe_exp2(wo[ROWS * FE_D + r] - mmax);
        lsum += wo[ROWS * FE_D + ROWS + r] * f;
        acc += wo[r * FE_D + d] * f;
      }
    }
    const int h = h0 + r;
    if (p.splits == 1) {
      p.o[b * p.o_sb + h * p.o_sh + d] = fe_from_f32(lsum > 0.f ? acc / lsum : 0.f);
      if (d == 0) p.lse[b * p.lse_sb + h * p.lse_sh] = fe_lse(mmax, lsum);
    } else {
      const i64 row = ((i64)split * p.b + b) * p.h + h;
      p.ws_o[row * FE_D + d] = acc;
      if (d == 0) {
        p.ws_ml[row * 2] = mmax;
        p.ws_ml[row * 2 + 1] = lsum;
      }
    }
  }
  if (p.splits > 1 && p.counters != nullptr) {
    // This block's partials are visible device-wide before it counts itself finished; the block
    // that counts last merges and leaves the counter at zero for the next launch on the stream.
    __threadfence();
    __syncthreads();
    if (tid == 0) {
      // atomicInc wraps at splits - 1: the last arrival leaves the counter at zero in the same step
      unsigned* c = reinterpret_cast<unsigned*>(p.counters + (i64)b * gridDim.y + blockIdx.y);
      *last = atomicInc(c, (unsigned)p.splits - 1u) == (unsigned)p.splits - 1u;
    }
    __syncthreads();
    if (*last) {
      __threadfence();
      fe_merge_splits<NTHREADS / 32>(p, b, h0, nrows, warp, lane);
    }
  }
}
