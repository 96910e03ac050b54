"""NVRTC through ctypes, for the scripts that compile a kernel of their own for the GPU machine
(decode_timeline.py, cluster_probe.py): no nvcc, no torch extension, the same compiler and options
as flasheva. NVRTC is found where flasheva finds it: $FLASHEVA_NVRTC, /usr/local/cuda/lib64, or
scripts/with-nvrtc's data folder.
"""
import ctypes
import os
import sys

# flasheva's NVRTC options (src/compile/mod.rs), the arch aside
OPTIONS = ("--std=c++17", "--generate-line-info")


def check(rc, what):
    """Exits naming the call when a CUDA driver or NVRTC call returned an error."""
    if rc != 0:
        sys.exit(f"{os.path.basename(sys.argv[0])}: {what} failed with CUDA error {rc}")


def _library():
    dirs = [os.path.dirname(os.environ["FLASHEVA_NVRTC"])] if os.environ.get("FLASHEVA_NVRTC") else []
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    dirs += ["/usr/local/cuda/lib64", os.path.join(data, "flasheva/nvrtc/nvidia/cu13/lib")]
    for d in dirs:
        if os.path.exists(os.path.join(d, "libnvrtc.so.13")):
            # (its builtins first, found by name when NVRTC asks for them)
            ctypes.CDLL(os.path.join(d, "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(os.path.join(d, "libnvrtc.so.13"))
    sys.exit(f"{os.path.basename(sys.argv[0])}: no libnvrtc.so.13 in {dirs}")


def cubin(src, arch="sm_90a", options=OPTIONS):
    """`src` (str or bytes) compiled by NVRTC for `arch`: the cubin's bytes."""
    lib = _library()
    if isinstance(src, str):
        src = src.encode()
    prog = ctypes.c_void_p()
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"kernel.cu", 0, None, None), "nvrtcCreateProgram")
    opts = [f"--gpu-architecture={arch}".encode()] + [o.encode() for o in options]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    n = ctypes.c_size_t()
    if rc != 0:
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetProgramLog(prog, log)
        sys.exit(f"{os.path.basename(sys.argv[0])}: NVRTC failed:\n" + log.value.decode())
    check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(n)), "nvrtcGetCUBINSize")
    out = ctypes.create_string_buffer(n.value)
    check(lib.nvrtcGetCUBIN(prog, out), "nvrtcGetCUBIN")
    return out.raw
