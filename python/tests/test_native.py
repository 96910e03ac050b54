"""The native module without torch or a GPU: specs, argument checks (the runtime's one-line
messages, nothing launched), doctor, and a missing driver as an exception (run by CI)."""

import math

import pytest

import flasheva as fe


def desc(name, dtype, shape, ptr=0x10000):
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    return (name, ptr, dtype, list(shape), strides)


def prefill_call(n=100, h=4, hkv=2, d=128, nc=1):
    return [
        desc("q", "bf16", [1, n, h, d]),
        desc("k", "bf16", [1, n, hkv, d]),
        desc("v", "bf16", [1, n, hkv, d]),
        desc("ks", "bf16", [1, nc, hkv, d]),
        desc("vs", "bf16", [1, nc, hkv, d]),
        desc("o", "bf16", [1, n, h, d]),
        desc("lse", "f32", [1, h, n]),
    ]


SPEC = fe.spec("prefill", head_dim=128, chunk=64, dtype="bf16", window=512, local="block")


def test_spec_names_follow_the_library():
    assert fe.spec_name(SPEC) == "flasheva_prefill_d128_w512_c64_block_bf16"
    d = fe.spec("decode", head_dim=64, chunk=8, dtype="f16", window=128, local="sliding", group=4)
    assert fe.spec_name(d) == "flasheva_decode_d64_w128_c8_sliding_f16_g4"
    # fields an op does not use are dropped
    a = fe.spec("append", head_dim=64, chunk=8, dtype="bf16", window=128, local="sliding")
    assert fe.spec_name(a) == "flasheva_append_d64_w128_c8_bf16"


def test_a_bad_spec_is_a_value_error_naming_what_is_accepted():
    with pytest.raises(ValueError, match="accepted are 32, 64, 96, 128, 256"):
        fe.spec_name(fe.spec("prefill", head_dim=80, chunk=64, dtype="bf16", window=512))
    with pytest.raises(ValueError, match="op"):
        fe.spec_name(fe.spec("prefil", head_dim=64, chunk=64, dtype="bf16", window=512))


def test_check_accepts_a_valid_call_and_names_what_is_wrong():
    fe.check(SPEC, prefill_call())
    bad = prefill_call()
    bad[2] = desc("v", "f16", [1, 100, 2, 128])
    with pytest.raises(ValueError, match="tensor v is f16"):
        fe.check(SPEC, bad)
    bad = prefill_call()
    bad[1] = desc("k", "bf16", [1, 99, 2, 128])
    with pytest.raises(ValueError, match="k"):
        fe.check(SPEC, bad)
    # a last dimension that is not contiguous
    bad = prefill_call()
    name, ptr, dt, shape, strides = bad[0]
    bad[0] = (name, ptr, dt, shape, [s * 2 for s in strides])
    with pytest.raises(ValueError, match="contiguous"):
        fe.check(SPEC, bad)
    with pytest.raises(ValueError, match="arguments|tensors"):
        fe.check(SPEC, prefill_call()[:5])
    with pytest.raises(ValueError, match="accepted are bfloat16"):
        fe.check(SPEC, [desc("q", "f64", [1, 4, 4, 128])] + prefill_call()[1:])


def test_doctor_reports_what_this_machine_has():
    d = fe.doctor()
    assert d["version"] == fe.__version__
    assert d["artifact_version"].startswith(fe.__version__ + "+kernels.")
    assert "cache_dir" in d
    assert ("driver" in d) != ("driver_error" in d)
    assert ("nvrtc" in d) != ("nvrtc_error" in d)


def test_without_a_driver_the_runtime_is_an_exception_not_a_crash():
    if "driver" in fe.doctor():
        pytest.skip("this machine has a CUDA driver")
    with pytest.raises(RuntimeError, match="no CUDA driver"):
        fe.Runtime()
