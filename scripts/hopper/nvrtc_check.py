#!/usr/bin/env python3
"""Compiles every variant of templates/prefill_sm90a.cu with NVRTC alone, for sm_90a, and prints a table
of registers, spills, stack and shared memory per variant. Exits non-zero on a compile error, a spill, a
stack frame, an ignored setmaxnreg, or serialized wgmma.

  nvrtc_check.py [--nvrtc PATH/libnvrtc.so.13] [--cubin-dir DIR] [--sass] [--only SUBSTRING] [-j N]

NVRTC is looked up as: --nvrtc, $FLASHEVA_NVRTC, the flasheva NVRTC folder
(~/.local/share/flasheva/nvrtc/nvidia/cu13/lib), $CUDA_HOME and /usr/local/cuda, the nvidia-cuda-nvrtc
wheel, then the dynamic loader (libnvrtc.so.13).
--sass disassembles each cubin with cuobjdump ($CUOBJDUMP or PATH; it needs nvdisasm beside it) and counts
HGMMA, wgmma waits (WARPGROUP.DEPBAR: 4 when the wgmma are pipelined, about one per HGMMA when serialized),
setmaxnreg (USETMAXREG), TMA (UTMALDG) and local-memory (LDL/STL) instructions.
"""
import argparse
import concurrent.futures as cf
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the repo
sys.path.insert(0, HERE)
import render  # noqa: E402

OPTIONS = ["--gpu-architecture=sm_90a", "--std=c++17", "-Xptxas=-v"]


def find_nvrtc(explicit):
    cands = []
    if explicit:
        cands.append(explicit)
    if os.environ.get("FLASHEVA_NVRTC"):
        cands.append(os.environ["FLASHEVA_NVRTC"])
    cands.append(os.path.expanduser("~/.local/share/flasheva/nvrtc/nvidia/cu13/lib/libnvrtc.so.13"))
    for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if d:
            cands.append(os.path.join(d, "lib64", "libnvrtc.so.13"))
            cands.append(os.path.join(d, "targets", "x86_64-linux", "lib", "libnvrtc.so.13"))
    try:  # the nvidia-cuda-nvrtc wheel (e.g. beside PyTorch)
        import nvidia  # noqa: F401
        for base in getattr(nvidia, "__path__", []):
            cands.append(os.path.join(base, "cu13", "lib", "libnvrtc.so.13"))
    except ImportError:
        pass
    cands.append("libnvrtc.so.13")
    for c in cands:
        # NVRTC opens libnvrtc-builtins.so.13.x at compile time; preload the one beside it.
        d = os.path.dirname(c)
        if d:
            for b in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                if b.startswith("libnvrtc-builtins.so.13") and ".alt." not in b:
                    try:
                        ctypes.CDLL(os.path.join(d, b), mode=ctypes.RTLD_GLOBAL)
                    except OSError:
                        pass
        try:
            return ctypes.CDLL(c, mode=ctypes.RTLD_GLOBAL), c
        except OSError:
            continue
    sys.exit("nvrtc_check: libnvrtc.so.13 not found (give --nvrtc PATH)")


class Nvrtc:
    def __init__(self, lib):
        self.lib = lib
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(self, r, what):
        if r != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(r).decode()}")

    def compile(self, src, name, extra=()):
        prog = ctypes.c_void_p()
        self.check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None),
                   "nvrtcCreateProgram")
        opts = [o.encode() for o in OPTIONS + list(extra)]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        r = self.lib.nvrtcCompileProgram(prog, len(opts), arr)
        n = ctypes.c_size_t()
        self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        self.lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        cubin = None
        if r == 0:
            self.lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
            cb = ctypes.create_string_buffer(n.value)
            self.check(self.lib.nvrtcGetCUBIN(prog, cb), "nvrtcGetCUBIN")
            cubin = cb.raw
        self.lib.nvrtcDestroyProgram(ctypes.byref(prog))
        return r, log, cubin


def parse_log(log):
    info = {"regs": None, "spill_st": 0, "spill_ld": 0, "stack": 0, "smem_static": 0, "cmem": None,
            "warnings": []}
    m = re.search(r"Used (\d+) registers", log)
    if m:
        info["regs"] = int(m.group(1))
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        info["stack"], info["spill_st"], info["spill_ld"] = (int(x) for x in m.groups())
    m = re.search(r"Used \d+ registers, used \d+ barriers, (\d+) bytes smem", log) or \
        re.search(r"(\d+) bytes smem", log)
    if m:
        info["smem_static"] = int(m.group(1))
    for line in log.splitlines():
        low = line.lower()
        if "warning" in low or "advisory" in low or "performance" in low:
            info["warnings"].append(line.strip())
    return info


def sass_counts(cubin_path, tool):
    try:
        out = subprocess.run([tool, "--dump-sass", cubin_path], capture_output=True, text=True, timeout=120).stdout
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}
    return {
        "HGMMA": len(re.findall(r"\bHGMMA\b", out)),
        "USETMAXREG": len(re.findall(r"USETMAXREG", out)),
        "UTMALDG": len(re.findall(r"UTMALDG", out)),
        "LDL/STL": len(re.findall(r"\b(LDL|STL)\b", out)),
        "DEPBAR": len(re.findall(r"WARPGROUP\.DEPBAR", out)),
    }


def find_cuobjdump():
    for c in (os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"):
        if c and os.path.exists(c):
            return c
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nvrtc")
    ap.add_argument("--cubin-dir")
    ap.add_argument("--sass", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--log", help="write every NVRTC log to this file")
    ap.add_argument("-D", action="append", default=[], help="extra -D for every compile (e.g. FE_PINGPONG=0)")
    ap.add_argument("-j", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()

    lib, where = find_nvrtc(a.nvrtc)
    nv = Nvrtc(lib)
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"NVRTC {major.value}.{minor.value} ({where}); options: {' '.join(OPTIONS)}"
          + (" " + " ".join("-D" + d for d in a.D) if a.D else ""))
    tool = find_cuobjdump() if a.sass else None
    if a.sass and not tool:
        print("  (--sass: no cuobjdump found; set CUOBJDUMP)")
    cubin_dir = a.cubin_dir or tempfile.mkdtemp(prefix="fe_sm90a_")
    os.makedirs(cubin_dir, exist_ok=True)

    vs = [v for v in render.check_set() if a.only in v.name]

    def one(v):
        src = v.render()
        r, log, cubin = nv.compile(src, v.name + ".cu", ["-D" + d for d in a.D])
        res = {"v": v, "ok": r == 0, "log": log}
        res.update(parse_log(log))
        if cubin is not None:
            path = os.path.join(cubin_dir, v.name + ".cubin")
            with open(path, "wb") as f:
                f.write(cubin)
            res["cubin"] = path
            if tool:
                res["sass"] = sass_counts(path, tool)
        return res

    with cf.ThreadPoolExecutor(max_workers=max(1, a.j)) as ex:
        results = list(ex.map(one, vs))

    if a.log:
        with open(a.log, "w") as f:
            for r in results:
                f.write(f"==== {r['v'].name}\n{r['log']}\n")

    hdr = f"{'variant':<64} {'regs':>4} {'spill':>9} {'stack':>5} {'smem(dyn)':>9}  {'sass':<50} status"
    print(hdr)
    print("-" * len(hdr))
    bad = 0
    for r in results:
        v = r["v"]
        problems = []
        if not r["ok"]:
            problems.append("COMPILE ERROR")
        if r["spill_st"] or r["spill_ld"]:
            problems.append("SPILL")
        if r["stack"]:
            problems.append("STACK")
        for w in r["warnings"]:
            if "setmaxnreg" in w.lower() or "C7508" in w:
                problems.append("SETMAXNREG IGNORED")
            if "wgmma" in w.lower() and ("serializ" in w.lower() or "C7510" in w or "C7515" in w):
                problems.append("WGMMA SERIALIZED")
        s = r.get("sass")
        stxt = ""
        if s and "error" not in s:
            stxt = (f"HGMMA={s['HGMMA']} waits={s['DEPBAR']} SETMAXREG={s['USETMAXREG']} TMA={s['UTMALDG']} "
                    f"LDL/STL={s['LDL/STL']}")
            if s["DEPBAR"] * 2 > s["HGMMA"]:
                problems.append("WGMMA SERIALIZED (SASS)")
            if s["HGMMA"] == 0:
                problems.append("NO HGMMA")
            if s["USETMAXREG"] == 0:
                problems.append("NO SETMAXNREG IN SASS")
            if s["LDL/STL"]:
                problems.append("LOCAL MEMORY")
        status = "ok" if not problems else ",".join(sorted(set(problems)))
        if problems:
            bad += 1
        regs = r["regs"] if r["regs"] is not None else "-"
        print(f"{v.name:<64} {regs:>4} {r['spill_st']:>4}/{r['spill_ld']:<4} {r['stack']:>5} {v.smem_bytes():>9}  "
              f"{stxt:<50} {status}")
        if not r["ok"] or r["warnings"]:
            for line in r["log"].splitlines():
                if "error" in line.lower() or "warning" in line.lower() or "advisory" in line.lower():
                    print("    " + line.strip())
    print(f"{len(results)} variants, {len(results) - bad} ok, {bad} with problems; cubins in {cubin_dir}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
