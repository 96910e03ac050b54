// flasheva chunk_summarize: {{ name }}
// vs[b, c, g, :] = sum_j softmax_j( s * (omega[b,c,g]·k_j - |k_j|^2 / 2) ) * v_j over the C tokens j of
// chunk c (EVA's prm_projection with normalize=False, then a softmax over the chunk). fp32 throughout.
// One CTA per (chunk, kv head, batch); its {{ warps }} warps stride over the tokens, lane l owning
// channels l, l+32, ...; each token's k and v are read once.
<% include "common.cuh" %>

constexpr int NW = {{ warps }};
constexpr int THREADS = NW * 32;
constexpr int E = (FE_D + 31) / 32;  // channels per lane

// Must match `ChunkSummarizeParams` in src/gpu/params.rs field for field.
struct ChunkSummarizeParams {
  const u16* k;
  const u16* v;
  const u16* omega;
  u16* vs;
  i64 k_sb, k_st, k_sh;
  i64 v_sb, v_st, v_sh;
  i64 om_sb, om_st, om_sh;
  i64 vs_sb, vs_st, vs_sh;
  int nc;   // complete chunks
  int hkv;  // key/value heads
  float scale;
  int reserved;
};
static_assert(sizeof(ChunkSummarizeParams) == 144, "ChunkSummarizeParams must match src/gpu/params.rs");


extern "C" __global__ void __launch_bounds__(THREADS) {{ name }}(const ChunkSummarizeParams p) {
  extern __shared__ __align__(16) unsigned char fe_smem[];
  float* logit = (float*)fe_smem;    // [FE_C]
  float* red = logit + FE_C;            // [2 * NW]
  float* part = red + 2 * NW;        // [NW][FE_D]
  const int c = blockIdx.x;
  const int g = blockIdx.y;
  const int b = blockIdx.z;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;

  float om[E];
  const u16* omg = p.omega + b * p.om_sb + c * p.om_st + g * p.om_sh;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int d = lane + 32 * e;
    om[e] = d < FE_D ? fe_to_f32(omg[d]) : 0.f;
  }
  const u16* kg = p.k + b * p.k_sb + (i64)c * FE_C * p.k_st + g * p.k_sh;
  for (int j = warp; j < FE_C; j += NW) {
    float dot = 0.f, nrm = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int d = lane + 32 * e;
      const float kv = d < FE_D ? fe_to_f32(kg[j * p.k_st + d]) : 0.f;
      dot += om[e] * kv;
      nrm += kv * kv;
    }
    dot = fe_warp_sum(dot);
    nrm = fe_warp_sum(nrm);
    if (lane == 0) logit[j] = p.scale * (dot - 0.5f * nrm);
  }
  __syncthreads();

  float mx = FE_NEG_INF;
  for (int j = threadIdx.x; j < FE_C; j += THREADS) mx = fmaxf(mx, logit[j]);
  mx = fe_warp_max(mx);
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = red[0];
#pragma unroll
  for (int w = 1; w < NW; ++w) mx = fmaxf(mx, red[w]);
  float sum = 0.f;
  for (int j = threadIdx.x; j < FE_C; j += THREADS) {
    const float e = fe_exp2((logit[j] - mx) * FE_LOG2E);
    logit[j] = e;
    sum += e;
  }
  sum = fe_warp_sum(sum);
  if (lane == 0) red[NW + warp] = sum;
  __syncthreads();
  sum = 0.f;
#pragma unroll
  for (int w = 0; w < NW; ++w) sum += red[NW + w];

  float acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.f;
  const u16* vg = p.v + b * p.v_sb + (i64)c * FE_C * p.v_st + g * p.v_sh;
  for (int j = warp; j < FE_C; j += NW) {
    const float pj = logit[j];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int d = lane + 32 * e;
      if (d < FE_D) acc[e] += pj * fe_to_f32(vg[j * p.v_st + d]);
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int d = lane + 32 * e;
    if (d < FE_D) part[warp * FE_D + d] = acc[e];
  }
  __syncthreads();
  u16* out = p.vs + b * p.vs_sb + c * p.vs_st + g * p.vs_sh;
  const float inv = 1.f / sum;
  for (int d = threadIdx.x; d < FE_D; d += THREADS) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w) s += part[w * FE_D + d];
    out[d] = fe_from_f32(s * inv);
  }
}
