//! Kernel parameter blocks and launch planning. Pure.

/// Tensors that do not fit a kernel call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// A tensor's shape is not the expected one.
    #[error("tensor {name} has shape {got:?}, expected {expected}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Its shape.
        got: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// A tensor's dtype is not the kernel's.
    #[error("tensor {name} is {got}, the kernel takes {expected}")]
    DType {
        /// Tensor name.
        name: String,
        /// Its dtype.
        got: String,
        /// The kernel's.
        expected: String,
    },
    /// Strides or alignment the kernel cannot read.
    #[error("tensor {name}: {problem}")]
    Layout {
        /// Tensor name.
        name: String,
        /// What is wrong.
        problem: String,
    },
}
