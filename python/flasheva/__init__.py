"""flasheva: FlashEVA attention kernels on torch tensors.

The kernels, their cache, tuned winners and bundles are the Rust runtime's (the `flasheva` crate);
this package passes torch tensors to it by address, shape, strides and dtype, on torch's current
CUDA stream. `flasheva.ops` registers the ops as `torch.library` custom ops (importing it needs
torch); the runtime control below needs no torch.
"""

from . import _native
from ._native import Runtime, check, doctor, import_bundle, spec_name, version

__all__ = ["Runtime", "check", "doctor", "import_bundle", "spec_name", "version", "spec"]
__version__ = _native.version()


def spec(op, *, head_dim, chunk, dtype, window=None, local=None, group=None):
    """A spec as the runtime takes it (a dict); fields the op does not use are ignored."""
    d = {"op": op, "head_dim": int(head_dim), "chunk": int(chunk), "dtype": dtype}
    if window is not None:
        d["window"] = int(window)
    if local is not None:
        d["local"] = local
    if group is not None:
        d["group"] = int(group)
    return d
