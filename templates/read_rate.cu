// flasheva read-rate probe (not a template): streams a buffer far larger than L2 once with
// evict-first 16-byte loads, four independent loads in flight per thread, and folds them into a
// value that is stored only if it matches a constant (so the loads cannot be removed).
// `flasheva bench` times it to report memory-bound kernels as a share of what the device reads.
struct ReadParams {
    const unsigned char* src;
    unsigned long long vectors;  // 16-byte vectors in src
    unsigned int* sink;
};

__device__ __forceinline__ unsigned int load_fold(const unsigned char* p) {
    unsigned int a, b, c, d;
    asm volatile("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(a), "=r"(b), "=r"(c), "=r"(d)
                 : "l"(p));
    return a ^ b ^ c ^ d;
}

extern "C" __global__ void __launch_bounds__(256) flasheva_read_rate(const ReadParams p) {
    unsigned int acc = 0;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < p.vectors; i += 4 * stride) {
        unsigned int x0 = load_fold(p.src + i * 16);
        unsigned int x1 = load_fold(p.src + (i + stride) * 16);
        unsigned int x2 = load_fold(p.src + (i + 2 * stride) * 16);
        unsigned int x3 = load_fold(p.src + (i + 3 * stride) * 16);
        acc ^= x0 ^ x1 ^ x2 ^ x3;
    }
    for (; i < p.vectors; i += stride) {
        acc ^= load_fold(p.src + i * 16);
    }
    if (acc == 0x9e3779b9u) {
        p.sink[0] = acc;
    }
}
