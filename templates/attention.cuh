// flasheva: one warp's online-softmax attention over one K/V tile in shared memory.
//
// A warp owns 16 query rows. Fragment layout (mma.m16n8k16): lane l holds rows l/4 and l/4+8 of
// every 16x8 accumulator tile, columns 2*(l%4) and 2*(l%4)+1. The S accumulator of two adjacent
// 8-key tiles is, element for element, the A operand of the P*V product, so P never leaves
// registers. Shared-memory rows are padded by FE_PAD elements so ldmatrix reads are conflict-free.
constexpr int FE_PAD = {{ pad }};
constexpr int FE_DP = FE_D + FE_PAD;   // shared-memory row stride, elements
constexpr int FE_KT = FE_D / 16;       // k-steps of Q*K^T
constexpr int FE_DT = FE_D / 8;        // 8-wide output column tiles
constexpr int FE_CH = FE_D / 8;        // 16-byte chunks per row

// Byte offset of this lane's ldmatrix row for A-style operands (Q, and V read transposed):
// matrices 0..3 = (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15).
FE_DEV u32 fe_lane_off_a(int lane) {
  return (u32)(((((lane >> 3) & 1) * 8 + (lane & 7)) * FE_DP + (lane >> 4) * 8) * 2);
}
// ... and for K read as the B operand of Q*K^T: (keys 0-7, d 0-7), (keys 0-7, d 8-15),
// (keys 8-15, d 0-7), (keys 8-15, d 8-15), i.e. b0/b1 of key tile 0, then of key tile 1.
FE_DEV u32 fe_lane_off_b(int lane) {
  return (u32)((((lane >> 4) * 8 + (lane & 7)) * FE_DP + ((lane >> 3) & 1) * 8) * 2);
}

// Loads the warp's MT x 16 x D query fragments from shared memory (q_addr = address of its row 0).
template <int MT, int KT>
FE_DEV void fe_load_q(u32 (&qa)[MT][KT][4], u32 q_addr, int lane) {
  const u32 a = q_addr + fe_lane_off_a(lane);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) fe_ldsm_x4(qa[mt][kk], a + (u32)(mt * 16 * FE_DP * 2 + kk * 32));
  }
}

// K/V tiles in the 128-byte swizzle (written by TMA in the Hopper decode, by cp.async in the mma
// decode): D/64 panels of BN rows of 128 bytes; the 16-byte unit c of row r of a panel sits at unit
// c ^ (r % 8). `chunk` counts 16-byte units along D (0 .. D/8 - 1). The swizzle is computed here,
// not by hardware, so the tile needs only 16-byte alignment.
template <int BN>
FE_DEV u32 fe_sw_addr(u32 base, int row, int chunk) {
  return base + (u32)((chunk >> 3) * BN * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

template <int N>
struct FeLog2 {
  static constexpr int value = 1 + FeLog2<N / 2>::value;
};
template <>
struct FeLog2<1> {
  static constexpr int value = 0;
};

struct FeRowState {
  float o[FE_DT][4];
  float m[2];  // running max of the row's logits, log2 domain
  float l[2];  // this lane's partial sum of exp2(logit - m)
};

// The online softmax's step for one row (a query row, or a decode head) whose raw logits over a
// new tile have the maximum `mx` (-inf where none is visible): moves the running max `m` (log2
// domain) to include it, rescales the running sum `l`, sets `base`, the reference the tile's
// exponentials subtract (0 while the row has seen nothing, so exp2 gives 0, not NaN), and returns
// the factor the row's accumulators must be scaled by.
FE_DEV float fe_softmax_step(float& m, float& l, float mx, float scale_log2, float& base) {
  const float m_new = fmaxf(m, mx * scale_log2);
  base = (m_new == FE_NEG_INF) ? 0.f : m_new;
  const float alpha = fe_exp2(m - base);
  m = m_new;
  l *= alpha;
  return alpha;
}

FE_DEV void fe_state_init(FeRowState& st) {
#pragma unroll
  for (int i = 0; i < FE_DT; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) st.o[i][e] = 0.f;
  }
  st.m[0] = st.m[1] = FE_NEG_INF;
  st.l[0] = st.l[1] = 0.f;
}

// One tile of BN keys for MT 16-row m-tiles of the warp.
//  - Only the 16-key sub-tiles [sub_lo, sub_hi) are computed (the rest is invisible to every row of
//    the warp: skipped, not masked).
//  - When MASKED, `cols(r, lo, hi)` gives row r (0..16*MT-1 of the warp) its visible key columns
//    [lo, hi] of the tile; outside them the logit is -inf.
//  - Q comes from registers (QREGS) or is re-read from shared memory at q_addr (row 0 of the warp).
//  - Each K and V fragment read from shared memory feeds all MT m-tiles.
//  - scale_log2 must be positive: row maxima are taken on raw scores and scaled once, and the
//    scale is folded into the exponent's FFMA.
//  - KVSW: K and V tiles in padded rows (0) or in TMA's 128-byte-swizzled panels (1, fe_sw_addr).
template <int MT, int BN, bool MASKED, bool QREGS, int KVSW = 0, class Cols>
FE_DEV void fe_attend_tile(FeRowState (&st)[MT], const u32 (&qa)[QREGS ? MT : 1][QREGS ? FE_KT : 1][4],
                           u32 q_addr, u32 k_addr, u32 v_addr, float scale_log2, int lane, int sub_lo,
                           int sub_hi, Cols cols) {
  float s[MT][BN / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mt][i][e] = 0.f;
    }
  }
  const u32 kb = k_addr + fe_lane_off_b(lane);
  const u32 qb = q_addr + fe_lane_off_a(lane);
#pragma unroll
  for (int kk = 0; kk < FE_KT; ++kk) {
    u32 a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if (QREGS) {
#pragma unroll
        for (int e = 0; e < 4; ++e) a[mt][e] = qa[QREGS ? mt : 0][QREGS ? kk : 0][e];
      } else {
        fe_ldsm_x4(a[mt], qb + (u32)(mt * 16 * FE_DP * 2 + kk * 32));
      }
    }
#pragma unroll
    for (int nn = 0; nn < BN / 16; ++nn) {
      if (nn < sub_lo || nn >= sub_hi) continue;
      u32 b[4];
      if (KVSW) {
        fe_ldsm_x4(b, fe_sw_addr<BN>(k_addr, nn * 16 + (lane >> 4) * 8 + (lane & 7), kk * 2 + ((lane >> 3) & 1)));
      } else {
        fe_ldsm_x4(b, kb + (u32)(nn * 16 * FE_DP * 2 + kk * 32));
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        fe_mma(s[mt][2 * nn], a[mt], b[0], b[1]);
        fe_mma(s[mt][2 * nn + 1], a[mt], b[2], b[3]);
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    // Mask (raw scores), then row maxima by a tree over the thread's BN/4 values per row.
    if (MASKED) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        int lo, hi;
        cols(mt * 16 + (lane >> 2) + r * 8, lo, hi);
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = nt * 8 + (lane & 3) * 2 + e;
            if (c < lo || c > hi) s[mt][nt][2 * r + e] = FE_NEG_INF;
          }
        }
      }
    } else {
      // Sub-tiles outside [sub_lo, sub_hi) were skipped: they hold zeros, and must not count.
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        if (nt / 2 < sub_lo || nt / 2 >= sub_hi) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][nt][e] = FE_NEG_INF;
        }
      }
    }
    float red[2][BN / 4];
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) red[e >> 1][nt * 2 + (e & 1)] = s[mt][nt][e];
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
    float base[2], alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = red[r][0];
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      alpha[r] = fe_softmax_step(st[mt].m[r], st[mt].l[r], mx, scale_log2, base[r]);
    }
    // Once the running maxima settle, no row's max moves: skip rescaling the accumulators.
    if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
      for (int dt = 0; dt < FE_DT; ++dt) {
        st[mt].o[dt][0] *= alpha[0];
        st[mt].o[dt][1] *= alpha[0];
        st[mt].o[dt][2] *= alpha[1];
        st[mt].o[dt][3] *= alpha[1];
      }
    }
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pv = fe_exp2(fmaf(s[mt][nt][e], scale_log2, -base[e >> 1]));
        s[mt][nt][e] = pv;
        red[e >> 1][nt * 2 + (e & 1)] = pv;
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
    st[mt].l[0] += red[0][0];
    st[mt].l[1] += red[1][0];
  }

  // O += P * V, P straight from the S registers.
  const u32 vb = v_addr + fe_lane_off_a(lane);
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    if (kk < sub_lo || kk >= sub_hi) continue;
    u32 a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      a[mt][0] = fe_pack2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
      a[mt][1] = fe_pack2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
      a[mt][2] = fe_pack2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
      a[mt][3] = fe_pack2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
    }
#pragma unroll
    for (int dn = 0; dn < FE_D / 16; ++dn) {
      u32 b[4];
      if (KVSW) {
        fe_ldsm_x4_t(b, fe_sw_addr<BN>(v_addr, kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7), dn * 2 + (lane >> 4)));
      } else {
        fe_ldsm_x4_t(b, vb + (u32)(kk * 16 * FE_DP * 2 + dn * 32));
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        fe_mma(st[mt].o[2 * dn], a[mt], b[0], b[1]);
        fe_mma(st[mt].o[2 * dn + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

// Completes the row sums across the four lanes that share a row.
FE_DEV void fe_state_finish(FeRowState& st) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    st.l[r] += __shfl_xor_sync(0xffffffffu, st.l[r], 1);
    st.l[r] += __shfl_xor_sync(0xffffffffu, st.l[r], 2);
  }
}

// Asynchronously copies BN rows, D wide, of a token-major tensor into a padded shared tile: row r
// starts at `base + r * stride` and is read only if r < valid (otherwise zero-filled without a
// read). The trip count is a compile-time constant, so the loop unrolls without remainder code.
// SW: dst is a tile in the 128-byte-swizzled panels of fe_sw_addr (D a multiple of 64, rows of D
// elements unpadded) instead of FE_DP-padded rows: each 128-byte line of a source row lands in one
// 128-byte row of shared memory (run 55: the padded rows made the copies ask L2 for 1.5x the
// sectors they read).
// FULL: every row valid (`valid` unused where the threads' chunks tile the rows): unpredicated
// copies, one 64-bit add per copy instead of a per-row guard and a select of the source and of
// the source-size operand, for loops that are issue-bound with one warp per scheduler (the decode
// at small batches; run 71: B=256 1.8 % faster, B=64 0.7 %, B=1 1.3 %).
template <int BN, int NTHREADS, bool SW = false, bool FULL = false>
FE_DEV void fe_load_rows(u16* dst, int tid, const u16* base, i64 stride, int valid) {
  constexpr int TOTAL = BN * FE_CH;
  constexpr int ITERS = (TOTAL + NTHREADS - 1) / NTHREADS;
  if (NTHREADS % FE_CH == 0) {
    // Each thread keeps one 16-byte column and walks rows NTHREADS / FE_CH apart.
    constexpr int STEP = NTHREADS / FE_CH;
    const int r0 = tid / FE_CH;
    const int c = tid % FE_CH;
    const u16* src = base + r0 * stride + c * 8;
    const i64 step = (i64)STEP * stride;
    const u32 d0 = fe_smem_addr(dst + r0 * FE_DP + c * 8);
#pragma unroll
    for (int k = 0; k < ITERS; ++k) {
      const int r = r0 + k * STEP;
      if (TOTAL % NTHREADS != 0 && r >= BN) break;
      const bool ok = FULL || r < valid;
      const u32 d = SW ? fe_sw_addr<BN>(fe_smem_addr(dst), r, c) : d0 + (u32)(k * STEP * FE_DP * 2);
      if (FULL) {
        fe_cp_async16_full(d, src + k * step);
      } else {
        fe_cp_async16(d, ok ? src + (i64)k * STEP * stride : base, ok);
      }
    }
  } else {
    // (rows not a whole number of the threads' chunks, D = 96: each copy its own row and column,
    // whose addresses held at once spilled; FULL takes the guards with valid = BN)
#pragma unroll
    for (int k = 0; k < ITERS; ++k) {
      const int i = tid + k * NTHREADS;
      if (TOTAL % NTHREADS != 0 && i >= TOTAL) break;
      const int r = i / FE_CH;
      const int c = i % FE_CH;
      const bool ok = r < valid;
      const u32 d = SW ? fe_sw_addr<BN>(fe_smem_addr(dst), r, c) : fe_smem_addr(dst + r * FE_DP + c * 8);
      fe_cp_async16(d, ok ? base + r * stride + c * 8 : base, ok);
    }
  }
}

// As fe_load_rows, for rows that are not evenly strided (the decode ring buffer): row r starts at
// `row_ptr(r)`, or is zero-filled when that is null (`any` is then given to the copy as a harmless
// source address).
template <int BN, int NTHREADS, bool SW = false, class RowPtr>
FE_DEV void fe_load_rows_map(u16* dst, int tid, const u16* any, RowPtr row_ptr) {
  constexpr int TOTAL = BN * FE_CH;
  constexpr int ITERS = (TOTAL + NTHREADS - 1) / NTHREADS;
#pragma unroll
  for (int k = 0; k < ITERS; ++k) {
    const int i = tid + k * NTHREADS;
    if (TOTAL % NTHREADS != 0 && i >= TOTAL) break;
    const int r = i / FE_CH;
    const int c = i % FE_CH;
    const u16* src = row_ptr(r);
    const u32 d = SW ? fe_sw_addr<BN>(fe_smem_addr(dst), r, c) : fe_smem_addr(dst + r * FE_DP + c * 8);
    fe_cp_async16(d, src ? src + c * 8 : any, src != nullptr);
  }
}

// Writes a warp's rows of normalized output through shared memory (`stage`, FE_DP-strided rows the
// warp owns), so that global stores are whole 16-byte chunks. Row r goes to `out + r * stride` if
// r < valid. lane-level: call from all 32 lanes.
template <int MT>
FE_DEV void fe_store_rows(FeRowState (&st)[MT], u16* stage, u16* out, i64 stride, int valid, int lane) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float inv = st[mt].l[r] > 0.f ? 1.f / st[mt].l[r] : 0.f;
      u16* row = stage + (mt * 16 + (lane >> 2) + r * 8) * FE_DP + (lane & 3) * 2;
#pragma unroll
      for (int dt = 0; dt < FE_DT; ++dt) {
        *reinterpret_cast<u32*>(row + dt * 8) = fe_pack2(st[mt].o[dt][2 * r] * inv, st[mt].o[dt][2 * r + 1] * inv);
      }
    }
  }
  __syncwarp();
  constexpr int CHUNKS = MT * 16 * FE_CH;
#pragma unroll
  for (int i = lane; i < CHUNKS; i += 32) {
    const int r = i / FE_CH;
    const int c = i % FE_CH;
    if (r < valid) {
      const fe_u32x4 v = *reinterpret_cast<const fe_u32x4*>(stage + r * FE_DP + c * 8);
      fe_st16(out + r * stride + c * 8, v);
    }
  }
}
