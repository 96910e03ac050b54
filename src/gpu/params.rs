//! The kernels' parameter blocks, their launch planning and the typed argument structs of the
//! loader's launches. They live in each op's description ([`crate::ops`]); this module gathers
//! them for callers of [`crate::loader::Kernel`]'s typed launches.

pub use crate::ops::chunk_mean::{ChunkMeanArgs, ChunkMeanParams, plan_chunk_mean};
pub use crate::ops::chunk_summarize::{
    ChunkSummarizeArgs, ChunkSummarizeParams, plan_chunk_summarize,
};
pub use crate::ops::decode::{
    DecodeArgs, DecodeParams, DecodePlan, decode_splits, decode_workspace_elems, plan_decode,
};
pub use crate::ops::launch::{
    DeviceFacts, LaunchError, LaunchPlan, OpArgs, ParamBlock, Step, TensorMap, TensorMapSpec,
};
pub use crate::ops::prefill::{
    PrefillArgs, PrefillParams, PrefillSm90Params, Sm90PrefillPlan, plan_prefill, plan_prefill_sm90,
};
pub use crate::tensor::{ElemType, TensorArg};
