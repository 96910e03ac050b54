//! Device copies of host tensors, for the tools that make their own data (`run`, `bench`, the
//! correctness checks): upload with optional row padding (non-contiguous strides), download,
//! refill (poison before a launch). The loader itself never allocates: callers bring memory.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::driver::{GpuError, device_address, drv};
use crate::hostdata::{HostTensor, encode};
use crate::tensor::{ElemType, TensorArg};

/// A tensor in device memory: the buffer and the argument that describes it. Rows of the last
/// dimension may be followed by `pad` unused elements (then the strides are not contiguous).
pub struct DeviceTensor {
    buf: CudaSlice<u8>,
    /// The argument for a kernel call.
    pub arg: TensorArg,
    pad: usize,
}

/// The layout of `shape` with `pad` elements after every row of the last dimension: strides in
/// elements, and the element count of the buffer.
fn padded_layout(shape: &[usize], pad: usize) -> (Vec<usize>, usize) {
    let rank = shape.len();
    let mut strides = vec![1usize; rank];
    if rank >= 2 {
        strides[rank - 2] = shape[rank - 1] + pad;
        for i in (0..rank - 2).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
    }
    let elems = if rank == 0 {
        1
    } else {
        strides[0] * shape[0].max(1)
    };
    (strides, elems)
}

/// The bytes of `t` laid out with rows padded by `pad` elements of `fill` (16-bit tensors of
/// rank >= 2 only), its strides, and the padding used.
fn host_layout(t: &HostTensor, pad: usize, fill: f64) -> (Vec<u8>, Vec<usize>, usize) {
    let pad = if matches!(t.elem, ElemType::F16 | ElemType::Bf16) && t.shape.len() >= 2 {
        pad
    } else {
        0
    };
    let es = t.elem.size();
    let (strides, elems) = padded_layout(&t.shape, pad);
    let host = if pad == 0 {
        let mut v = t.data.clone();
        v.resize(elems.max(1) * es, 0);
        v
    } else {
        let d = *t.shape.last().expect("rank >= 2");
        let filler = encode(t.elem, fill);
        let mut v = Vec::with_capacity(elems * es);
        for row in t.data.chunks_exact(d * es) {
            v.extend_from_slice(row);
            for _ in 0..pad {
                v.extend_from_slice(&filler);
            }
        }
        v.resize(elems.max(1) * es, 0);
        v
    };
    (host, strides, pad)
}

/// Uploads `t` as `name`, with `pad` elements (`fill` bytes each) after every row of its last
/// dimension; int32 and fp32 tensors and rank-1 tensors are never padded.
pub fn upload(
    stream: &Arc<CudaStream>,
    name: &str,
    t: &HostTensor,
    pad: usize,
    fill: f64,
) -> Result<DeviceTensor, GpuError> {
    let (host, strides, pad) = host_layout(t, pad, fill);
    let buf = stream.clone_htod(&host).map_err(drv("cuMemcpyHtoD"))?;
    let arg = TensorArg {
        name: name.to_string(),
        ptr: device_address(&buf, stream),
        dtype: t.elem,
        shape: t.shape.clone(),
        strides,
    };
    Ok(DeviceTensor { buf, arg, pad })
}

/// An output of `shape`, every element (padding too) set to the poison value of `elem`.
pub fn alloc_poisoned(
    stream: &Arc<CudaStream>,
    name: &str,
    elem: ElemType,
    shape: &[usize],
    pad: usize,
) -> Result<DeviceTensor, GpuError> {
    let p = HostTensor::poisoned(elem, shape);
    let nan = crate::hostdata::HostTensor::poisoned(elem, &[1]).get(0);
    upload(stream, name, &p, pad, nan)
}

impl DeviceTensor {
    /// Downloads the logical elements (padding dropped).
    pub fn download(&self, stream: &Arc<CudaStream>) -> Result<HostTensor, GpuError> {
        let host = stream.clone_dtoh(&self.buf).map_err(drv("cuMemcpyDtoH"))?;
        let es = self.arg.dtype.size();
        let n: usize = self.arg.shape.iter().product();
        let data = if self.pad == 0 {
            host[..n * es].to_vec()
        } else {
            let d = *self
                .arg
                .shape
                .last()
                .expect("padded tensors have rank >= 2");
            host.chunks_exact((d + self.pad) * es)
                .take(n / d.max(1))
                .flat_map(|row| row[..d * es].iter().copied())
                .collect()
        };
        Ok(HostTensor {
            elem: self.arg.dtype,
            shape: self.arg.shape.clone(),
            data,
        })
    }

    /// Writes `t` (same shape) into the buffer again, padded as it was uploaded.
    pub fn restore(&mut self, stream: &Arc<CudaStream>, t: &HostTensor) -> Result<(), GpuError> {
        let (host, _, _) = host_layout(t, self.pad, JUNK);
        stream
            .memcpy_htod(&host, &mut self.buf)
            .map_err(drv("cuMemcpyHtoD"))
    }

    /// Sets every element (padding too) to the poison value of its type.
    pub fn poison(&mut self, stream: &Arc<CudaStream>) -> Result<(), GpuError> {
        let p = crate::hostdata::poison(self.arg.dtype);
        let n = self.buf.len() / p.len();
        let host: Vec<u8> = p.iter().copied().cycle().take(n * p.len()).collect();
        stream
            .memcpy_htod(&host, &mut self.buf)
            .map_err(drv("cuMemcpyHtoD"))
    }

    /// Bytes of the buffer.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }
}

/// The device tensors of one op call: inputs, poisoned outputs, and the workspace.
pub struct OpTensors {
    /// Inputs, in [`crate::ops::OpDef::inputs`] order.
    pub inputs: Vec<DeviceTensor>,
    /// Outputs, in [`crate::ops::OpDef::outputs`] order.
    pub outputs: Vec<DeviceTensor>,
    /// fp32 workspace (NaN-filled), if the launch needs one.
    pub workspace: Option<DeviceTensor>,
    /// Per output updated in place (see [`crate::ops::OpDef::in_place`]): the contents it
    /// starts with, restored instead of poison.
    initial: Vec<Option<HostTensor>>,
}

/// The value written into the padding of input rows: large enough that a kernel reading it
/// would be caught by the reference check.
const JUNK: f64 = 7.0;

impl OpTensors {
    /// Uploads `inputs` for `p` (storage-type rows padded by `pad` elements when `pad > 0`, so
    /// strides are not contiguous), allocates poisoned outputs (padded likewise) and a
    /// `workspace`-element fp32 workspace (none for 0).
    pub fn new(
        stream: &Arc<CudaStream>,
        def: &dyn crate::ops::OpDef,
        p: &crate::ops::Problem,
        workspace: usize,
        inputs: &[HostTensor],
        pad: usize,
    ) -> Result<OpTensors, GpuError> {
        let descs = def.inputs(p);
        let mut ins = Vec::with_capacity(inputs.len());
        for (d, t) in descs.iter().zip(inputs) {
            ins.push(upload(stream, d.name, t, pad, JUNK)?);
        }
        let mut outs = Vec::new();
        let mut initial = Vec::new();
        for (i, d) in def.outputs(p).into_iter().enumerate() {
            match def.in_place().iter().find(|(o, _)| *o == i) {
                Some(&(_, j)) => {
                    outs.push(upload(stream, d.name, &inputs[j], pad, JUNK)?);
                    initial.push(Some(inputs[j].clone()));
                }
                None => {
                    outs.push(alloc_poisoned(stream, d.name, d.elem, &d.shape, pad)?);
                    initial.push(None);
                }
            }
        }
        let workspace = if workspace > 0 {
            Some(alloc_poisoned(
                stream,
                "workspace",
                ElemType::F32,
                &[workspace],
                0,
            )?)
        } else {
            None
        };
        Ok(OpTensors {
            inputs: ins,
            outputs: outs,
            workspace,
            initial,
        })
    }

    /// The generic launch arguments of `p` on these tensors with `splits`.
    pub fn op_args(&self, p: &crate::ops::Problem, splits: usize) -> crate::ops::OpArgs {
        let tensors = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .map(|t| t.arg.clone())
            .collect();
        let ws = self.workspace.as_ref().map(|w| (w.arg.ptr, w.arg.shape[0]));
        p.op_args(tensors, splits, ws)
    }

    /// Makes the workspace at least `elems` fp32 elements (a kernel with more splits than the
    /// one the tensors were made for needs more).
    pub fn ensure_workspace(
        &mut self,
        stream: &Arc<CudaStream>,
        elems: usize,
    ) -> Result<(), GpuError> {
        let have = self.workspace.as_ref().map_or(0, |w| w.arg.shape[0]);
        if elems > have {
            self.workspace = Some(alloc_poisoned(
                stream,
                "workspace",
                ElemType::F32,
                &[elems],
                0,
            )?);
        }
        Ok(())
    }

    /// Poisons every output again (before a launch whose outputs will be read); outputs
    /// updated in place get their initial contents back instead.
    pub fn poison_outputs(&mut self, stream: &Arc<CudaStream>) -> Result<(), GpuError> {
        for (o, init) in self.outputs.iter_mut().zip(&self.initial) {
            match init {
                Some(t) => o.restore(stream, t)?,
                None => o.poison(stream)?,
            }
        }
        Ok(())
    }

    /// Downloads every output.
    pub fn download_outputs(&self, stream: &Arc<CudaStream>) -> Result<Vec<HostTensor>, GpuError> {
        self.outputs.iter().map(|o| o.download(stream)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_strides() {
        assert_eq!(padded_layout(&[2, 3, 4], 0), (vec![12, 4, 1], 24));
        assert_eq!(padded_layout(&[2, 3, 4], 8), (vec![36, 12, 1], 72));
        assert_eq!(padded_layout(&[5], 0), (vec![1], 5));
        // an empty batch still gets one (unused) row block, so no allocation is of size zero
        assert_eq!(padded_layout(&[0, 3, 4], 8).1, 36);
    }
}
