// flasheva chunk_mean: {{ name }}
// Xbar[b, c, g, :] = mean of X[b, c*C .. c*C+C-1, g, :] for every complete chunk c < Nc, fp32 sums.
// Tile {{ tile_name }}: each thread owns 8 contiguous channels (one 16-byte load per token) of one
// head; a CTA of {{ warps }} warps covers several heads of one chunk.
<% include "common.cuh" %>

constexpr int NW = {{ warps }};
constexpr int THREADS = NW * 32;
constexpr int CH = FE_D / 8;                // 16-byte chunks per row
constexpr int HEADS_PER_CTA = THREADS / CH;

// Must match `ChunkMeanParams` in src/gpu/params.rs field for field.
struct ChunkMeanParams {
  const u16* x;
  u16* xbar;
  i64 x_sb, x_st, x_sh;
  i64 y_sb, y_st, y_sh;
  int nc;  // complete chunks
  int g;   // heads
};
static_assert(sizeof(ChunkMeanParams) == 72, "ChunkMeanParams must match src/gpu/params.rs");


extern "C" __global__ void __launch_bounds__(THREADS) {{ name }}(const ChunkMeanParams p) {
  const int c = blockIdx.x;
  const int b = blockIdx.z;
  const int head = blockIdx.y * HEADS_PER_CTA + threadIdx.x / CH;
  const int ch = threadIdx.x % CH;
  if (threadIdx.x >= HEADS_PER_CTA * CH || head >= p.g) return;
  const u16* src = p.x + b * p.x_sb + (i64)c * FE_C * p.x_st + head * p.x_sh + ch * 8;
  float acc[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) acc[e] = 0.f;
#pragma unroll 8
  for (int t = 0; t < FE_C; ++t) {
    const fe_u32x4 v = fe_ld16(src + t * p.x_st);
    acc[0] += fe_lo(v.x); acc[1] += fe_hi(v.x);
    acc[2] += fe_lo(v.y); acc[3] += fe_hi(v.y);
    acc[4] += fe_lo(v.z); acc[5] += fe_hi(v.z);
    acc[6] += fe_lo(v.w); acc[7] += fe_hi(v.w);
  }
  const float inv = 1.f / (float)FE_C;
  fe_u32x4 out;
  out.x = fe_pack2(acc[0] * inv, acc[1] * inv);
  out.y = fe_pack2(acc[2] * inv, acc[3] * inv);
  out.z = fe_pack2(acc[4] * inv, acc[5] * inv);
  out.w = fe_pack2(acc[6] * inv, acc[7] * inv);
  fe_st16(p.xbar + b * p.y_sb + c * p.y_st + head * p.y_sh + ch * 8, out);
}
