"""flasheva's ops as `torch.library` custom ops (``torch.ops.flasheva.*``), with fake
implementations so they trace under ``torch.compile`` without graph breaks, and autograd for
``prefill`` through the backward kernels.

Tensors use the contract's layouts (any strides, last dimension contiguous): ``q [B,N,H,D]``,
``k, v [B,N,Hkv,D]``, summaries ``[B,NC,Hkv,D]``, ``lse [B,H,N]`` (float32); decode's ring
``[B,W,Hkv,D]`` and ``lens [B]`` (int32); extend/append's ``start, count [B]`` (int32). Bad input
raises ``ValueError`` with the runtime's one-line message and launches nothing.

The kernels run through one :class:`flasheva.Runtime` per device (see :func:`configure`), in the
device's primary context (torch's), on ``torch.cuda.current_stream()``.
"""

from typing import Optional, Tuple

import torch

from . import _native

_DTYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "f16",
    torch.float32: "f32",
    torch.int32: "i32",
}
_RUNTIMES = {}
_SIZING = {}  # (runtime, spec, workload) -> fp32 workspace elements
_WORKSPACES = {}  # (device, stream) -> the fp32 workspace launches on that stream share
_OPTIONS = {"cache_dir": None, "compile_on_miss": True, "use_tuned": True}


def configure(cache_dir=None, compile_on_miss=True, use_tuned=True):
    """Sets the cache folder and options of the runtimes the ops use (default: the
    ``FLASHEVA_CACHE_DIR`` cache, compiling on a miss, tuned winners) and drops the current
    ones."""
    _OPTIONS.update(cache_dir=cache_dir, compile_on_miss=compile_on_miss, use_tuned=use_tuned)
    _RUNTIMES.clear()
    _SIZING.clear()
    _WORKSPACES.clear()


def runtime(device) -> "_native.Runtime":
    """The runtime of a CUDA device (created on first use)."""
    idx = torch.device(device).index
    if idx is None:
        idx = torch.cuda.current_device()
    rt = _RUNTIMES.get(idx)
    if rt is None:
        torch.cuda.init()  # the primary context exists before the runtime retains it
        rt = _native.Runtime(idx, **_OPTIONS)
        _RUNTIMES[idx] = rt
    return rt


def tune(spec, b, n, h, hkv, past=0, device=None, warmup=5, samples=20, space=None):
    """Tunes ``spec`` (see :func:`flasheva.spec`) for one workload on a device, as
    ``flasheva tune`` does, and records the winner in the cache; the ops use it from their next
    call. ``space``: the text of a search-spaces file (as ``flasheva tune --space`` reads;
    default: the builtin spaces). Returns ``(winner tile, winner ms, default ms)``."""
    dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    result = runtime(dev).tune(spec, b, n, h, hkv, past, warmup, samples, None, space)
    # the runtime remembers which workloads had no winner, and the sizes follow the winner:
    # start a fresh runtime and forget the sizes
    _RUNTIMES.pop(dev.index if dev.index is not None else torch.cuda.current_device(), None)
    _SIZING.clear()
    return result


def _describe(named):
    """(name, address, dtype, shape, strides) of each tensor, after checking they are CUDA
    tensors of one device with a supported dtype. (On every call: kept to cheap attribute reads,
    device numbers rather than device objects.)"""
    first_name, first = named[0]
    dev = first.get_device() if isinstance(first, torch.Tensor) and first.is_cuda else -2
    out = []
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_cuda or t.get_device() != dev:
            raise ValueError(
                f"tensor {name} is on {t.device}: flasheva runs on CUDA tensors of one device "
                f"({first_name} is on {first.device})"
            )
        dt = _DTYPES.get(t.dtype)
        if dt is None:
            raise ValueError(
                f"tensor {name} is {t.dtype}: accepted are bfloat16, float16 "
                "(and float32 lse, int32 lengths)"
            )
        out.append((name, t.data_ptr(), dt, t.shape, t.stride()))
    return out


def _storage(name, t):
    dt = _DTYPES.get(t.dtype)
    if dt not in ("bf16", "f16"):
        raise ValueError(f"tensor {name} is {t.dtype}: accepted are bfloat16 and float16")
    return dt


def _spec(op, x, chunk, window=None, local=None, group=None, name="q"):
    return {
        "op": op,
        "head_dim": int(x.shape[-1]),
        "chunk": int(chunk),
        "dtype": _storage(name, x),
        **({"window": int(window)} if window is not None else {}),
        **({"local": local} if local is not None else {}),
        **({"group": int(group)} if group is not None else {}),
    }


def _launch(spec, named, dev, b, n, h, hkv, past=0, summary_rows=None, scale=None,
            deterministic=False):
    """Launches `spec` on `named` (inputs then outputs) on the current stream, with a workspace
    when the op asks for one. `deterministic`: prefill_bwd without its atomic dQ mode."""
    descs = _describe(named)  # before anything touches the device
    rt = runtime(dev)
    # the workspace size depends on the kernel, the capacities and the mode only: asked once per
    # shape, not on every call (each asking resolves the kernel again); _spec builds the dict in
    # one order, so its values are a key
    key = (id(rt), tuple(spec.values()), b, n, h, hkv, past, summary_rows, deterministic)
    ws_elems = _SIZING.get(key)
    if ws_elems is None:
        ws_elems = _SIZING[key] = rt.sizing(spec, b, n, h, hkv, past, summary_rows,
                                            deterministic)[1]
    s = torch.cuda.current_stream(dev)
    ws = None
    if ws_elems > 0:
        if torch.cuda.is_current_stream_capturing():
            # a CUDA graph keeps the address: a buffer of the graph's own memory pool, which
            # lives as long as the graph (not the shared one below, which a later call may replace)
            buf = torch.empty(ws_elems, dtype=torch.float32, device=dev)
        else:
            # One workspace per (device, stream), grown when a call needs more: work on one
            # stream runs in order, so a launch never overlaps the previous one's use of it, and
            # a buffer that is replaced goes back to torch's allocator on the stream it was used on.
            wkey = (s.device_index, s.cuda_stream)
            buf = _WORKSPACES.get(wkey)
            if buf is None or buf.numel() < ws_elems:
                buf = _WORKSPACES[wkey] = torch.empty(ws_elems, dtype=torch.float32, device=dev)
        ws = (buf.data_ptr(), ws_elems)
    rt.launch(spec, descs, s.cuda_stream, b, n, h, hkv, past, summary_rows, scale, ws,
              deterministic)


def _vec(t):
    """``t``, or a contiguous copy unless its rows already allow 16-byte access (last stride 1,
    the others multiples of 16 bytes, a 16-byte aligned address), as the kernels of the backward
    ops need: gradients from autograd may come as views of any layout."""
    if not isinstance(t, torch.Tensor) or t.numel() == 0:
        return t
    per16 = max(16 // t.element_size(), 1)
    strides = t.stride()
    if (strides[-1] == 1 and all(st % per16 == 0 for st in strides[:-1])
            and t.data_ptr() % 16 == 0):
        return t
    # a fresh buffer: `contiguous()` returns a contiguous view at an odd address as it is
    return t.clone(memory_format=torch.contiguous_format)


def _dims4(name, t):
    if t.dim() != 4:
        raise ValueError(f"tensor {name} has shape {tuple(t.shape)}: expected 4 dimensions")


# ---------------------------------------------------------------------------------------------
# prefill and its backward


@torch.library.custom_op("flasheva::prefill", mutates_args=())
def prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ks: torch.Tensor,
    vs: torch.Tensor,
    window: int,
    chunk: int,
    local: str = "block",
    scale: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward attention over each query's local window and the earlier chunks' summaries:
    ``o [B,N,H,D]`` and ``lse [B,H,N]`` (float32, natural log)."""
    _dims4("q", q)
    b, n, h, _ = q.shape
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((b, h, n), dtype=torch.float32, device=q.device)
    spec = _spec("prefill", q, chunk, window, local)
    named = [("q", q), ("k", k), ("v", v), ("ks", ks), ("vs", vs), ("o", o), ("lse", lse)]
    _launch(spec, named, q.device, b, n, h, k.shape[2], scale=scale)
    return o, lse


@prefill.register_fake
def _(q, k, v, ks, vs, window, chunk, local="block", scale=None):
    b, n, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        (b, h, n), dtype=torch.float32
    )


@torch.library.custom_op("flasheva::prefill_bwd", mutates_args=())
def prefill_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ks: torch.Tensor,
    vs: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    window: int,
    chunk: int,
    local: str = "block",
    scale: Optional[float] = None,
    deterministic: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of prefill from ``do``: ``dq, dk, dv, dks, dvs`` (kv gradients summed over each
    group; summary rows at or past N/C zero). ``deterministic``: bitwise-reproducible gradients
    (no atomic dQ mode, which the two-warpgroup Hopper tiles at D = 128 otherwise run; faster,
    the last bits vary run to run); default: ``torch.are_deterministic_algorithms_enabled()``."""
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    b, n, h, _ = q.shape
    grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v, ks, vs)]
    spec = _spec("prefill_bwd", q, chunk, window, local)
    do = _vec(do)
    named = [("q", q), ("k", k), ("v", v), ("ks", ks), ("vs", vs), ("o", o), ("lse", lse),
             ("do", do)]
    named += list(zip(("dq", "dk", "dv", "dks", "dvs"), grads))
    _launch(spec, named, q.device, b, n, h, k.shape[2], summary_rows=ks.shape[1], scale=scale,
            deterministic=bool(deterministic))
    return tuple(grads)


@prefill_bwd.register_fake
def _(q, k, v, ks, vs, o, lse, do, window, chunk, local="block", scale=None, deterministic=None):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (q, k, v, ks, vs))


def _prefill_setup(ctx, inputs, output):
    q, k, v, ks, vs, window, chunk, local, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, ks, vs, o, lse)
    ctx.spec = (window, chunk, local, scale)
    ctx.mark_non_differentiable(lse)


def _prefill_backward(ctx, do, dlse):
    # Gradients flow through o; lse is returned for the caller's bookkeeping and marked
    # non-differentiable.
    q, k, v, ks, vs, o, lse = ctx.saved_tensors
    window, chunk, local, scale = ctx.spec
    dq, dk, dv, dks, dvs = prefill_bwd(q, k, v, ks, vs, o, lse, do, window, chunk, local, scale)
    return dq, dk, dv, dks, dvs, None, None, None, None


prefill.register_autograd(_prefill_backward, setup_context=_prefill_setup)


# ---------------------------------------------------------------------------------------------
# serving: decode, extend, append


@torch.library.custom_op("flasheva::decode", mutates_args=())
def decode(
    q: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    ks: torch.Tensor,
    vs: torch.Tensor,
    lens: torch.Tensor,
    chunk: int,
    local: str = "block",
    scale: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One query per sequence ``q [B,H,D]`` at position ``lens[b] - 1`` against the ring
    ``[B,W,Hkv,D]`` (W its second dimension; the new token's k, v already in it) and the
    summaries ``[B,MAXNC,Hkv,D]``: ``o [B,H,D]``, ``lse [B,H]``."""
    b, h, w, hkv, o, lse = _decode_outputs(q, "k_ring", k_ring)
    spec = _spec("decode", q, chunk, w, local, h // hkv)
    named = [("q", q), ("k_ring", k_ring), ("v_ring", v_ring), ("ks", ks), ("vs", vs),
             ("len", lens), ("o", o), ("lse", lse)]
    maxnc = ks.shape[1]
    _launch(spec, named, q.device, b, maxnc * chunk, h, hkv, summary_rows=maxnc, scale=scale)
    return o, lse


@decode.register_fake
def _(q, k_ring, v_ring, ks, vs, lens, chunk, local="block", scale=None):
    return _decode_fake(q)


def _decode_outputs(q, ring_name, ring):
    """decode and decode_paged: q's and the ring's (or ring pool's) shapes checked, and the
    outputs: ``(B, H, W, Hkv, o [B,H,D], lse [B,H])``."""
    if q.dim() != 3:
        raise ValueError(f"tensor q has shape {tuple(q.shape)}: expected [B, H, D]")
    _dims4(ring_name, ring)
    b, h, _ = q.shape
    w, hkv = ring.shape[1], ring.shape[2]
    if hkv == 0 or h % hkv:
        raise ValueError(f"q has {h} heads, not a multiple of {ring_name}'s {hkv} kv heads")
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((b, h), dtype=torch.float32, device=q.device)
    return b, h, w, hkv, o, lse


def _decode_fake(q):
    b, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        (b, h), dtype=torch.float32
    )


@torch.library.custom_op("flasheva::extend", mutates_args=())
def extend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    ks: torch.Tensor,
    vs: torch.Tensor,
    start: torch.Tensor,
    count: torch.Tensor,
    chunk: int,
    local: str = "block",
    scale: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``count[b]`` new tokens per sequence after ``start[b]`` cached ones: ``q [B,Tmax,H,D]``,
    new ``k, v [B,Tmax,Hkv,D]``, the ring (tokens before start, the new ones not yet in it) and
    the summaries of every chunk complete by the last new token; ``o [B,Tmax,H,D]`` and
    ``lse [B,H,Tmax]``, row t equal to prefill's row start+t; rows past count not written."""
    _dims4("q", q)
    _dims4("k_ring", k_ring)
    b, tmax, h, _ = q.shape
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((b, h, tmax), dtype=torch.float32, device=q.device)
    spec = _spec("extend", q, chunk, k_ring.shape[1], local)
    named = [("q", q), ("k", k), ("v", v), ("k_ring", k_ring), ("v_ring", v_ring), ("ks", ks),
             ("vs", vs), ("start", start), ("count", count), ("o", o), ("lse", lse)]
    _launch(spec, named, q.device, b, tmax, h, k.shape[2], summary_rows=ks.shape[1], scale=scale)
    return o, lse


@extend.register_fake
def _(q, k, v, k_ring, v_ring, ks, vs, start, count, chunk, local="block", scale=None):
    b, tmax, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        (b, h, tmax), dtype=torch.float32
    )


@torch.library.custom_op("flasheva::append", mutates_args=("k_ring", "v_ring"))
def append(
    k: torch.Tensor,
    v: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    start: torch.Tensor,
    count: torch.Tensor,
    chunk: int,
) -> None:
    """Writes the last ``min(count[b], W)`` new tokens ``k, v [B,Tmax,Hkv,D]`` (positions
    ``start[b] + t``) into the rings ``[B,W,Hkv,D]`` in place, at slot position mod W."""
    _dims4("k", k)
    _dims4("k_ring", k_ring)
    b, tmax, hkv, _ = k.shape
    spec = _spec("append", k, chunk, k_ring.shape[1], name="k")
    named = [("k", k), ("v", v), ("k_ring", k_ring), ("v_ring", v_ring), ("start", start),
             ("count", count), ("k_ring", k_ring), ("v_ring", v_ring)]
    _launch(spec, named, k.device, b, tmax, hkv, hkv)


@append.register_fake
def _(k, v, k_ring, v_ring, start, count, chunk):
    return None


# ---------------------------------------------------------------------------------------------
# chunk ops


@torch.library.custom_op("flasheva::chunk_mean", mutates_args=())
def chunk_mean(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """The mean of every complete chunk: ``x [B,N,G,D] -> [B,N//C,G,D]``."""
    _dims4("x", x)
    b, n, g, d = x.shape
    out = x.new_empty((b, n // chunk, g, d))
    spec = _spec("chunk_mean", x, chunk, name="x")
    _launch(spec, [("x", x), ("xbar", out)], x.device, b, n, g, g)
    return out


@chunk_mean.register_fake
def _(x, chunk):
    b, n, g, d = x.shape
    return x.new_empty((b, n // chunk, g, d))


@torch.library.custom_op("flasheva::chunk_summarize", mutates_args=())
def chunk_summarize(
    k: torch.Tensor,
    v: torch.Tensor,
    omega: torch.Tensor,
    chunk: int,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """The softmax-weighted summary value of every complete chunk: ``vs`` shaped like
    ``omega [B,NC,Hkv,D]`` (the kernel writes the first N/C rows; the others are zero)."""
    _dims4("k", k)
    b, n, hkv, _ = k.shape
    out = torch.zeros_like(omega, memory_format=torch.contiguous_format)
    spec = _spec("chunk_summarize", k, chunk, name="k")
    named = [("k", k), ("v", v), ("omega", omega), ("vs", out)]
    _launch(spec, named, k.device, b, n, hkv, hkv, summary_rows=omega.shape[1], scale=scale)
    return out


@chunk_summarize.register_fake
def _(k, v, omega, chunk, scale=None):
    return torch.zeros_like(omega, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------------------------
# the chunk ops' gradients (so the summaries train)


@torch.library.custom_op("flasheva::chunk_mean_bwd", mutates_args=())
def chunk_mean_bwd(dxbar: torch.Tensor, n: int, chunk: int) -> torch.Tensor:
    """Gradient of chunk_mean: ``dxbar [B,NC,G,D] -> dx [B,n,G,D]`` (``dxbar[c] / C`` on chunk
    c's tokens, zero on a trailing partial chunk)."""
    _dims4("dxbar", dxbar)
    b, _, g, d = dxbar.shape
    dx = dxbar.new_empty((b, n, g, d))
    spec = _spec("chunk_mean_bwd", dxbar, chunk, name="dxbar")
    dxbar = _vec(dxbar)
    _launch(spec, [("dxbar", dxbar), ("dx", dx)], dxbar.device, b, n, g, g,
            summary_rows=dxbar.shape[1])
    return dx


@chunk_mean_bwd.register_fake
def _(dxbar, n, chunk):
    b, _, g, d = dxbar.shape
    return dxbar.new_empty((b, n, g, d))


@torch.library.custom_op("flasheva::chunk_summarize_bwd", mutates_args=())
def chunk_summarize_bwd(
    k: torch.Tensor,
    v: torch.Tensor,
    omega: torch.Tensor,
    dvs: torch.Tensor,
    chunk: int,
    scale: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of chunk_summarize: ``dk, dv [B,N,Hkv,D]``, ``domega`` shaped like omega."""
    _dims4("k", k)
    b, n, hkv, _ = k.shape
    grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (k, v, omega)]
    spec = _spec("chunk_summarize_bwd", k, chunk, name="k")
    # the forward accepted any rows with a unit last stride; the backward reads 16 bytes at a time
    k, v, omega, dvs = (_vec(t) for t in (k, v, omega, dvs))
    named = [("k", k), ("v", v), ("omega", omega), ("dvs", dvs)]
    named += list(zip(("dk", "dv", "domega"), grads))
    _launch(spec, named, k.device, b, n, hkv, hkv, summary_rows=omega.shape[1], scale=scale)
    return tuple(grads)


@chunk_summarize_bwd.register_fake
def _(k, v, omega, dvs, chunk, scale=None):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (k, v, omega))


def _chunk_mean_setup(ctx, inputs, output):
    x, chunk = inputs
    ctx.n, ctx.chunk = x.shape[1], chunk


def _chunk_mean_backward(ctx, dxbar):
    return chunk_mean_bwd(dxbar, ctx.n, ctx.chunk), None


chunk_mean.register_autograd(_chunk_mean_backward, setup_context=_chunk_mean_setup)


def _chunk_summarize_setup(ctx, inputs, output):
    k, v, omega, chunk, scale = inputs
    ctx.save_for_backward(k, v, omega)
    ctx.chunk, ctx.scale = chunk, scale


def _chunk_summarize_backward(ctx, dvs):
    k, v, omega = ctx.saved_tensors
    dk, dv, domega = chunk_summarize_bwd(k, v, omega, dvs, ctx.chunk, ctx.scale)
    return dk, dv, domega, None, None


chunk_summarize.register_autograd(_chunk_summarize_backward, setup_context=_chunk_summarize_setup)


# ---------------------------------------------------------------------------------------------
# paged and indirect caches (the contract's item 7)


@torch.library.custom_op("flasheva::decode_paged", mutates_args=())
def decode_paged(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slot: torch.Tensor,
    ks_pages: torch.Tensor,
    vs_pages: torch.Tensor,
    page_table: torch.Tensor,
    lens: torch.Tensor,
    chunk: int,
    local: str = "block",
    scale: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """decode with the rings in a slot pool ``[S,W,Hkv,D]`` (``slot [B]``) and the summaries in
    a page pool ``[P,PAGE,Hkv,D]`` (``page_table [B,MAXP]``, int32): ``o [B,H,D]``,
    ``lse [B,H]``."""
    b, h, w, hkv, o, lse = _decode_outputs(q, "k_pool", k_pool)
    _dims4("ks_pages", ks_pages)
    spec = _spec("decode_paged", q, chunk, w, local, h // hkv)
    named = [("q", q), ("k_pool", k_pool), ("v_pool", v_pool), ("slot", slot),
             ("ks_pages", ks_pages), ("vs_pages", vs_pages), ("page_table", page_table),
             ("len", lens), ("o", o), ("lse", lse)]
    rows = page_table.shape[1] * ks_pages.shape[1]
    _launch(spec, named, q.device, b, rows * chunk, h, hkv, summary_rows=rows, scale=scale)
    return o, lse


@decode_paged.register_fake
def _(q, k_pool, v_pool, slot, ks_pages, vs_pages, page_table, lens, chunk, local="block",
      scale=None):
    return _decode_fake(q)


@torch.library.custom_op("flasheva::extend_paged", mutates_args=())
def extend_paged(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slot: torch.Tensor,
    ks_pages: torch.Tensor,
    vs_pages: torch.Tensor,
    page_table: torch.Tensor,
    start: torch.Tensor,
    count: torch.Tensor,
    chunk: int,
    local: str = "block",
    scale: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """extend with the rings in a slot pool and the summaries in a page pool (as
    :func:`decode_paged`): ``o [B,Tmax,H,D]``, ``lse [B,H,Tmax]``."""
    _dims4("q", q)
    _dims4("k_pool", k_pool)
    _dims4("ks_pages", ks_pages)
    b, tmax, h, _ = q.shape
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((b, h, tmax), dtype=torch.float32, device=q.device)
    spec = _spec("extend_paged", q, chunk, k_pool.shape[1], local)
    named = [("q", q), ("k", k), ("v", v), ("k_pool", k_pool), ("v_pool", v_pool),
             ("slot", slot), ("ks_pages", ks_pages), ("vs_pages", vs_pages),
             ("page_table", page_table), ("start", start), ("count", count), ("o", o),
             ("lse", lse)]
    rows = page_table.shape[1] * ks_pages.shape[1]
    _launch(spec, named, q.device, b, tmax, h, k.shape[2], summary_rows=rows, scale=scale)
    return o, lse


@extend_paged.register_fake
def _(q, k, v, k_pool, v_pool, slot, ks_pages, vs_pages, page_table, start, count, chunk,
      local="block", scale=None):
    b, tmax, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        (b, h, tmax), dtype=torch.float32
    )


@torch.library.custom_op("flasheva::append_paged", mutates_args=("k_pool", "v_pool"))
def append_paged(
    k: torch.Tensor,
    v: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slot: torch.Tensor,
    start: torch.Tensor,
    count: torch.Tensor,
    chunk: int,
) -> None:
    """append into a ring slot pool ``[S,W,Hkv,D]`` (sequence b's ring is pool row slot[b])."""
    _dims4("k", k)
    _dims4("k_pool", k_pool)
    b, tmax, hkv, _ = k.shape
    spec = _spec("append_paged", k, chunk, k_pool.shape[1], name="k")
    named = [("k", k), ("v", v), ("k_pool", k_pool), ("v_pool", v_pool), ("slot", slot),
             ("start", start), ("count", count), ("k_pool", k_pool), ("v_pool", v_pool)]
    _launch(spec, named, k.device, b, tmax, hkv, hkv)


@append_paged.register_fake
def _(k, v, k_pool, v_pool, slot, start, count, chunk):
    return None
