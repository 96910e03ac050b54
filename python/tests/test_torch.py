"""The torch layer. Without a GPU: the ops are registered, their fake implementations give the
right shapes (what torch.compile traces with), and bad input (CPU tensors, wrong dtypes) raises
before anything is launched. On a GPU (FLASHEVA_REQUIRE_GPU=1 turns a missing one into a
failure): every op against a float64 torch reference, prefill's gradients against torch
autograd of a float64 EVA layer, and a small model using the ops compiled with
torch.compile(fullgraph=True)."""

import math
import os

import pytest

if os.environ.get("FLASHEVA_REQUIRE_GPU", "").lower() in ("1", "true", "yes", "on"):
    import torch  # the GPU run needs torch: a missing one is a failure, not a skip
else:
    torch = pytest.importorskip("torch")

import flasheva.ops  # noqa: E402,F401  (registers torch.ops.flasheva.*)

ops = torch.ops.flasheva
REQUIRE_GPU = os.environ.get("FLASHEVA_REQUIRE_GPU", "").lower() in ("1", "true", "yes", "on")


def need_gpu():
    if not torch.cuda.is_available():
        if REQUIRE_GPU:
            pytest.fail("FLASHEVA_REQUIRE_GPU is set but torch sees no CUDA device")
        pytest.skip("no CUDA device")


# ------------------------------------------------------------------------------- no GPU needed


def test_the_ops_are_registered():
    for name in ("prefill", "prefill_bwd", "decode", "extend", "append", "chunk_mean",
                 "chunk_summarize", "chunk_mean_bwd", "chunk_summarize_bwd", "decode_paged",
                 "extend_paged", "append_paged"):
        assert hasattr(ops, name), name


def test_fake_implementations_give_the_output_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        b, n, h, hkv, d, nc = 2, 100, 8, 2, 64, 7
        q = torch.empty(b, n, h, d, dtype=torch.bfloat16)
        k = torch.empty(b, n, hkv, d, dtype=torch.bfloat16)
        s = torch.empty(b, nc, hkv, d, dtype=torch.bfloat16)
        o, lse = ops.prefill(q, k, k, s, s, 64, 16, "block", None)
        assert o.shape == q.shape and lse.shape == (b, h, n) and lse.dtype == torch.float32
        grads = ops.prefill_bwd(q, k, k, s, s, o, lse, o, 64, 16, "block", None)
        assert [g.shape for g in grads] == [q.shape, k.shape, k.shape, s.shape, s.shape]
        qd = torch.empty(b, h, d, dtype=torch.bfloat16)
        ring = torch.empty(b, 64, hkv, d, dtype=torch.bfloat16)
        lens = torch.empty(b, dtype=torch.int32)
        o, lse = ops.decode(qd, ring, ring, s, s, lens, 16, "block", None)
        assert o.shape == qd.shape and lse.shape == (b, h)
        o, lse = ops.extend(q, k, k, ring, ring, s, s, lens, lens, 16, "sliding", None)
        assert o.shape == q.shape and lse.shape == (b, h, n)
        assert ops.chunk_mean(k, 16).shape == (b, n // 16, hkv, d)
        assert ops.chunk_summarize(k, k, s, 16, None).shape == s.shape
        pool = torch.empty(b + 2, 64, hkv, d, dtype=torch.bfloat16)
        pages = torch.empty(9, 4, hkv, d, dtype=torch.bfloat16)
        table = torch.empty(b, 3, dtype=torch.int32)
        o, lse = ops.decode_paged(qd, pool, pool, lens, pages, pages, table, lens, 16, "block",
                                  None)
        assert o.shape == qd.shape and lse.shape == (b, h)
        o, lse = ops.extend_paged(q, k, k, pool, pool, lens, pages, pages, table, lens, lens, 16,
                                  "sliding", None)
        assert o.shape == q.shape and lse.shape == (b, h, n)


def test_gradients_without_16_byte_rows_are_copied_not_refused():
    from flasheva.ops import _vec

    x = torch.zeros(2, 3, 4, 64, dtype=torch.bfloat16)
    assert _vec(x) is x
    rows65 = torch.zeros(2, 3, 4, 65, dtype=torch.bfloat16)[..., :64]  # row stride 65 elements
    assert _vec(rows65) is not rows65 and _vec(rows65).is_contiguous()
    off = torch.zeros(2 * 3 * 4 * 64 + 1, dtype=torch.bfloat16)[1:].view(2, 3, 4, 64)
    assert off.data_ptr() % 16 == 2 and _vec(off).data_ptr() % 16 == 0
    heads = torch.zeros(2, 4, 3, 64, dtype=torch.bfloat16).transpose(1, 2)  # strides multiple of 8
    assert _vec(heads) is heads


def test_cpu_tensors_are_refused_before_any_launch():
    q = torch.zeros(1, 16, 2, 64, dtype=torch.bfloat16)
    k = torch.zeros(1, 16, 2, 64, dtype=torch.bfloat16)
    s = torch.zeros(1, 1, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="flasheva runs on CUDA tensors"):
        ops.prefill(q, k, k, s, s, 16, 16, "block", None)
    with pytest.raises(ValueError, match="accepted are bfloat16"):
        ops.chunk_mean(torch.zeros(1, 16, 2, 64, dtype=torch.float64), 16)


# ------------------------------------------------------------------------------- on the GPU


def visible(n, w, c, local, device):
    """[N, N + N//C] mask of prefill's visible (query, key or summary) pairs."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    if local == "block":
        raw = (j // w == i // w) & (j <= i)
    else:
        raw = (j > i - w) & (j <= i)
    cs = torch.arange(n // c, device=device)[None, :]
    return torch.cat([raw, cs < (i // c)], dim=1)


def eva_reference(q, k, v, ks, vs, w, c, local, scale=None):
    """Float64 prefill over [K; Ks] with the EVA mask: o [B,N,H,D], lse [B,H,N]."""
    b, n, h, d = q.shape
    hkv = k.shape[2]
    g = h // hkv
    nc = n // c
    scale = scale or 1.0 / math.sqrt(d)
    kk = torch.cat([k, ks[:, :nc]], dim=1).double().repeat_interleave(g, dim=2)
    vv = torch.cat([v, vs[:, :nc]], dim=1).double().repeat_interleave(g, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q.double(), kk) * scale
    s = s.masked_fill(~visible(n, w, c, local, q.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.einsum("bhij,bjhd->bihd", torch.softmax(s, dim=-1), vv)
    return o, lse


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


TOL = {torch.bfloat16: 8e-3, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("local", ["block", "sliding"])
def test_prefill_matches_float64(dtype, local):
    need_gpu()
    torch.manual_seed(0)
    b, n, h, hkv, d, w, c = 2, 333, 8, 2, 128, 64, 16
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=dtype)  # noqa: E731
    q, k, v = mk(b, n, h, d), mk(b, n, hkv, d), mk(b, n, hkv, d)
    ks, vs = mk(b, n // c, hkv, d), mk(b, n // c, hkv, d)
    o, lse = ops.prefill(q, k, v, ks, vs, w, c, local, None)
    ro, rlse = eva_reference(q, k, v, ks, vs, w, c, local)
    assert rel(o, ro) < TOL[dtype]
    assert (lse.double() - rlse).abs().max().item() < 1e-2


def test_prefill_gradients_match_torch_autograd():
    need_gpu()
    torch.manual_seed(1)
    b, n, h, hkv, d, w, c = 1, 200, 4, 2, 64, 64, 16
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
    q, k, v = mk(b, n, h, d), mk(b, n, hkv, d), mk(b, n, hkv, d)
    ks, vs = mk(b, n // c, hkv, d), mk(b, n // c, hkv, d)
    o, _ = ops.prefill(q, k, v, ks, vs, w, c, "sliding", None)
    do = torch.randn_like(o)
    got = torch.autograd.grad(o, (q, k, v, ks, vs), do)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v, ks, vs)]
    ro, _ = eva_reference(*leaves, w, c, "sliding")
    want = torch.autograd.grad(ro, leaves, do.double())
    for name, g, r in zip(("dq", "dk", "dv", "dks", "dvs"), got, want):
        assert rel(g, r) < 3e-2, name


def test_decode_equals_the_last_prefill_row():
    need_gpu()
    torch.manual_seed(2)
    dt = torch.bfloat16
    b, n, h, hkv, d, w, c = 3, 300, 8, 2, 64, 64, 16
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=dt)  # noqa: E731
    q, k, v = mk(b, n, h, d), mk(b, n, hkv, d), mk(b, n, hkv, d)
    ks, vs = mk(b, n // c, hkv, d), mk(b, n // c, hkv, d)
    ring_k = torch.empty(b, w, hkv, d, device="cuda", dtype=dt)
    ring_v = torch.empty_like(ring_k)
    for t in range(n - w, n):
        ring_k[:, t % w], ring_v[:, t % w] = k[:, t], v[:, t]
    lens = torch.full((b,), n, dtype=torch.int32, device="cuda")
    o, lse = ops.decode(q[:, -1], ring_k, ring_v, ks, vs, lens, c, "sliding", None)
    ro, rlse = eva_reference(q, k, v, ks, vs, w, c, "sliding")
    assert rel(o, ro[:, -1]) < TOL[dt]
    assert (lse.double() - rlse[:, :, -1]).abs().max().item() < 1e-2


def test_extend_then_append_continue_the_sequence():
    need_gpu()
    torch.manual_seed(3)
    dt = torch.float16
    b, l0, t, h, hkv, d, w, c = 2, 150, 40, 4, 2, 64, 64, 16
    n = l0 + t
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=dt)  # noqa: E731
    q, k, v = mk(b, n, h, d), mk(b, n, hkv, d), mk(b, n, hkv, d)
    ks, vs = mk(b, n // c + 1, hkv, d), mk(b, n // c + 1, hkv, d)
    ring_k = torch.zeros(b, w, hkv, d, device="cuda", dtype=dt)
    ring_v = torch.zeros_like(ring_k)
    for p in range(l0 - w, l0):
        ring_k[:, p % w], ring_v[:, p % w] = k[:, p], v[:, p]
    start = torch.full((b,), l0, dtype=torch.int32, device="cuda")
    count = torch.full((b,), t, dtype=torch.int32, device="cuda")
    o, _ = ops.extend(q[:, l0:], k[:, l0:], v[:, l0:], ring_k, ring_v, ks, vs, start, count, c,
                      "block", None)
    ro, _ = eva_reference(q, k, v, ks, vs, w, c, "block")
    assert rel(o, ro[:, l0:]) < TOL[dt]
    ops.append(k[:, l0:], v[:, l0:], ring_k, ring_v, start, count, c)
    for p in range(n - w, n):
        assert torch.equal(ring_k[:, p % w], k[:, p]) and torch.equal(ring_v[:, p % w], v[:, p])


def test_chunk_ops_match_float64():
    need_gpu()
    torch.manual_seed(4)
    b, n, hkv, d, c = 2, 100, 3, 64, 16
    k = torch.randn(b, n, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    mean = ops.chunk_mean(k, c)
    want = k[:, : (n // c) * c].double().reshape(b, n // c, c, hkv, d).mean(dim=2)
    assert rel(mean, want) < 8e-3
    omega = torch.randn(b, n // c, hkv, d, device="cuda", dtype=torch.bfloat16)
    vs = ops.chunk_summarize(k, v, omega, c, None)
    kc = k[:, : (n // c) * c].double().reshape(b, n // c, c, hkv, d)
    vc = v[:, : (n // c) * c].double().reshape(b, n // c, c, hkv, d)
    s = (1.0 / math.sqrt(d)) * ((omega.double()[:, :, None] * kc).sum(-1) - 0.5 * (kc * kc).sum(-1))
    wv = torch.softmax(s, dim=2)[..., None] * vc
    assert rel(vs, wv.sum(dim=2)) < 8e-3


def test_a_model_using_the_ops_compiles_with_fullgraph():
    need_gpu()
    torch.manual_seed(5)

    class EvaAttention(torch.nn.Module):
        def __init__(self, dm=256, h=4, hkv=2, d=64, w=64, c=16):
            super().__init__()
            self.h, self.hkv, self.d, self.w, self.c = h, hkv, d, w, c
            self.wq = torch.nn.Linear(dm, h * d, bias=False)
            self.wk = torch.nn.Linear(dm, hkv * d, bias=False)
            self.wv = torch.nn.Linear(dm, hkv * d, bias=False)
            self.pk = torch.nn.Linear(d, d, bias=False)
            self.pw = torch.nn.Linear(d, d, bias=False)
            self.wo = torch.nn.Linear(h * d, dm, bias=False)

        def forward(self, x):
            b, n, _ = x.shape
            q = self.wq(x).view(b, n, self.h, self.d)
            k = self.wk(x).view(b, n, self.hkv, self.d)
            v = self.wv(x).view(b, n, self.hkv, self.d)
            kbar = torch.ops.flasheva.chunk_mean(k, self.c)
            ks, omega = self.pk(kbar), self.pw(kbar)
            vs = torch.ops.flasheva.chunk_summarize(k, v, omega, self.c, None)
            o, _ = torch.ops.flasheva.prefill(q, k, v, ks, vs, self.w, self.c, "block", None)
            return self.wo(o.reshape(b, n, self.h * self.d))

    m = EvaAttention().cuda().to(torch.bfloat16)
    x = torch.randn(2, 256, 256, device="cuda", dtype=torch.bfloat16)
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True)(x)
    assert rel(compiled, eager) < 1e-2


# ------------------------------------------------------------------------------- flasheva.nn


def test_the_module_traces_prefill_extend_and_decode_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from flasheva.nn import EvaAttention

    m = EvaAttention(64, heads=4, kv_heads=2, head_dim=32, window=16, chunk=4)
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(2, 37, 64)
        assert m(x).shape == x.shape
        cache = m.new_cache(2, 100, device=x.device)
        assert m(torch.empty(2, 37, 64), cache).shape == (2, 37, 64)  # extend from empty
        assert m(torch.empty(2, 1, 64), cache).shape == (2, 1, 64)  # decode
        assert cache.length == 38


def test_the_module_decodes_what_its_prefill_computes():
    need_gpu()
    from flasheva.nn import EvaAttention, full_kv_bytes

    torch.manual_seed(6)
    dt = torch.bfloat16
    m = EvaAttention(256, heads=8, kv_heads=2, head_dim=64, window=64, chunk=16).cuda().to(dt)
    x = torch.randn(2, 200, 256, device="cuda", dtype=dt)
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(2, 256, dt, x.device)
        pieces = [m(x[:, :77], cache)]  # a prompt (extend from an empty cache)
        pieces.append(m(x[:, 77:90], cache))  # a chunk of new tokens
        for t in range(90, 200):  # then one token at a time
            pieces.append(m(x[:, t:t + 1], cache))
    stepped = torch.cat(pieces, dim=1)
    assert rel(stepped, full) < 2e-2
    assert cache.bytes() < full_kv_bytes(2, 200, 2, 64, dt)


def test_tune_records_a_winner_the_ops_then_use():
    need_gpu()
    import flasheva

    spec = flasheva.spec("chunk_mean", head_dim=64, chunk=16, dtype="bf16")
    winner, ms, default_ms = flasheva.ops.tune(spec, 2, 4096, 8, 8, samples=3)
    assert winner and ms > 0 and default_ms > 0
    x = torch.randn(2, 4096, 8, 64, device="cuda", dtype=torch.bfloat16)
    want = x.double().reshape(2, 256, 16, 8, 64).mean(dim=2)
    assert rel(ops.chunk_mean(x, 16), want) < 8e-3


def test_paged_decode_equals_contiguous_decode():
    need_gpu()
    torch.manual_seed(7)
    dt = torch.bfloat16
    b, h, hkv, d, w, c, page = 3, 8, 2, 64, 64, 16, 4
    lens = torch.tensor([1, 100, 300], dtype=torch.int32, device="cuda")
    maxnc = 300 // c + 1
    maxp = -(-maxnc // page)
    q = torch.randn(b, h, d, device="cuda", dtype=dt)
    kr, vr = torch.randn(b, w, hkv, d, device="cuda", dtype=dt), torch.randn(b, w, hkv, d, device="cuda", dtype=dt)
    ks, vs = (torch.randn(b, maxp * page, hkv, d, device="cuda", dtype=dt) for _ in range(2))
    want, want_lse = ops.decode(q, kr, vr, ks, vs, lens, c, "sliding", None)
    slot = torch.tensor([4, 0, 2], dtype=torch.int32, device="cuda")
    k_pool = torch.randn(5, w, hkv, d, device="cuda", dtype=dt) * 9
    v_pool = torch.randn_like(k_pool) * 9
    k_pool[slot.long()], v_pool[slot.long()] = kr, vr
    perm = torch.randperm(b * maxp + 2, device="cuda")[: b * maxp].view(b, maxp).int()
    ks_pages = torch.randn(b * maxp + 2, page, hkv, d, device="cuda", dtype=dt) * 9
    vs_pages = torch.randn_like(ks_pages) * 9
    for bi in range(b):
        for p in range(maxp):
            ks_pages[perm[bi, p]] = ks[bi, p * page:(p + 1) * page]
            vs_pages[perm[bi, p]] = vs[bi, p * page:(p + 1) * page]
    o, lse = ops.decode_paged(q, k_pool, v_pool, slot, ks_pages, vs_pages, perm, lens, c,
                              "sliding", None)
    assert rel(o, want) < 1e-2
    assert (lse - want_lse).abs().max().item() < 1e-2


W8_ONLY = """
[prefill_bwd]
engine = ["wgmma"]
block_m = [64]
block_n = [128]
warps = [8]
stages = [2]
"""


def test_the_backward_is_deterministic_when_asked_or_when_torch_is():
    need_gpu()
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the atomic dQ mode is the sm_90a wgmma backward's")
    import flasheva

    # The two-warpgroup tile (atomic dQ unless deterministic) won this spec's tune by 16-19 % in
    # four runs on the H200 (docs/VALIDATION.md, runs 41-43): tune over it and the default.
    b, n, h, d, w, c = 1, 65536, 16, 128, 1024, 64
    spec = flasheva.spec("prefill_bwd", head_dim=d, chunk=c, dtype="bf16", window=w, local="block")
    winner, _, _ = flasheva.ops.tune(spec, b, n, h, h, samples=3, space=W8_ONLY)
    assert winner == "wg_m64_n128_w8_s2", winner
    rt = flasheva.ops.runtime(torch.device("cuda"))
    det_ws = rt.sizing(spec, b, n, h, h, 0, n // c, True)[1]
    atomic_ws = rt.sizing(spec, b, n, h, h, 0, n // c, False)[1]
    assert atomic_ws - det_ws == b * h * n * d  # the fp32 dQ accumulator (N a multiple of 64)

    torch.manual_seed(3)
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    q, k, v = mk(b, n, h, d), mk(b, n, h, d), mk(b, n, h, d)
    ks, vs = mk(b, n // c, h, d), mk(b, n // c, h, d)
    o, lse = ops.prefill(q, k, v, ks, vs, w, c, "block", None)
    do = torch.randn_like(o)
    args = (q, k, v, ks, vs, o, lse, do, w, c, "block", None)
    det = ops.prefill_bwd(*args, True)
    again = ops.prefill_bwd(*args, True)
    for name, x, y in zip(("dq", "dk", "dv", "dks", "dvs"), det, again):
        assert torch.equal(x, y), name
    fast = ops.prefill_bwd(*args, False)
    for name, x, y in zip(("dq", "dk", "dv", "dks", "dvs"), fast, det):
        assert rel(x, y.double()) < 1e-2, name
    # by default the op follows torch's switch
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        followed = ops.prefill_bwd(*args)
    finally:
        torch.use_deterministic_algorithms(was)
    for name, x, y in zip(("dq", "dk", "dv", "dks", "dvs"), followed, det):
        assert torch.equal(x, y), name
