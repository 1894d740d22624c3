"""Compile CUDA C with NVRTC through ctypes, as CuPy's ``RawModule`` does at run time (no GPU, no CuPy needed).

``find_libnvrtc()`` looks, in order, at ``$LWGPU_NVRTC`` (a path to libnvrtc.so), the CUDA toolkit next to
``nvcc`` on the PATH (``bin/../lib64``, ``../lib``, ``../targets/*/lib``), ``$CUDA_PATH``/``$CUDA_HOME``,
``/usr/local/cuda``, the NVRTC wheels (``nvidia-cuda-nvrtc``: ``nvidia/cu13/lib``; ``nvidia-cuda-nvrtc-cu12``:
``nvidia/cuda_nvrtc/lib``) and the loader's search path.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: options CuPy adds to a RawModule's own when it compiles with NVRTC (cupy/cuda/compiler.py):
#: flush-to-zero, then the target architecture (``-arch=compute_XY``, or ``sm_XY`` for a cubin).
CUPY_EXTRA_OPTIONS = ("-ftz=true",)


def _toolkit_roots() -> list[Path]:
    roots = []
    if env := os.environ.get("LWGPU_NVRTC"):
        roots.append(Path(env))
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(Path(nvcc).parent.parent)  # a real toolkit: <root>/bin/nvcc
        text = Path(nvcc).read_bytes()[:4096]
        if text.startswith(b"#!"):  # a wrapper script: follow the path it execs
            for word in text.decode(errors="replace").split():
                if word.endswith("/bin/nvcc") and Path(word).exists():
                    roots.append(Path(word).parent.parent)
    roots += [Path(p) for p in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME")) if p]
    roots.append(Path("/usr/local/cuda"))
    return roots


def find_libnvrtc() -> Path | None:
    """Path of libnvrtc.so (see the module docstring for the search order), or None."""
    candidates: list[Path] = []
    for root in _toolkit_roots():
        if root.is_file():
            candidates.append(root)
            continue
        for sub in ("lib64", "lib", "targets/*/lib"):
            candidates += [Path(p) for p in sorted(glob.glob(str(root / sub / "libnvrtc.so*")))]
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        for sub in ("cu13/lib", "cu12/lib", "cuda_nvrtc/lib"):
            candidates += [Path(p) for p in sorted(glob.glob(os.path.join(base, sub, "libnvrtc.so*")))]
    found = ctypes.util.find_library("nvrtc")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        if "builtins" not in c.name and "alt" not in c.name:
            try:
                ctypes.CDLL(str(c))
            except OSError:
                continue
            return c
    return None


def find_ptxas() -> Path | None:
    """ptxas on the PATH or in the toolkit next to nvcc (assembles PTX as the driver's JIT does), or None."""
    found = shutil.which("ptxas")
    if found:
        return Path(found)
    for root in _toolkit_roots():
        if (root / "bin" / "ptxas").is_file():
            return root / "bin" / "ptxas"
    return None


def tool_release(tool: Path) -> tuple[int, int]:
    """(major, minor) of a CUDA tool's ``--version`` ("release 13.0"); (0, 0) when it does not say.

    A ptxas older than the NVRTC that wrote a PTX cannot read that PTX's ``.version``.
    """
    out = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@dataclass
class NvrtcResult:
    ok: bool
    log: str
    ptx: str
    version: tuple[int, int]


def compile_source(lib_path: Path, source: str, name: str, options: tuple[str, ...]) -> NvrtcResult:
    """nvrtcCreateProgram + nvrtcCompileProgram(options); the log, the PTX (empty on failure), NVRTC's version."""
    for builtins in sorted(Path(lib_path).parent.glob("libnvrtc-builtins.so*")):  # NVRTC dlopens it by name
        if "alt" not in builtins.name:
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(lib_path))
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed: {lib.nvrtcGetErrorString(rc).decode()}")

    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    prog = ctypes.c_void_p()
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
          "nvrtcCreateProgram")
    try:
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        rc = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buf = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.value.decode(errors="replace")
        ptx = ""
        if rc == 0:
            check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            pbuf = ctypes.create_string_buffer(size.value)
            check(lib.nvrtcGetPTX(prog, pbuf), "nvrtcGetPTX")
            ptx = pbuf.value.decode(errors="replace")
        return NvrtcResult(rc == 0, log, ptx, (major.value, minor.value))
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
