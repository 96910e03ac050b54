//! Host tensors in the kernels' element types: random fills (rounded to the storage type, so a
//! float64 reference sees exactly what the GPU sees), conversions to and from float64, and the
//! poison values outputs are filled with before a launch. Pure.

use half::{bf16, f16};
use rand::{Rng, RngExt, SeedableRng, rngs::StdRng};

use crate::spec::DType;
use crate::tensor::ElemType;

/// A tensor on the host: element type, shape and the little-endian bytes of its elements,
/// contiguous and row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Element type.
    pub elem: ElemType,
    /// Shape.
    pub shape: Vec<usize>,
    /// The elements, little-endian, row-major.
    pub data: Vec<u8>,
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

/// The storage type of a 16-bit element type.
fn storage(elem: ElemType) -> Option<DType> {
    match elem {
        ElemType::F16 => Some(DType::F16),
        ElemType::Bf16 => Some(DType::Bf16),
        ElemType::F32 | ElemType::I32 => None,
    }
}

/// The bytes of one element of `elem` holding `x` (rounded; integers truncated).
pub fn encode(elem: ElemType, x: f64) -> Vec<u8> {
    match elem {
        ElemType::F16 | ElemType::Bf16 => to_bits(x, storage(elem).expect("16-bit"))
            .to_le_bytes()
            .to_vec(),
        ElemType::F32 => (x as f32).to_le_bytes().to_vec(),
        ElemType::I32 => (x as i32).to_le_bytes().to_vec(),
    }
}

/// The NaN (or, for int32, the value -1) an output of `elem` is poisoned with.
pub fn poison(elem: ElemType) -> Vec<u8> {
    match elem {
        ElemType::F16 | ElemType::Bf16 => poison_bits(storage(elem).expect("16-bit"))
            .to_le_bytes()
            .to_vec(),
        ElemType::F32 => f32::NAN.to_le_bytes().to_vec(),
        ElemType::I32 => (-1i32).to_le_bytes().to_vec(),
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
        let data = (0..n)
            .flat_map(|_| to_bits(rng.random_range(-amp..=amp), dtype).to_le_bytes())
            .collect();
        HostTensor {
            elem: ElemType::of(dtype),
            shape: shape.to_vec(),
            data,
        }
    }

    /// From float64 values (rounded to `elem`).
    pub fn from_f64(elem: ElemType, shape: &[usize], values: &[f64]) -> HostTensor {
        HostTensor {
            elem,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|&x| encode(elem, x)).collect(),
        }
    }

    /// An int32 tensor.
    pub fn from_i32(shape: &[usize], values: &[i32]) -> HostTensor {
        HostTensor {
            elem: ElemType::I32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// Every element set to the poison value of its type.
    pub fn poisoned(elem: ElemType, shape: &[usize]) -> HostTensor {
        let n: usize = shape.iter().product();
        let p = poison(elem);
        HostTensor {
            elem,
            shape: shape.to_vec(),
            data: p.iter().copied().cycle().take(n * p.len()).collect(),
        }
    }

    /// Element `i` as float64.
    pub fn get(&self, i: usize) -> f64 {
        let s = self.elem.size();
        let b = &self.data[i * s..(i + 1) * s];
        match self.elem {
            ElemType::F16 | ElemType::Bf16 => from_bits(
                u16::from_le_bytes([b[0], b[1]]),
                storage(self.elem).expect("16-bit"),
            ),
            ElemType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            ElemType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        }
    }

    /// Every element times `amp`, in place, rounded to the element type: what
    /// `from_f64(elem, shape, &(to_f64() * amp))` gives, without the float64 copy (for the
    /// hundreds of millions of elements a benchmark's paged pools hold).
    pub fn scale(&mut self, amp: f64) {
        match self.elem {
            ElemType::F16 | ElemType::Bf16 => {
                // every 16-bit pattern once, then a table lookup per element
                let dt = storage(self.elem).expect("16-bit");
                let table: Vec<u16> = (0..=u16::MAX)
                    .map(|b| to_bits(from_bits(b, dt) * amp, dt))
                    .collect();
                for b in self.data.chunks_exact_mut(2) {
                    let y = table[u16::from_le_bytes([b[0], b[1]]) as usize];
                    b.copy_from_slice(&y.to_le_bytes());
                }
            }
            ElemType::F32 => {
                for b in self.data.chunks_exact_mut(4) {
                    let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64;
                    b.copy_from_slice(&((x * amp) as f32).to_le_bytes());
                }
            }
            ElemType::I32 => {
                for b in self.data.chunks_exact_mut(4) {
                    let x = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64;
                    b.copy_from_slice(&((x * amp) as i32).to_le_bytes());
                }
            }
        }
    }

    /// Every element as float64.
    pub fn to_f64(&self) -> Vec<f64> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    /// Every element of an int32 tensor.
    pub fn to_i32(&self) -> Vec<i32> {
        self.data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.elem.size()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Rows `lo..hi` of the outermost dimension, as a tensor of their own.
    pub fn rows(&self, lo: usize, hi: usize) -> HostTensor {
        let row: usize = self.shape[1..].iter().product::<usize>() * self.elem.size();
        let mut shape = self.shape.clone();
        shape[0] = hi - lo;
        HostTensor {
            elem: self.elem,
            shape,
            data: self.data[lo * row..hi * row].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_in_place_equals_the_float64_round_trip() {
        let mut rng = StdRng::seed_from_u64(7);
        for dt in [DType::F16, DType::Bf16] {
            let t = HostTensor::uniform(&mut rng, dt, &[4099], 1.0);
            for amp in [9.0, 0.3, -2.5] {
                let want: Vec<f64> = t.to_f64().iter().map(|x| x * amp).collect();
                let want = HostTensor::from_f64(t.elem, &t.shape, &want);
                let mut got = t.clone();
                got.scale(amp);
                assert_eq!(got, want, "{dt:?} x {amp}");
            }
        }
        let mut f = HostTensor::from_f64(ElemType::F32, &[3], &[1.5, -2.0, 0.1]);
        f.scale(2.0);
        assert_eq!(f.to_f64(), vec![3.0, -4.0, (0.1f32 * 2.0) as f64]);
    }

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
        for e in [ElemType::F16, ElemType::Bf16, ElemType::F32] {
            let p = HostTensor::poisoned(e, &[2, 3]);
            assert_eq!(p.len(), 6);
            assert!(p.to_f64().iter().all(|x| x.is_nan()), "{e:?}");
        }
        let v = HostTensor::from_f64(ElemType::F32, &[2], &[1.5, -2.0]);
        assert_eq!(v.to_f64(), vec![1.5, -2.0]);
        let l = HostTensor::from_i32(&[3], &[1, -4, 7]);
        assert_eq!(l.to_i32(), vec![1, -4, 7]);
        assert_eq!(l.rows(1, 3).to_i32(), vec![-4, 7]);
    }
}
