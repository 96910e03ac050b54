//! Tensor arguments as the kernels see them: element types and device tensors described by
//! address, shape and strides. Pure values; the launch planning in [`crate::gpu::params`] checks
//! them against a kernel's spec.

use crate::spec::DType;

/// Element types of kernel arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElemType {
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// fp32.
    F32,
    /// int32.
    I32,
}

impl ElemType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElemType::F16 | ElemType::Bf16 => 2,
            ElemType::F32 | ElemType::I32 => 4,
        }
    }

    /// The storage type of a spec.
    pub fn of(d: DType) -> ElemType {
        match d {
            DType::F16 => ElemType::F16,
            DType::Bf16 => ElemType::Bf16,
        }
    }

    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            ElemType::F16 => "f16",
            ElemType::Bf16 => "bf16",
            ElemType::F32 => "f32",
            ElemType::I32 => "i32",
        }
    }
}

/// A tensor in device memory: address, element type, shape and strides (in elements).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorArg {
    /// Name used in errors.
    pub name: String,
    /// Device address.
    pub ptr: u64,
    /// Element type.
    pub dtype: ElemType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides in elements, one per dimension.
    pub strides: Vec<usize>,
}

impl TensorArg {
    /// A contiguous (row-major) tensor.
    pub fn contiguous(name: &str, ptr: u64, dtype: ElemType, shape: &[usize]) -> TensorArg {
        let mut strides = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        TensorArg {
            name: name.to_string(),
            ptr,
            dtype,
            shape: shape.to_vec(),
            strides,
        }
    }

    /// The same tensor with explicit strides.
    pub fn with_strides(mut self, strides: &[usize]) -> TensorArg {
        self.strides = strides.to_vec();
        self
    }

    /// Stride of dimension `i`, in elements, as the kernels take it.
    pub fn stride(&self, i: usize) -> i64 {
        self.strides[i] as i64
    }
}
