// flasheva read-rate probe (not a template): streams a buffer far larger than L2 once, 16 bytes
// per thread per step with an evict-first load, and folds it into a value that is stored only if
// it matches a constant (so the loads cannot be removed). `flasheva bench` times it to report
// memory-bound kernels as a share of what the device can read.
struct ReadParams {
    const unsigned char* src;
    unsigned long long vectors;  // 16-byte vectors in src
    unsigned int* sink;
};

extern "C" __global__ void __launch_bounds__(256) flasheva_read_rate(const ReadParams p) {
    unsigned int acc = 0;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < p.vectors; i += stride) {
        unsigned int a, b, c, d;
        asm volatile("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];"
                     : "=r"(a), "=r"(b), "=r"(c), "=r"(d)
                     : "l"(p.src + i * 16));
        acc ^= a ^ b ^ c ^ d;
    }
    if (acc == 0x9e3779b9u) {
        p.sink[0] = acc;
    }
}
