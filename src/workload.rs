//! `Workload`: one kernel at one set of sizes, and the work it must do (flops, the fewest bytes
//! it must move). Pure; the loader picks tuned tiles by it, bench and tune measure it.

use crate::ops;
use crate::spec::KernelSpec;

/// The sizes of one call of a kernel. Prefill and chunk ops: `n` tokens. Decode: every sequence
/// has `n` tokens (query position `n - 1`). Extend and append: `n` new tokens per sequence after
/// `past` cached ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Workload {
    /// The spec.
    pub spec: KernelSpec,
    /// Batch.
    pub b: usize,
    /// Tokens (decode: len = position + 1).
    pub n: usize,
    /// Query heads (chunk ops: the heads G of X, or Hkv).
    pub h: usize,
    /// Key/value heads.
    pub hkv: usize,
    /// Tokens already cached before this call (extend: `L0` of every sequence); 0 for the
    /// other ops.
    #[serde(default)]
    pub past: usize,
}

impl Workload {
    /// A call of `spec` on `b` sequences of `n` tokens (decode: `n` = length including the new
    /// token; extend/append: `n` new tokens, see [`Workload::with_past`]), `h` query heads and
    /// `hkv` kv heads, nothing cached before it.
    pub fn new(spec: KernelSpec, b: usize, n: usize, h: usize, hkv: usize) -> Workload {
        Workload {
            spec,
            b,
            n,
            h,
            hkv,
            past: 0,
        }
    }

    /// This workload after `past` cached tokens per sequence (extend and append: L0).
    pub fn with_past(self, past: usize) -> Workload {
        Workload { past, ..self }
    }

    /// Short text, e.g. `B=1 N=16384 H=16 Hkv=16` (decode: the position).
    pub fn describe(&self) -> String {
        ops::of(self.spec.op()).describe(self)
    }

    /// Summary rows present in the decode cache.
    pub fn max_nc(&self) -> usize {
        (self.n / self.spec.chunk() as usize).max(1)
    }

    /// Useful floating-point work (attention: 4·D per visible (query, key-or-summary) pair).
    pub fn flops(&self) -> f64 {
        ops::of(self.spec.op()).flops(self)
    }

    /// The fewest bytes the op must move through device memory (inputs read once, outputs
    /// written once).
    pub fn bytes(&self) -> f64 {
        ops::of(self.spec.op()).bytes(self)
    }

    /// What dense causal attention over the same tokens would compute (prefill only).
    pub fn dense_causal_flops(&self) -> f64 {
        let d = self.spec.head_dim() as f64;
        4.0 * d * (self.b * self.h) as f64 * (self.n as f64) * (self.n as f64 + 1.0) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DType, Op, SpecParams};

    #[test]
    fn work_counts() {
        let spec = KernelSpec::new(
            Op::Prefill,
            &SpecParams {
                head_dim: Some(128),
                window: Some(512),
                chunk: Some(64),
                dtype: Some(DType::Bf16),
                ..Default::default()
            },
        )
        .unwrap();
        let w = Workload::new(spec, 1, 16384, 16, 16);
        // per query: (i mod 512) + 1 local keys and floor(i / 64) summaries
        let pairs: u64 = (0..16384u64).map(|i| (i % 512) + 1 + i / 64).sum();
        assert_eq!(w.flops(), 4.0 * 128.0 * 16.0 * pairs as f64);
        assert!(w.dense_causal_flops() > 10.0 * w.flops());
    }
}
