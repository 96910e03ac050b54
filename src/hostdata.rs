//! Host tensors in the kernels' storage types: random fills (rounded to the dtype, so a float64
//! reference sees exactly what the GPU sees), bit conversions and poison values. Pure.

use half::{bf16, f16};
use rand::{Rng, RngExt, SeedableRng, rngs::StdRng};

use crate::spec::DType;

/// A tensor as 16-bit storage plus the exact float64 value of every element.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Storage type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw 16-bit elements.
    pub bits: Vec<u16>,
}

/// float64 -> storage bits (round to nearest even).
pub fn to_bits(x: f64, dtype: DType) -> u16 {
    match dtype {
        DType::F16 => f16::from_f64(x).to_bits(),
        DType::Bf16 => bf16::from_f64(x).to_bits(),
    }
}

/// Storage bits -> float64 (exact).
pub fn from_bits(b: u16, dtype: DType) -> f64 {
    match dtype {
        DType::F16 => f16::from_bits(b).to_f64(),
        DType::Bf16 => bf16::from_bits(b).to_f64(),
    }
}

/// A NaN of the storage type, written into outputs before a launch so unwritten elements show.
pub fn poison_bits(dtype: DType) -> u16 {
    match dtype {
        DType::F16 => 0x7e00,
        DType::Bf16 => 0x7fc0,
    }
}

/// A random generator from a fresh OS seed; the seed is returned for reproduction.
pub fn fresh_rng() -> (StdRng, u64) {
    let seed: u64 = rand::rng().random();
    (StdRng::seed_from_u64(seed), seed)
}

impl HostTensor {
    /// Elements drawn uniformly from `[-amp, amp]`, rounded to `dtype`.
    pub fn uniform(rng: &mut impl Rng, dtype: DType, shape: &[usize], amp: f64) -> HostTensor {
        let n: usize = shape.iter().product();
        let bits = (0..n)
            .map(|_| to_bits(rng.random_range(-amp..=amp), dtype))
            .collect();
        HostTensor {
            dtype,
            shape: shape.to_vec(),
            bits,
        }
    }

    /// From float64 values (rounded).
    pub fn from_f64(dtype: DType, shape: &[usize], values: &[f64]) -> HostTensor {
        HostTensor {
            dtype,
            shape: shape.to_vec(),
            bits: values.iter().map(|&x| to_bits(x, dtype)).collect(),
        }
    }

    /// Every element as float64.
    pub fn to_f64(&self) -> Vec<f64> {
        self.bits
            .iter()
            .map(|&b| from_bits(b, self.dtype))
            .collect()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bits.len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_poison() {
        assert_eq!(from_bits(to_bits(1.0, DType::Bf16), DType::Bf16), 1.0);
        assert_eq!(
            from_bits(to_bits(1.0 + 1.0 / 512.0, DType::Bf16), DType::Bf16),
            1.0
        );
        assert_eq!(
            from_bits(to_bits(1.0 + 1.0 / 512.0, DType::F16), DType::F16),
            1.0 + 1.0 / 512.0
        );
        assert!(from_bits(poison_bits(DType::F16), DType::F16).is_nan());
        assert!(from_bits(poison_bits(DType::Bf16), DType::Bf16).is_nan());
        let (mut rng, _) = fresh_rng();
        let t = HostTensor::uniform(&mut rng, DType::Bf16, &[3, 5], 2.0);
        assert_eq!(t.len(), 15);
        assert!(t.to_f64().iter().all(|x| x.abs() <= 2.0));
    }
}
