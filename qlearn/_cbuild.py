"""Compile ``qlearn/_ckernels.c`` at first use and load it with ctypes.

The shared library is built once per (source, compiler, flags, CPU) with the system C compiler
(``$CC``, else ``cc``) and ``-O3 -march=native``, into ``$QLEARN_CACHE/ckernels`` (default
``~/.cache/qlearn/ckernels``); the file name carries a hash of all four, so an edit of the
source, another compiler or another CPU gets its own file. It is compiled to a temporary name
and renamed into place (atomic), so two processes starting together (pytest workers) are safe.

No compiler, a failed compilation, or ``QLEARN_NO_CC=1`` in the environment: :func:`load`
returns None with the reason in :func:`status`, and :mod:`qlearn.kernels` uses its numba
kernels instead (same results within float32 rounding). Nothing is printed or warned.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("_ckernels.c")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c99")
LIBS = ("-lpthread", "-lm")
COMPILE_TIMEOUT_S = 120
ENV_DISABLE = "QLEARN_NO_CC"

_cache: dict[bool, tuple[ctypes.CDLL | None, dict]] = {}


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux /proc/cpuinfo), or the machine name elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _cache_dir() -> Path:
    from qlearn.models.data import cache_dir

    return cache_dir() / "ckernels"


def _compile(cc: str, flags: tuple[str, ...], dst: Path) -> str | None:
    """Compile the source into dst; return None, or the reason it failed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=".so.tmp", dir=dst.parent)
    os.close(fd)
    try:
        out = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE), *LIBS], capture_output=True,
                             text=True, timeout=COMPILE_TIMEOUT_S)
        if out.returncode != 0:
            return f"{cc} failed ({out.returncode}): {out.stderr.strip()[-300:]}"
        os.replace(tmp, dst)  # atomic: a concurrent reader sees no file or a whole one
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"{cc} could not run: {e}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


SELFTEST_RTOL = 1e-5  # the kernels' float32 tolerance (tests/test_kernels.py)


def _selftest(lib) -> str | None:
    """Every type's C matvec and the activation quantizer on small random blocks against the
    numpy reference: a miscompiled build (it happens: see the Q8_0 loop in the source) is
    refused, and the numba kernels run instead. None when all agree, else the reason."""
    import numpy as np

    from qlearn import kernels

    rng = np.random.default_rng(0)
    for name in kernels.MATVEC_TYPES:
        bs, ts = kernels.block_info(name)
        cols = 2 * max(bs, 64)
        q = rng.integers(0, 256, (3, cols // bs * ts), dtype=np.uint8).reshape(3, -1, ts)
        for off in {"Q4_K": (0, 2), "Q6_K": (208,), "Q4_1": (0, 2), "Q5_1": (0, 2)}.get(name, (0,)):
            q[:, :, off:off + 2] = (rng.uniform(0.5, 1.5, q.shape[:2]) * 0.01).astype(np.float16)[..., None].view(np.uint8)
        q = np.ascontiguousarray(q.reshape(3, -1))
        x = rng.standard_normal(cols).astype(np.float32)
        xq, xd, bs32 = (np.empty(cols, np.int8), np.empty(cols // 32, np.float32),
                        np.empty(cols // 32, np.int32))
        q8_0 = name in kernels._Q8_0_ACTIVATIONS
        lib.qlearn_quantize_q8(int(q8_0), x.ctypes.data, cols, xq.ctypes.data, xd.ctypes.data,
                               bs32.ctypes.data)
        want = kernels.quantize_q8_0(x) if q8_0 else kernels.quantize_q8_k(x)[:2]
        if not (np.array_equal(xq, want[0]) and np.array_equal(xd[:len(want[1])], want[1])):
            return f"self-test failed: activation quantizer ({'Q8_0' if q8_0 else 'Q8_K'})"
        y = np.empty(3, np.float32)
        lib.qlearn_matvec(kernels._TID[name], q.ctypes.data, 3, q.shape[1], cols, xq.ctypes.data,
                          xd.ctypes.data, bs32.ctypes.data, y.ctypes.data, 1)
        ref = kernels.matvec_reference(q, name, x)
        W = kernels.dequantize(q, name, parallel=False).astype(np.float64)
        if not np.all(np.abs(y - ref) <= SELFTEST_RTOL * (np.abs(W) @ np.abs(x)) * 1.01 + 1e-30):
            return f"self-test failed: {name} matvec disagrees with matvec_reference"
    return None


def load(simd: bool = True) -> ctypes.CDLL | None:
    """The compiled kernels (built at the first call), or None if they cannot be had.

    simd: False compiles the portable C path only (``-DQLEARN_NO_SIMD``; the tests check it).
    """
    if simd in _cache:
        return _cache[simd][0]
    lib, info = None, {"source": str(SOURCE)}
    cc_name = os.environ.get("CC", "cc")
    cc = shutil.which(cc_name)
    flags = FLAGS if simd else FLAGS + ("-DQLEARN_NO_SIMD",)
    if os.environ.get(ENV_DISABLE, "") not in ("", "0"):
        info["reason"] = f"{ENV_DISABLE} is set"
    elif cc is None:
        info["reason"] = f"no C compiler ({cc_name!r} not on PATH)"
    elif not SOURCE.exists():
        info["reason"] = f"{SOURCE.name} is missing from the installed package"
    else:
        key = hashlib.sha256(SOURCE.read_bytes())
        for part in (cc, " ".join(flags + LIBS), _cpu_flags(), platform.machine()):
            key.update(b"\0" + part.encode())
        path = _cache_dir() / f"qlearn_ckernels_{key.hexdigest()[:16]}.so"
        err = None if path.exists() else _compile(cc, flags, path)
        if err is None:
            try:
                lib = ctypes.CDLL(str(path))
                fn = lib.qlearn_matvec
                fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                               ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_int]
                fn.restype = ctypes.c_int
                qz = lib.qlearn_quantize_q8
                qz.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p]
                qz.restype = ctypes.c_int
                lib.qlearn_simd.restype = ctypes.c_char_p
                info.update(path=str(path), compiler=cc, flags=" ".join(flags),
                            simd=lib.qlearn_simd().decode())
                err = _selftest(lib)
                if err is not None:
                    lib = None
            except (OSError, AttributeError) as e:
                lib, err = None, f"could not load {path.name}: {e}"
        if err is not None:
            info["reason"] = err
    _cache[simd] = (lib, info)
    return lib


def status(simd: bool = True) -> dict:
    """What :func:`load` found: ``path``, ``compiler``, ``flags``, ``simd`` or ``reason``."""
    load(simd)
    return dict(_cache[simd][1])


def reset() -> None:
    """Forget the loaded library (tests: to retry with another environment)."""
    _cache.clear()
