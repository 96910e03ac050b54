"""Numpy-backed stand-ins for the tensors Triton's interpreter expects (TRITON_INTERPRET=1)."""
import numpy as np
import triton.language as tl

class _Storage:
    def __init__(self, buf):
        self.buf = buf  # a 1-d uint8 numpy array owning the bytes
    def data_ptr(self):
        return self.buf.ctypes.data
    def cpu(self):
        return self
    def copy_(self, other):
        if other is not self:
            self.buf[:] = other.buf

class NpTensor:
    """A strided view (in elements) of a byte buffer, typed with a Triton dtype."""
    def __init__(self, storage, dtype, offset, size, stride):
        self.storage, self.dtype = storage, dtype
        self._offset, self._size, self._stride = offset, tuple(size), tuple(stride)
        self.device = "cpu"
    @property
    def shape(self):
        return self._size
    def element_size(self):
        return self.dtype.primitive_bitwidth // 8
    def data_ptr(self):
        return self.storage.data_ptr() + self._offset * self.element_size()
    def untyped_storage(self):
        return self.storage
    def storage_offset(self):
        return self._offset
    def size(self):
        return self._size
    def stride(self, *args):
        return self._stride if not args else self._stride[args[0]]
    def new_empty(self, n, device="cpu"):
        return NpTensor(self.storage, self.dtype, 0, (0,), (1,))
    def set_(self, storage, offset, size, stride):
        self.storage, self._offset, self._size, self._stride = storage, offset, tuple(size), tuple(stride)
        return self
    def copy_(self, other):
        self.storage.copy_(other.storage)

def wrap(arr, dtype):
    """A contiguous NpTensor over numpy array `arr` (its bytes are shared)."""
    b = arr.reshape(-1).view(np.uint8)
    es = dtype.primitive_bitwidth // 8
    strides = [1]
    for s in reversed(arr.shape[1:]):
        strides.insert(0, strides[0] * s)
    return NpTensor(_Storage(b), dtype, 0, arr.shape, strides)
