// flasheva: one warp's online-softmax attention over one K/V tile in shared memory.
//
// A warp owns 16 query rows. Fragment layout (mma.m16n8k16): lane l holds rows l/4 and l/4+8 of
// every 16x8 accumulator tile, columns 2*(l%4) and 2*(l%4)+1. The S accumulator of two adjacent
// 8-key tiles is, element for element, the A operand of the P*V product, so P never leaves
// registers. Shared-memory rows are padded by FE_PAD elements so ldmatrix reads are conflict-free.
constexpr int FE_D = {{ head_dim }};
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

// Loads the warp's 16 x D query fragments from shared memory (q_addr = address of its row 0).
template <int KT>
FE_DEV void fe_load_q(u32 (&qa)[KT][4], u32 q_addr, int lane) {
  const u32 a = q_addr + fe_lane_off_a(lane);
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) fe_ldsm_x4(qa[kk], a + kk * 32);
}

struct FeRowState {
  float o[FE_DT][4];
  float m[2];  // running max of the row's logits, log2 domain
  float l[2];  // this lane's partial sum of exp2(logit - m)
};

FE_DEV void fe_state_init(FeRowState& st) {
#pragma unroll
  for (int i = 0; i < FE_DT; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) st.o[i][e] = 0.f;
  }
  st.m[0] = st.m[1] = FE_NEG_INF;
  st.l[0] = st.l[1] = 0.f;
}

// One tile of BN keys. `vis(r, c)` (r: row 0..15 of the warp, c: key 0..BN-1) is only called when
// MASKED. Q comes from registers (QREGS) or is re-read from shared memory at q_addr.
template <int BN, bool MASKED, bool QREGS, class Vis>
FE_DEV void fe_attend_tile(FeRowState& st, const u32 (&qa)[QREGS ? FE_KT : 1][4], u32 q_addr, u32 k_addr,
                           u32 v_addr, float scale_log2, int lane, Vis vis) {
  float s[BN / 8][4];
#pragma unroll
  for (int i = 0; i < BN / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[i][e] = 0.f;
  }
  const u32 kb = k_addr + fe_lane_off_b(lane);
  const u32 qb = q_addr + fe_lane_off_a(lane);
#pragma unroll
  for (int kk = 0; kk < FE_KT; ++kk) {
    u32 a[4];
    if (QREGS) {
#pragma unroll
      for (int e = 0; e < 4; ++e) a[e] = qa[QREGS ? kk : 0][e];
    } else {
      fe_ldsm_x4(a, qb + kk * 32);
    }
#pragma unroll
    for (int nn = 0; nn < BN / 16; ++nn) {
      u32 b[4];
      fe_ldsm_x4(b, kb + (u32)(nn * 16 * FE_DP * 2 + kk * 32));
      fe_mma(s[2 * nn], a, b[0], b[1]);
      fe_mma(s[2 * nn + 1], a, b[2], b[3]);
    }
  }

  // Scale into the log2 domain, mask, and find the tile's row maxima.
  float mx[2] = {FE_NEG_INF, FE_NEG_INF};
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = s[nt][e] * scale_log2;
      if (MASKED) {
        const int r = (lane >> 2) + (e >> 1) * 8;
        const int c = nt * 8 + (lane & 3) * 2 + (e & 1);
        if (!vis(r, c)) x = FE_NEG_INF;
      }
      s[nt][e] = x;
      mx[e >> 1] = fmaxf(mx[e >> 1], x);
    }
  }
  float base[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float m_new = fmaxf(st.m[r], mx[r]);
    // A row that has seen nothing yet keeps m = -inf; use 0 as the reference so exp2 gives 0, not NaN.
    base[r] = (m_new == FE_NEG_INF) ? 0.f : m_new;
    const float alpha = fe_exp2(st.m[r] - base[r]);
    st.m[r] = m_new;
    st.l[r] *= alpha;
#pragma unroll
    for (int dt = 0; dt < FE_DT; ++dt) {
      st.o[dt][2 * r] *= alpha;
      st.o[dt][2 * r + 1] *= alpha;
    }
  }
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float pv = fe_exp2(s[nt][e] - base[e >> 1]);
      s[nt][e] = pv;
      st.l[e >> 1] += pv;
    }
  }

  // O += P * V, P straight from the S registers.
  const u32 vb = v_addr + fe_lane_off_a(lane);
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    u32 a[4];
    a[0] = fe_pack2(s[2 * kk][0], s[2 * kk][1]);
    a[1] = fe_pack2(s[2 * kk][2], s[2 * kk][3]);
    a[2] = fe_pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    a[3] = fe_pack2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
    for (int dn = 0; dn < FE_D / 16; ++dn) {
      u32 b[4];
      fe_ldsm_x4_t(b, vb + (u32)(kk * 16 * FE_DP * 2 + dn * 32));
      fe_mma(st.o[2 * dn], a, b[0], b[1]);
      fe_mma(st.o[2 * dn + 1], a, b[2], b[3]);
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

// Asynchronously copies BN rows, D wide, of a token-major tensor into a padded shared tile. Row r
// comes from `row_ptr(r)`; a row whose pointer is null is zero-filled without a read (`any` is a
// valid global address of the tensor, given to the copy as a harmless source).
template <int BN, int NTHREADS, class RowPtr>
FE_DEV void fe_load_rows(u16* dst, int tid, const u16* any, RowPtr row_ptr) {
#pragma unroll
  for (int i = tid; i < BN * FE_CH; i += NTHREADS) {
    const int r = i / FE_CH;
    const int c = i % FE_CH;
    const u16* src = row_ptr(r);
    fe_cp_async16(fe_smem_addr(dst + r * FE_DP + c * 8), src ? src + c * 8 : any, src != nullptr);
  }
}
