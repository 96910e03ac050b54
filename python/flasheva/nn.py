"""An EVA attention layer around flasheva's kernels, usable as the attention of a small decoder.

Training and prefill run the whole sequence: keys' chunk means (``chunk_mean``) go through two
learned projections, ``ks = pk(mean)`` and ``omega = pw(mean)``; ``chunk_summarize`` gives each
chunk's summary value, and ``prefill`` attends over each query's local window and the earlier
chunks' summaries (autograd through the backward kernels). Serving keeps an :class:`EvaCache`
per layer (a ring of the last W keys/values and one summary per completed chunk: W + N/C rows
instead of N) and steps it with new tokens: ``extend`` for several tokens, ``decode`` for one,
``append`` to write them into the ring, and the summaries of the chunks they complete. Every
sequence of a batch has the same length here (a serving engine with ragged batches calls the
ops directly, see examples/serving.rs).
"""

from typing import Optional

import torch

from . import ops  # noqa: F401  (registers torch.ops.flasheva.*)

_fe = torch.ops.flasheva


class EvaCache:
    """One layer's cache for a batch of equally long sequences: ``k_ring, v_ring [B,W,Hkv,D]``,
    ``ks, vs [B,MAXNC,Hkv,D]`` and the length (tokens seen)."""

    def __init__(self, batch, window, chunk, kv_heads, head_dim, max_len, dtype, device):
        self.window, self.chunk = window, chunk
        ring = (batch, window, kv_heads, head_dim)
        self.k_ring = torch.zeros(ring, dtype=dtype, device=device)
        self.v_ring = torch.zeros(ring, dtype=dtype, device=device)
        rows = max_len // chunk + 1
        self.ks = torch.zeros((batch, rows, kv_heads, head_dim), dtype=dtype, device=device)
        self.vs = torch.zeros_like(self.ks)
        self.length = 0

    def bytes(self):
        """Bytes the cache holds now (ring and the summaries in use)."""
        used = self.length // self.chunk
        per_row = self.k_ring[0, 0].numel() * self.k_ring.element_size()
        b = self.k_ring.shape[0]
        return 2 * b * per_row * (self.window + used)


class EvaAttention(torch.nn.Module):
    """EVA attention with flasheva kernels: ``heads`` query heads over ``kv_heads`` key/value
    heads of ``head_dim``, local ``window`` (``local``: "block" or "sliding") and summary
    ``chunk``."""

    def __init__(self, dim, heads, kv_heads, head_dim, window, chunk, local="block",
                 scale: Optional[float] = None, kernel_dtype=torch.bfloat16):
        super().__init__()
        if heads % kv_heads:
            raise ValueError(f"heads {heads} must be a multiple of kv_heads {kv_heads}")
        if window % chunk:
            raise ValueError(f"window {window} must be a multiple of chunk {chunk}")
        self.h, self.hkv, self.d = heads, kv_heads, head_dim
        self.window, self.chunk, self.local, self.scale = window, chunk, local, scale
        # the kernels take bfloat16 or float16: float32 weights and activations (training with
        # float32 master weights) are cast to this for them, and the output back
        self.kernel_dtype = kernel_dtype
        self.wq = torch.nn.Linear(dim, heads * head_dim, bias=False)
        self.wk = torch.nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.wv = torch.nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.wo = torch.nn.Linear(heads * head_dim, dim, bias=False)
        self.pk = torch.nn.Linear(head_dim, head_dim, bias=False)
        self.pw = torch.nn.Linear(head_dim, head_dim, bias=False)

    def _kd(self, x):
        """``x`` in a dtype the kernels take."""
        return x if x.dtype in (torch.bfloat16, torch.float16) else x.to(self.kernel_dtype)

    def _qkv(self, x):
        b, n, _ = x.shape
        q = self._kd(self.wq(x)).view(b, n, self.h, self.d)
        k = self._kd(self.wk(x)).view(b, n, self.hkv, self.d)
        v = self._kd(self.wv(x)).view(b, n, self.hkv, self.d)
        return q, k, v

    def _summaries(self, k, v):
        """Summary keys and values of every complete chunk of ``k, v [B,N,Hkv,D]``."""
        kbar = _fe.chunk_mean(k, self.chunk).to(self.pk.weight.dtype)
        ks, omega = self._kd(self.pk(kbar)), self._kd(self.pw(kbar))
        vs = _fe.chunk_summarize(k, v, omega, self.chunk, self.scale)
        return ks, vs

    def forward(self, x, cache: Optional[EvaCache] = None):
        """``x [B,N,dim]``. Without a cache: attention over the whole sequence (training,
        prefill). With one: the next ``N`` tokens of the cached sequences (N = 1 decodes)."""
        if cache is None:
            q, k, v = self._qkv(x)
            ks, vs = self._summaries(k, v)
            o, _ = _fe.prefill(q, k, v, ks, vs, self.window, self.chunk, self.local, self.scale)
            o = o.to(self.wo.weight.dtype)
            return self.wo(o.reshape(x.shape[0], x.shape[1], self.h * self.d))
        return self.step(x, cache)

    def new_cache(self, batch, max_len, dtype=None, device=None):
        """An empty cache for ``batch`` sequences of up to ``max_len`` tokens (storage: the
        kernels' dtype unless given)."""
        dtype = dtype or self.kernel_dtype
        device = device or self.wq.weight.device
        return EvaCache(batch, self.window, self.chunk, self.hkv, self.d, max_len, dtype, device)

    @torch.no_grad()
    def step(self, x, cache: EvaCache):
        """The next ``T = x.shape[1]`` tokens of every sequence in ``cache``."""
        b, t, _ = x.shape
        q, k, v = self._qkv(x)
        l0, c, w = cache.length, self.chunk, self.window
        dev = x.device
        # summaries of the chunks the new tokens complete, before attention
        for ci in range(l0 // c, (l0 + t) // c):
            lo = ci * c
            parts_k, parts_v = [], []
            for p in range(lo, lo + c):
                if p < l0:
                    parts_k.append(cache.k_ring[:, p % w])
                    parts_v.append(cache.v_ring[:, p % w])
                else:
                    parts_k.append(k[:, p - l0])
                    parts_v.append(v[:, p - l0])
            kc = torch.stack(parts_k, dim=1).contiguous()
            vc = torch.stack(parts_v, dim=1).contiguous()
            ks, vs = self._summaries(kc, vc)
            cache.ks[:, ci] = ks[:, 0]
            cache.vs[:, ci] = vs[:, 0]
        start = torch.full((b,), l0, dtype=torch.int32, device=dev)
        count = torch.full((b,), t, dtype=torch.int32, device=dev)
        if t == 1:
            _fe.append(k, v, cache.k_ring, cache.v_ring, start, count, c)
            lens = torch.full((b,), l0 + 1, dtype=torch.int32, device=dev)
            o, _ = _fe.decode(q[:, 0], cache.k_ring, cache.v_ring, cache.ks, cache.vs, lens, c,
                              self.local, self.scale)
            o = o[:, None]
        else:
            o, _ = _fe.extend(q, k, v, cache.k_ring, cache.v_ring, cache.ks, cache.vs, start,
                              count, c, self.local, self.scale)
            _fe.append(k, v, cache.k_ring, cache.v_ring, start, count, c)
        cache.length = l0 + t
        return self.wo(o.to(self.wo.weight.dtype).reshape(b, t, self.h * self.d))


def full_kv_bytes(batch, length, kv_heads, head_dim, dtype):
    """Bytes of a full KV cache of ``length`` tokens (what SDPA decoding would keep)."""
    return 2 * batch * length * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


__all__ = ["EvaAttention", "EvaCache", "full_kv_bytes"]
