// Copy patterns against L2 sectors: which `cp.async` layouts ask L2 for the sectors they need.
//
// Run 53 found the decode's copies asking L2 for 1.5x the sectors they read (24 per 512-byte
// instruction against 16) where cuDNN's decode asks for exactly the ideal. Each kernel below
// streams the same 640 MiB into shared memory, 16 bytes per lane per instruction, with one
// pattern; time it with events and count the sectors under ncu:
//   nvcc -O3 -arch=sm_90a -o /tmp/copy_sectors scripts/copy_sectors.cu
//   /tmp/copy_sectors                       (times, GB/s)
//   ncu --metrics lts__t_sectors_srcunit_tex_op_read.sum,dram__bytes_read.sum /tmp/copy_sectors
// Patterns (rows of 256 bytes, as a D = 128 bf16 key row):
//   two_rows_2k   lanes 0-15 row r, 16-31 row r+1, rows 2 KiB apart (the decode's token-major ring)
//   two_rows_adj  the same with adjacent rows (a head-major cache, or a compact copy)
//   one_row_half  lanes 0-15 one row, lanes 16-31 idle (half-warp instructions)
//   quarter_rows  lanes 8j..8j+7 row r+j (four 128-byte halves of rows 2 KiB apart per instruction)
//   ldg_two_2k    two_rows_2k through registers (ld.global.v4 then st.shared), no cp.async
//   ca_two_2k     two_rows_2k with cp.async.ca (L1-allocating) instead of .cg
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>

constexpr int ROW = 256;            // bytes per row
constexpr int THREADS = 128;
constexpr int TILE_ROWS = 16;       // rows per warp and tile (the decode's block_n = 16)
constexpr long long BYTES = 640ll << 20;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp16_cg(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp16_ca(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

// Row i of the buffer: rows are `stride` bytes apart; with stride 2048 the buffer holds 8
// interleaved "heads" and warp w of the grid reads head w % 8's rows, so every byte is read once.
template <int PATTERN>
__global__ void __launch_bounds__(THREADS) stream(const unsigned char* buf, long long rows_per_head, int stride,
                                                  unsigned* sink) {
  __shared__ __align__(16) unsigned char sm[THREADS / 32][2][TILE_ROWS * ROW];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const long long gw = (long long)blockIdx.x * (THREADS / 32) + warp;
  const long long nw = (long long)gridDim.x * (THREADS / 32);
  const int heads = stride / ROW;
  const long long tiles = rows_per_head / TILE_ROWS;
  unsigned acc = 0;
  int st = 0;
  for (long long t = gw; t < tiles * heads; t += nw) {
    const int h = (int)(t % heads);
    const long long r0 = (t / heads) * TILE_ROWS;
    const unsigned char* base = buf + h * ROW;
    unsigned char* dst = sm[warp][st];
    if (PATTERN == 0 || PATTERN == 1 || PATTERN == 5) {
      for (int k = 0; k < TILE_ROWS / 2; ++k) {
        const int r = 2 * k + (lane >> 4);
        const void* src = base + (r0 + r) * (long long)stride + (lane & 15) * 16;
        if (PATTERN == 5) cp16_ca(smem_u32(dst + r * ROW + (lane & 15) * 16), src);
        else cp16_cg(smem_u32(dst + r * ROW + (lane & 15) * 16), src);
      }
    } else if (PATTERN == 2) {
      if (lane < 16)
        for (int r = 0; r < TILE_ROWS; ++r)
          cp16_cg(smem_u32(dst + r * ROW + lane * 16), base + (r0 + r) * (long long)stride + lane * 16);
    } else if (PATTERN == 3) {
      for (int k = 0; k < TILE_ROWS / 2; ++k) {
        // instruction k: rows 4 (k / 2) + j, half k % 2 of each row, j = lane / 8
        const int r = 4 * (k >> 1) + (lane >> 3);
        const int off = (k & 1) * 128 + (lane & 7) * 16;
        cp16_cg(smem_u32(dst + r * ROW + off), base + (r0 + r) * (long long)stride + off);
      }
    } else {
      for (int k = 0; k < TILE_ROWS / 2; ++k) {
        const int r = 2 * k + (lane >> 4);
        const uint4 v = *reinterpret_cast<const uint4*>(base + (r0 + r) * (long long)stride + (lane & 15) * 16);
        *reinterpret_cast<uint4*>(dst + r * ROW + (lane & 15) * 16) = v;
      }
    }
    commit();
    wait_all();
    __syncwarp();
    acc ^= reinterpret_cast<const unsigned*>(dst)[lane];
    st ^= 1;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

template <int P>
float run(const unsigned char* buf, int stride, unsigned* sink, int blocks) {
  const long long rows_per_head = BYTES / stride;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  stream<P><<<blocks, THREADS>>>(buf, rows_per_head, stride, sink);
  cudaEventRecord(a);
  for (int i = 0; i < 5; ++i) stream<P><<<blocks, THREADS>>>(buf, rows_per_head, stride, sink);
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms;
  cudaEventElapsedTime(&ms, a, b);
  return ms / 5;
}

int main() {
  unsigned char* buf;
  unsigned* sink;
  if (cudaMalloc(&buf, BYTES) != cudaSuccess || cudaMalloc(&sink, 4) != cudaSuccess) {
    fprintf(stderr, "cudaMalloc failed\n");
    return 1;
  }
  cudaMemset(buf, 1, BYTES);
  int sms;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const int blocks = sms * 8;
  struct {
    const char* name;
    float ms;
  } r[] = {
      {"two_rows_2k", run<0>(buf, 2048, sink, blocks)},  {"two_rows_adj", run<1>(buf, 256, sink, blocks)},
      {"one_row_half", run<2>(buf, 2048, sink, blocks)}, {"quarter_rows", run<3>(buf, 2048, sink, blocks)},
      {"ldg_two_2k", run<4>(buf, 2048, sink, blocks)},   {"ca_two_2k", run<5>(buf, 2048, sink, blocks)},
  };
  for (auto& x : r) printf("%-14s %8.4f ms  %7.1f GB/s\n", x.name, x.ms, BYTES / (x.ms * 1e6));
  return cudaGetLastError() == cudaSuccess ? 0 : 1;
}
