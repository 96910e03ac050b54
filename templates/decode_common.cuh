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

// A warp's finished row state (16 query rows: FeRowState) as rows of `wo` (ROWS x D), with the
// rows' maxima in `wm` and sums in `wl`.
FE_DEV void fe_state_to_scratch(const FeRowState& st, float* wo, float* wm, float* wl, int lane) {
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

// ---- The swapped decode tile (ROWS = 8, tile knob block_m = 8) -------------------------------------
// A decode query tile holds only the G query heads of one kv head (G = 4 in common models), so a
// 16-row MMA tile wastes 12 of its 16 rows: a quarter of its products, accumulators and rescales
// do work. Swapped, the keys are the MMA's M dimension and the heads its N (8 wide):
//   S^T (16 keys x 8 heads) = K (16 x D, A operand, ldmatrix) . Q^T (B operand, held in registers)
//   O^T (D x 8 heads)      += V^T (D x 16 keys, A operand, ldmatrix.trans) . P^T (16 keys x 8 heads)
// P^T's B fragments come from the S^T accumulators by one movmatrix (an 8x8 transpose within the
// warp) per 8 keys. Half the products and half the accumulator registers of the 16-row tile; the
// softmax reduces over keys, i.e. across the eight lane groups that share a head (lanes l, l ^ 4,
// l ^ 8, l ^ 16 ...).
// Fragment layout: lane l holds keys (or dims) l/4 and l/4 + 8 of every 16-row tile, for heads
// 2 (l%4) and 2 (l%4) + 1.
struct FeColState {
  float o[FE_D / 16][4];  // O^T, 16-dim tile mt: dims 16 mt + l/4 (e = 0, 1) and + 8 (e = 2, 3), head 2 (l%4) + e%2
  float m[2];             // running max of head 2 (l%4) + e, log2 domain
  float l[2];             // this lane's partial sum of exp2(logit - m) for that head
};

FE_DEV void fe_state_init(FeColState& st) {
#pragma unroll
  for (int i = 0; i < FE_D / 16; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) st.o[i][e] = 0.f;
  }
  st.m[0] = st.m[1] = FE_NEG_INF;
  st.l[0] = st.l[1] = 0.f;
}

// The 8x8 transpose of a b16 matrix held one pair per lane (movmatrix, sm_75+).
FE_DEV u32 fe_movmatrix_t(u32 x) {
  u32 y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

// Q^T as the B operands of S^T = K Q^T: qb[kk] for the dims [16 kk, 16 kk + 16), from the 8 padded
// head rows at q_addr (one ldmatrix.x4 per two k-steps).
FE_DEV void fe_kq_load_q(u32 (&qb)[FE_KT][2], u32 q_addr, int lane) {
  static_assert(FE_KT % 2 == 0, "the swapped decode tile takes D a multiple of 32");
  const u32 a = q_addr + (u32)(((lane & 7) * FE_DP + (lane >> 3) * 8) * 2);
#pragma unroll
  for (int k2 = 0; k2 < FE_KT / 2; ++k2) {
    u32 r[4];
    fe_ldsm_x4(r, a + (u32)(k2 * 64));
    qb[2 * k2][0] = r[0];
    qb[2 * k2][1] = r[1];
    qb[2 * k2 + 1][0] = r[2];
    qb[2 * k2 + 1][1] = r[3];
  }
}

// One tile of BN keys (padded rows at k_addr, v_addr) for the warp's 8 heads. Only the 16-key
// sub-tiles below `nsub` are computed; when MASKED, keys from `valid` on (of the tile) are
// invisible (their V rows must be finite: the loads zero-fill them). scale_log2 > 0.
// KVSW: K and V tiles in padded rows (0) or in 128-byte-swizzled panels (1, fe_sw_addr).
template <int BN, bool MASKED, int KVSW = 0>
FE_DEV void fe_kq_attend(FeColState& st, const u32 (&qb)[FE_KT][2], u32 k_addr, u32 v_addr, float scale_log2,
                         int lane, int nsub, int valid) {
  constexpr int NS = BN / 16;
  // S^T of each 16-key sub-tile, as two accumulators over alternate k-steps (two independent
  // chains of products instead of one of FE_KT)
  float s[NS][4], s2[NS][4];
#pragma unroll
  for (int j = 0; j < NS; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[j][e] = s2[j][e] = 0.f;
  }
  const u32 ka = k_addr + fe_lane_off_a(lane);
#pragma unroll
  for (int kk = 0; kk < FE_KT; kk += 2) {
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      if (MASKED && j >= nsub) continue;
      u32 a[4], a2[4];
      if (KVSW) {
        // fe_lane_off_a's rows and 16-byte columns, through the swizzle
        const int row = j * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
        fe_ldsm_x4(a, fe_sw_addr<BN>(k_addr, row, kk * 2 + (lane >> 4)));
        fe_ldsm_x4(a2, fe_sw_addr<BN>(k_addr, row, kk * 2 + 2 + (lane >> 4)));
      } else {
        fe_ldsm_x4(a, ka + (u32)(j * 16 * FE_DP * 2 + kk * 32));
        fe_ldsm_x4(a2, ka + (u32)(j * 16 * FE_DP * 2 + kk * 32 + 32));
      }
      fe_mma(s[j], a, qb[kk][0], qb[kk][1]);
      fe_mma(s2[j], a2, qb[kk + 1][0], qb[kk + 1][1]);
    }
  }
  float mx[2] = {FE_NEG_INF, FE_NEG_INF};
#pragma unroll
  for (int j = 0; j < NS; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j][e] += s2[j][e];
      if (MASKED && j * 16 + (lane >> 2) + 8 * (e >> 1) >= valid) s[j][e] = FE_NEG_INF;
      mx[e & 1] = fmaxf(mx[e & 1], s[j][e]);
    }
  }
  float base[2], alpha[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 4));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 8));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 16));
    alpha[i] = fe_softmax_step(st.m[i], st.l[i], mx[i], scale_log2, base[i]);
  }
  // once the running maxima settle, no head's max moves: skip rescaling the accumulators
  if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
    for (int mt = 0; mt < FE_D / 16; ++mt) {
      st.o[mt][0] *= alpha[0];
      st.o[mt][1] *= alpha[1];
      st.o[mt][2] *= alpha[0];
      st.o[mt][3] *= alpha[1];
    }
  }
  const u32 vb = v_addr + fe_lane_off_b(lane);
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    if (MASKED && j >= nsub) continue;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j][e] = fe_exp2(fmaf(s[j][e], scale_log2, -base[e & 1]));
      st.l[e & 1] += s[j][e];
    }
    // P^T's B fragments: keys 0-7 and 8-15 of the sub-tile, transposed to (head, key pairs)
    const u32 b0 = fe_movmatrix_t(fe_pack2(s[j][0], s[j][1]));
    const u32 b1 = fe_movmatrix_t(fe_pack2(s[j][2], s[j][3]));
#pragma unroll
    for (int mt = 0; mt < FE_D / 16; ++mt) {
      u32 a[4];
      if (KVSW) {
        // fe_lane_off_b's rows and 16-byte columns, through the swizzle
        fe_ldsm_x4_t(a, fe_sw_addr<BN>(v_addr, j * 16 + (lane >> 4) * 8 + (lane & 7), mt * 2 + ((lane >> 3) & 1)));
      } else {
        fe_ldsm_x4_t(a, vb + (u32)(j * 16 * FE_DP * 2 + mt * 32));
      }
      fe_mma(st.o[mt], a, b0, b1);
    }
  }
}

// Completes the heads' sums across the eight lane groups that share a head.
FE_DEV void fe_state_finish(FeColState& st) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    st.l[i] += __shfl_xor_sync(0xffffffffu, st.l[i], 4);
    st.l[i] += __shfl_xor_sync(0xffffffffu, st.l[i], 8);
    st.l[i] += __shfl_xor_sync(0xffffffffu, st.l[i], 16);
  }
}

FE_DEV void fe_state_to_scratch(const FeColState& st, float* wo, float* wm, float* wl, int lane) {
  const int g = lane >> 2;
  const int q = (lane & 3) * 2;
#pragma unroll
  for (int mt = 0; mt < FE_D / 16; ++mt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) wo[(q + (e & 1)) * FE_D + mt * 16 + g + 8 * (e >> 1)] = st.o[mt][e];
  }
  if (g == 0) {
    wm[q] = st.m[0];
    wm[q + 1] = st.m[1];
    wl[q] = st.l[0];
    wl[q + 1] = st.l[1];
  }
}

// atomicInc at device scope with acquire-release semantics (inline PTX: the CUDA headers' scoped
// atomics are not available to NVRTC without them); returns the old value.
FE_DEV unsigned fe_atomic_inc_acq_rel(unsigned* c, unsigned wrap) {
  unsigned old;
  asm volatile("atom.acq_rel.gpu.global.inc.u32 %0, [%1], %2;" : "=r"(old) : "l"(c), "r"(wrap) : "memory");
  return old;
}

// The last block of a (sequence, head tile) to finish merges every split's partial rows (written
// by all blocks to ws_o / ws_ml) into o and lse: a warp per row, each lane D/32 columns. The merge
// is the decode's tail (the device waits on it), so it is written for few dependent round trips
// to L2: lane s loads split s's (max, sum), and the partial rows of the first FE_MU splits are
// requested in the same breath, before the maximum is known (their weights are applied after), so
// up to FE_MU splits cost one round trip; lane s hands its weight to the other lanes by shuffle.
// (Run 72, H200: 3.5 % faster at B=1 with 16 splits than loading 4 splits per round trip; the
// decode's fixed cost per launch, runs 71 and 73, has the merge as one part of several.) Reads go
// through L2 (ld.cg): the partials were written by other blocks.
static_assert(FE_D % 32 == 0, "the merge gives every lane D / 32 columns");
constexpr int FE_MCPL = FE_D / 32;  // columns per lane: lane l has columns [l MCPL, l MCPL + MCPL)
// Splits whose partial rows are loaded at once (16 x MCPL registers; a lane's columns are one or
// two vector loads per split, so few addresses are live: scalar loads of 16 splits at D = 128
// took the kernel from 128 registers to 212).
constexpr int FE_MU = FE_MCPL <= 4 ? 16 : 8;
static_assert(32 % FE_MU == 0, "a batch of splits must not straddle two groups of 32 lanes");
// One lane's columns of one partial row, through L2 (volatile: not above the merge's acquire).
FE_DEV void fe_ldcg_cols(float (&x)[FE_MCPL], const float* src) {
  if constexpr (FE_MCPL % 4 == 0) {
#pragma unroll
    for (int c = 0; c < FE_MCPL; c += 4) {
      asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];"
                   : "=f"(x[c]), "=f"(x[c + 1]), "=f"(x[c + 2]), "=f"(x[c + 3])
                   : "l"(src + c));
    }
  } else if constexpr (FE_MCPL == 2) {
    asm volatile("ld.global.cg.v2.f32 {%0, %1}, [%2];" : "=f"(x[0]), "=f"(x[1]) : "l"(src));
  } else {
#pragma unroll
    for (int c = 0; c < FE_MCPL; ++c) asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(x[c]) : "l"(src + c));
  }
}
// Requests the partial rows of splits [s0, s0 + n) (n <= FE_MU; the rest zero) of `row`.
FE_DEV void fe_merge_load(float (&x)[FE_MU][FE_MCPL], const DecodeParams& p, int s0, int n, i64 row,
                          i64 sstride, int lane) {
  const float* src = p.ws_o + (s0 * sstride + row) * FE_D + lane * FE_MCPL;
#pragma unroll
  for (int u = 0; u < FE_MU; ++u) {
    if (u < n) {
      fe_ldcg_cols(x[u], src + u * sstride * FE_D);
    } else {
#pragma unroll
      for (int c = 0; c < FE_MCPL; ++c) x[u][c] = 0.f;
    }
  }
}
template <int WARPS>
FE_DEV void fe_merge_splits(const DecodeParams& p, int b, int h0, int nrows, int warp, int lane) {
  const i64 sstride = (i64)p.b * p.h;  // rows between two splits' partials
  for (int r = warp; r < nrows; r += WARPS) {
    const int h = h0 + r;
    const i64 row = (i64)b * p.h + h;
    // Lane s's split (the first 32): its (max, sum) stay in registers for the weights below.
    float m0 = FE_NEG_INF, l0 = 0.f;
    if (lane < p.splits) {
      m0 = __ldcg(p.ws_ml + (lane * sstride + row) * 2);
      l0 = __ldcg(p.ws_ml + (lane * sstride + row) * 2 + 1);
    }
    float x[FE_MU][FE_MCPL];
    fe_merge_load(x, p, 0, min(FE_MU, p.splits), row, sstride, lane);
    float mx = m0;
    for (int s = lane + 32; s < p.splits; s += 32) mx = fmaxf(mx, __ldcg(p.ws_ml + (s * sstride + row) * 2));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float acc[FE_MCPL];
#pragma unroll
    for (int c = 0; c < FE_MCPL; ++c) acc[c] = 0.f;
    float lsum = 0.f;
    if (mx != FE_NEG_INF) {  // (a sequence with len <= 0: every split empty, o = 0, lse = -inf)
#pragma unroll 1
      for (int s0 = 0; s0 < p.splits; s0 += 32) {
        // this lane's split s0 + lane: its weight (0 past the last split) and weighted sum
        float w = 0.f;
        if (s0 + lane < p.splits) {
          float m = m0, l = l0;
          if (s0 > 0) {
            const i64 rs = (s0 + lane) * sstride + row;
            m = __ldcg(p.ws_ml + rs * 2);
            l = __ldcg(p.ws_ml + rs * 2 + 1);
          }
          w = fe_exp2(m - mx);
          lsum += l * w;
        }
        const int n = min(32, p.splits - s0);
#pragma unroll 1
        for (int j0 = 0; j0 < n; j0 += FE_MU) {
          // (the first batch was requested above; later ones one at a time)
          if (s0 + j0 > 0) fe_merge_load(x, p, s0 + j0, min(FE_MU, n - j0), row, sstride, lane);
#pragma unroll
          for (int u = 0; u < FE_MU; ++u) {
            const float wu = __shfl_sync(0xffffffffu, w, (j0 + u) & 31);
#pragma unroll
            for (int c = 0; c < FE_MCPL; ++c) acc[c] += x[u][c] * wu;
          }
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) lsum += __shfl_xor_sync(0xffffffffu, lsum, o);
    }
    const float inv = lsum > 0.f ? 1.f / lsum : 0.f;
#pragma unroll
    for (int c = 0; c < FE_MCPL; ++c) p.o[b * p.o_sb + h * p.o_sh + lane * FE_MCPL + c] = fe_from_f32(acc[c] * inv);
    if (lane == 0) p.lse[b * p.lse_sb + h * p.lse_sh] = fe_lse(mx, lsum);
  }
}

// The end of a decode block, after its main loop: the warps' row states (warps 0 .. NSTATE - 1 hold
// one) merged through shared memory `scratch` (free by then), then o and lse written (one split)
// or this split's partial rows; split with counters, the block that finishes last for its
// (sequence, head tile) merges the splits and leaves the counter at zero. Every thread of the
// block (NTHREADS) calls it; `last` is a shared int, which may alias `scratch`.
template <int NSTATE, int NTHREADS, class State>
FE_DEV void fe_decode_finish(const DecodeParams& p, const State& st, float* scratch, int* last, int b, int h0,
                             int nrows, int split, int warp, int lane, int tid) {
  __syncthreads();
  if (warp < NSTATE) {
    float* wo = scratch + warp * (ROWS * FE_D + 2 * ROWS);
    fe_state_to_scratch(st, wo, wo + ROWS * FE_D, wo + ROWS * FE_D + ROWS, lane);
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
    // The block counts itself finished with one acquire-release atomic after a block barrier: the
    // barrier orders every thread's partials before thread 0's release at device scope, and the
    // acquire plus the barrier after it order the other blocks' partials before the merge's
    // reads (no per-thread fences: each waited for its own stores, on the tail's critical path).
    // The block that counts last merges and leaves the counter at zero for the next launch.
    __syncthreads();
    if (tid == 0) {
      // inc wraps at splits - 1: the last arrival leaves the counter at zero in the same step
      unsigned* c = reinterpret_cast<unsigned*>(p.counters + (i64)b * gridDim.y + blockIdx.y);
      *last = fe_atomic_inc_acq_rel(c, (unsigned)p.splits - 1u) == (unsigned)p.splits - 1u;
    }
    __syncthreads();
    if (*last) fe_merge_splits<NTHREADS / 32>(p, b, h0, nrows, warp, lane);
  }
}
