#!/usr/bin/env python3
"""Renders templates/prefill_sm90a.cu (the Hopper prefill kernel) outside the Rust toolchain.

jinja2 stands in for tera: the same custom delimiters (blocks <% %>, variables {{ }}, comments <# #>) and
`include` over templates/. The templates keep to the syntax both engines share.

  render.py --d 128 --w 512 --c 64 --mode block --dtype bf16 [--bn 128 --warps 12 --stages 2] -o k.cu
  render.py --set check  --outdir DIR   # every variant nvrtc_check.py compiles, plus DIR/manifest.tsv
  render.py --set device --outdir DIR   # the variants harness.cu tests and times, plus DIR/manifest.tsv
  render.py --probe-header --dtype bf16 -o hopper_probe.cuh   # common.cuh + hopper.cuh alone (probe.cu)

Manifests: --set check: name file D W C mode dtype block_m block_n warps stages smem_bytes; --set device:
kind key cufile defines kernel D W C mode dtype block_m block_n warps stages smem_bytes (harness.cu reads it;
kind sm90 = this template, base = today's templates/prefill.cu for comparison; defines = -D flags or "-").
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.normpath(os.path.join(HERE, "..", "..", "templates"))
TEMPLATE = "prefill_sm90a.cu"


def env():
    try:
        import jinja2
    except ImportError:
        sys.exit("render.py needs jinja2 (pip install jinja2)")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        block_start_string="<%",
        block_end_string="%>",
        variable_start_string="{{",
        variable_end_string="}}",
        comment_start_string="<#",
        comment_end_string="#>",
        keep_trailing_newline=True,
        autoescape=False,
        undefined=jinja2.StrictUndefined,
    )


class TeraBool:
    """A boolean that renders the way tera renders one ({{ x }} -> true / false) and tests like one (<% if x %>)."""

    def __init__(self, v):
        self.v = bool(v)

    def __bool__(self):
        return self.v

    def __str__(self):
        return "true" if self.v else "false"


class Variant:
    """One kernel: spec (D, W, C, mode, dtype) and tile (block_m, block_n, warps, stages)."""

    def __init__(self, d, w, c, mode, dtype, bn=None, warps=12, stages=None):
        assert mode in ("block", "sliding") and dtype in ("f16", "bf16")
        self.d, self.w, self.c, self.mode, self.dtype = d, w, c, mode, dtype
        self.warps = warps
        self.bm = 64 * (warps // 4 - 1)
        self.bn = bn if bn is not None else default_bn(d)
        self.stages = stages if stages is not None else default_stages(d, self.bm, self.bn)

    @property
    def tile_name(self):
        return f"m{self.bm}_n{self.bn}_w{self.warps}_s{self.stages}"

    @property
    def name(self):
        return (f"fe_prefill_sm90a_d{self.d}_w{self.w}_c{self.c}_{self.mode}_{self.dtype}_"
                f"{self.tile_name}")

    def smem_bytes(self):
        return smem_bytes(self.d, self.bm, self.bn, self.stages)

    def context(self):
        # The Rust RenderContext's fields (src/render/mod.rs) with this kernel's values; `pad`, `group`,
        # `head_tiles`, `decode_rows`, `warp_rows` are unused by this template.
        return {
            "name": self.name,
            "tile_name": self.tile_name,
            "dtype": self.dtype,
            "head_dim": self.d,
            "window": self.w,
            "chunk": self.c,
            "sliding": TeraBool(self.mode == "sliding"),
            "group": 1,
            "head_tiles": 1,
            "decode_rows": 16,
            "block_m": self.bm,
            "block_n": self.bn,
            "warps": self.warps,
            "warp_rows": self.bm // self.warps,
            "stages": self.stages,
            "pad": 0,
        }

    def render(self):
        return env().get_template(TEMPLATE).render(**self.context())

    def manifest_line(self, fname):
        return "\t".join(str(x) for x in (self.name, fname, self.d, self.w, self.c, self.mode, self.dtype, self.bm,
                                         self.bn, self.warps, self.stages, self.smem_bytes()))


def smem_bytes(d, bm, bn, stages):
    """Dynamic shared memory of a launch: 1024 (alignment slack) + (QBUF BM + 2 STAGES BN) D 2 + 8 (4 STAGES + 5),
    with two Q buffers (QBUF = 2) where that fits in 227 KiB, else one (the template's rule)."""
    def for_q(qbuf):
        return 1024 + (qbuf * bm + 2 * stages * bn) * d * 2 + 8 * (4 * stages + 5)
    return for_q(2) if for_q(2) <= 232448 else for_q(1)


SMEM_LIMIT = 232448  # 227 KiB, the most one block may have on sm_90


def default_bn(d):
    return 64 if d == 256 else 128


def default_stages(d, bm, bn):
    s = 2
    while smem_bytes(d, bm, bn, s + 1) <= SMEM_LIMIT and s < 4:
        s += 1
    return s


def check_set():
    """Every variant compiled by nvrtc_check.py."""
    out = []
    specs = [(128, 512, 64), (128, 128, 16), (64, 256, 16), (64, 128, 8), (256, 128, 32)]
    for d, w, c in specs:
        for mode in ("block", "sliding"):
            for dtype in ("bf16", "f16"):
                out.append(Variant(d, w, c, mode, dtype))
    # Tile options on the main spec (both dtypes where registers differ little: bf16 only).
    for mode in ("block", "sliding"):
        out.append(Variant(128, 512, 64, mode, "bf16", bn=128, stages=2))
        out.append(Variant(128, 512, 64, mode, "bf16", bn=64, stages=4))
        out.append(Variant(64, 256, 16, mode, "bf16", bn=64, stages=4))
        out.append(Variant(64, 256, 16, mode, "bf16", warps=16, bn=128, stages=3))
    return dedup(out)


def device_set():
    """The variants harness.cu checks (correctness grid) and times."""
    out = []
    for d, w, c in ((128, 512, 64), (64, 256, 16), (128, 64, 16), (256, 128, 32)):
        for mode in ("block", "sliding"):
            for dtype in ("bf16", "f16"):
                out.append(Variant(d, w, c, mode, dtype))
    # Tile options, correctness and timing on the main spec.
    for mode in ("block", "sliding"):
        out.append(Variant(128, 512, 64, mode, "bf16", bn=128, stages=2))
        out.append(Variant(128, 512, 64, mode, "bf16", bn=64, stages=4))
        out.append(Variant(64, 256, 16, mode, "bf16", warps=16, bn=128, stages=3))
    return dedup(out)


def dedup(vs):
    seen, out = set(), []
    for v in vs:
        if v.name not in seen:
            seen.add(v.name)
            out.append(v)
    return out


def write_set(vs, outdir):
    """Writes each variant's source and DIR/manifest.tsv (the check set: one line per kernel)."""
    os.makedirs(outdir, exist_ok=True)
    lines = []
    for v in vs:
        fname = v.name + ".cu"
        with open(os.path.join(outdir, fname), "w") as f:
            f.write(v.render())
        lines.append(v.manifest_line(fname))
    with open(os.path.join(outdir, "manifest.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


class Entry:
    """One line of the device manifest: a kernel (sm90: this template; base: today's templates/prefill.cu) and
    the -D flags it is compiled with."""

    def __init__(self, kind, key, kernel, spec, tile, smem, text, defines=()):
        self.kind, self.key, self.kernel, self.spec, self.tile = kind, key, kernel, spec, tile
        self.smem, self.text, self.defines = smem, text, list(defines)

    def line(self):
        d, w, c, mode, dtype = self.spec
        bm, bn, warps, stages = self.tile
        return "\t".join(str(x) for x in (self.kind, self.key, self.key + ".cu", ",".join(self.defines) or "-",
                                         self.kernel, d, w, c, mode, dtype, bm, bn, warps, stages, self.smem))


def baseline(d, w, c, mode, dtype, bm=128, bn=64, warps=8, stages=2, pad=8):
    """Today's mma.sync kernel (templates/prefill.cu) for comparison; None if it no longer renders."""
    name = f"fe_prefill_base_d{d}_w{w}_c{c}_{mode}_{dtype}_m{bm}_n{bn}_w{warps}_s{stages}"
    ctx = {"name": name, "tile_name": f"m{bm}_n{bn}_w{warps}_s{stages}", "dtype": dtype, "head_dim": d,
           "window": w, "chunk": c, "sliding": TeraBool(mode == "sliding"), "group": 1, "head_tiles": 1, "decode_rows": 16,
           "block_m": bm, "block_n": bn, "warps": warps, "warp_rows": bm // warps, "stages": stages, "pad": pad}
    try:
        text = env().get_template("prefill.cu").render(**ctx)
    except Exception as e:  # noqa: BLE001 (the baseline is optional)
        print(f"note: baseline {name} not rendered: {e}", file=sys.stderr)
        return None
    smem = (bm + 2 * stages * bn) * (d + pad) * 2
    return Entry("base", name, name, (d, w, c, mode, dtype), (bm, bn, warps, stages), smem, text)


def timed(v):
    return v.dtype == "bf16" and ((v.d, v.w, v.c) == (128, 512, 64) or (v.d, v.w, v.c, v.mode) == (64, 256, 16, "block"))


def device_entries():
    out = []
    for v in device_set():
        spec = (v.d, v.w, v.c, v.mode, v.dtype)
        tile = (v.bm, v.bn, v.warps, v.stages)
        text = v.render()
        out.append(Entry("sm90", v.name, v.name, spec, tile, v.smem_bytes(), text))
        if timed(v) and v.warps == 12 and v.bn == default_bn(v.d) and v.stages == (2 if v.d == 128 else 4):
            # The library's default tile (two Q buffers) with each tile-boundary option flipped (XOVER,
            # off by default: the next tile's first Q.K^T with the last P.V; OSTAGE, on: the output
            # staged in shared memory), and with pingpong on.
            for suffix, defs in (("_xo1", ["FE_XOVER=1"]), ("_os0", ["FE_OSTAGE=0"]),
                                 ("_xo1_os0", ["FE_XOVER=1", "FE_OSTAGE=0"]), ("_pp1", ["FE_PINGPONG=1"])):
                out.append(Entry("sm90", v.name + suffix, v.name, spec, tile, v.smem_bytes(), text, defs))
        if (v.d, v.w, v.c, v.mode, v.dtype, v.warps) == (64, 256, 16, "block", "bf16", 12) and v.bn == 128:
            # Diagnostic: without setmaxnreg (D=64 fits the 168 registers of the launch without spilling).
            out.append(Entry("sm90", v.name + "_nosmr", v.name, spec, tile, v.smem_bytes(), text,
                             ["FE_SETMAXNREG=0"]))
    for spec in ((128, 512, 64, "block", "bf16"), (128, 512, 64, "sliding", "bf16"), (64, 256, 16, "block", "bf16")):
        b = baseline(*spec)
        if b:
            out.append(b)
    return out


def write_device(outdir):
    """Writes each device entry's source and DIR/manifest.tsv in the columns harness.cu reads:
    kind key cufile defines kernel D W C mode dtype block_m block_n warps stages smem_bytes."""
    os.makedirs(outdir, exist_ok=True)
    es = device_entries()
    with open(os.path.join(outdir, "manifest.tsv"), "w") as f:
        f.write("# kind\tkey\tcufile\tdefines\tkernel\tD\tW\tC\tmode\tdtype\tblock_m\tblock_n\twarps\tstages\tsmem\n")
        for e in es:
            with open(os.path.join(outdir, e.key + ".cu"), "w") as g:
                g.write(e.text)
            f.write(e.line() + "\n")
    return es


def probe_header(dtype):
    src = '<% include "common.cuh" %>\n<% include "hopper.cuh" %>\n'
    # The spec values only define common.cuh's FE_ constants, which the probes do not use.
    return env().from_string(src).render(name="probe", dtype=dtype, head_dim=128, chunk=64, window=512,
                                         sliding=TeraBool(False))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--w", type=int, default=512)
    ap.add_argument("--c", type=int, default=64)
    ap.add_argument("--mode", choices=("block", "sliding"), default="block")
    ap.add_argument("--dtype", choices=("f16", "bf16"), default="bf16")
    ap.add_argument("--bn", type=int, default=None)
    ap.add_argument("--warps", type=int, default=12)
    ap.add_argument("--stages", type=int, default=None)
    ap.add_argument("-o", "--out", default="-")
    ap.add_argument("--set", choices=("check", "device"))
    ap.add_argument("--outdir")
    ap.add_argument("--probe-header", action="store_true")
    a = ap.parse_args()
    if a.set:
        if not a.outdir:
            ap.error("--set needs --outdir")
        if a.set == "check":
            n = len(write_set(check_set(), a.outdir))
        else:
            n = len(write_device(a.outdir))
        print(f"rendered {n} kernels into {a.outdir} (manifest.tsv)")
        return
    text = probe_header(a.dtype) if a.probe_header else Variant(a.d, a.w, a.c, a.mode, a.dtype, a.bn, a.warps,
                                                                  a.stages).render()
    if a.out == "-":
        sys.stdout.write(text)
    else:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
