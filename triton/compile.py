# flasheva's Triton compile driver: compiles one rendered Triton job to PTX and a cubin for one
# target arch, without a GPU. flasheva runs it as a subprocess (src/compile/triton.rs):
#
#     python3 compile.py < request.json
#
# The request is {"source": <rendered job>, "arch": "sm_90a", "out": <folder>}. The rendered job
# (flasheva render --backend triton ...) is triton/flasheva_triton.py preceded by one line
# `# flasheva-job: {json}` naming the kernels to compile (Python function, entry point name,
# constexprs), the storage dtype, num_warps and num_stages. Every kernel is compiled with Triton
# for the arch's compute capability, renamed to its entry point, and the PTX of all of them is
# merged into one module that ptxas (the one Triton ships) turns into one cubin.
#
# Writes <out>/kernel.ptx and <out>/kernel.cubin, and prints one JSON line on stdout:
#     {"ok": true, "triton": "3.6.0", "entries": [{"name", "shared", "num_warps"}], "log": ...}
# or  {"ok": false, "error": "..."}; the exit status is 0 either way unless the driver itself broke.

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback

os.environ["TRITON_DISABLE_LINE_INFO"] = "1"  # no source paths in the PTX: byte-identical rebuilds

# Parameter types by name (flasheva_triton.py's convention): upper-case names are pointers,
# to the job's storage type unless listed here, except the sizes; lower-case names are int64
# strides (`_s?`), the fp32 scale, or int32.
F32_POINTERS = {"LSE", "WS_O", "WS_ML", "DELTA", "PART"}
I32_POINTERS = {"LEN", "START", "COUNT", "SLOT", "PT"}
SIZES = {"N", "H", "HKV", "NC", "NCR", "B", "MAXNC", "SPLITS", "SEG", "G", "PAGE"}
ARCHS = {"sm_80": 80, "sm_86": 86, "sm_87": 87, "sm_89": 89, "sm_90a": 90}


def signature(fn, dtype, constexprs):
    """Triton types of the kernel's parameters, from their names (see flasheva_triton.py)."""
    storage = {"f16": "*fp16", "bf16": "*bf16"}[dtype]
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in F32_POINTERS:
            sig[name] = "*fp32"
        elif name in I32_POINTERS:
            sig[name] = "*i32"
        elif name in SIZES:
            sig[name] = "i32"
        elif name.isupper():
            sig[name] = storage
        elif re.search(r"_s[bths]$", name):
            sig[name] = "i64"
        elif name.startswith("scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def alignment(fn, sig):
    """Triton's divisibility hints for a kernel whose plan checked every storage-type tensor for
    16-byte vector access: its pointers 16-byte aligned, their strides (`x_s?` of pointer X)
    multiples of 8 elements. Other pointers and integers get none."""
    storage = {n for n in fn.arg_names if sig[n] in ("*fp16", "*bf16")}
    attrs = {}
    for i, name in enumerate(fn.arg_names):
        m = re.match(r"([a-z]+)_s[bths]$", name)
        if name in storage:
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif m and m.group(1).upper() in storage and sig[name] == "i64":
            attrs[(i,)] = [["tt.divisibility", 8]]
    return attrs


def rename(ptx, old, new):
    """Renames the kernel `old` (and its parameters) to `new`."""
    return re.sub(r"(?<![\w$])" + re.escape(old) + r"(?=(_param_\d+)?(?![\w$]))", new, ptx)


DECL = re.compile(r"^\.(?:visible\s+|extern\s+|weak\s+)*\.?(?:global|shared|const)\b.*?([\w$]+)\s*(?:\[[^\]]*\])?\s*(?:=.*)?;$")


def merge(ptxs):
    """One PTX module of several Triton modules of the same target: the first whole, then each
    other's functions, module-scope declarations made once (an identical redeclaration is
    dropped; a different one of the same name is an error)."""
    out = ptxs[0].rstrip("\n") + "\n"
    declared = {}

    def note(line):
        m = DECL.match(line)
        if m:
            declared.setdefault(m.group(1), line)
        return m

    for line in ptxs[0].splitlines():
        note(line.strip())
    for ptx in ptxs[1:]:
        body, in_functions = [], False
        for line in ptx.splitlines():
            t = line.strip()
            if t.startswith((".version", ".target", ".address_size")):
                continue
            if t.startswith(".visible .entry") or t.startswith(".entry"):
                in_functions = True
            if not in_functions:
                m = DECL.match(t)
                if m:
                    name = m.group(1)
                    if name in declared:
                        if declared[name] != t:
                            raise ValueError(f"cannot merge modules: two declarations of {name}")
                        continue
                    declared[name] = t
            body.append(line)
        out += "\n" + "\n".join(body) + "\n"
    return out


def main():
    req = json.load(sys.stdin)
    source, arch, out = req["source"], req["arch"], req["out"]
    first = source.splitlines()[0] if source else ""
    if not first.startswith("# flasheva-job: "):
        raise ValueError("the source does not start with a `# flasheva-job:` line")
    job = json.loads(first[len("# flasheva-job: "):])
    if arch not in ARCHS:
        raise ValueError(f"Triton targets {', '.join(ARCHS)}, not {arch}")

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # Triton reads a kernel's source through `inspect`: import the job from a real file.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "flasheva_triton_job.py")
        with open(path, "w") as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location("flasheva_triton_job", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

        target = GPUTarget("cuda", ARCHS[arch], 32)
        ptxs, entries = [], []
        for k in job["kernels"]:
            fn = getattr(module, k["function"])
            constexprs = k["constexprs"]
            sig = signature(fn, job["dtype"], constexprs)
            attrs = alignment(fn, sig) if k.get("aligned") else None
            src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
            compiled = triton.compile(src, target=target, options={
                "num_warps": job["num_warps"], "num_stages": job["num_stages"]})
            md = compiled.metadata
            if md.global_scratch_size or md.profile_scratch_size:
                raise ValueError(
                    f"{k['function']} needs {md.global_scratch_size} bytes of global and "
                    f"{md.profile_scratch_size} of profile scratch memory, which flasheva does "
                    "not allocate: choose another tile")
            ptxs.append(rename(compiled.asm["ptx"], compiled.name, k["entry"]))
            entries.append({"name": k["entry"], "shared": md.shared, "num_warps": md.num_warps})

        ptx = merge(ptxs)
        ptx_path, cubin_path = os.path.join(out, "kernel.ptx"), os.path.join(out, "kernel.cubin")
        with open(ptx_path, "w") as f:
            f.write(ptx)
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(ARCHS[arch]).path
        r = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", ptx_path, "-o", cubin_path],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise ValueError(f"ptxas failed:\n{r.stderr}")
    print(json.dumps({"ok": True, "triton": triton.__version__, "entries": entries,
                      "log": r.stderr}))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the message is the compile error flasheva shows
        detail = traceback.format_exc(limit=3) if not isinstance(e, ValueError) else ""
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}\n{detail}".strip()}))
