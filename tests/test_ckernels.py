"""The compiled C kernels (qlearn/_ckernels.c via qlearn._cbuild) against the readable
references, their input checks, the build cache, and the numba fallback without a compiler."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from qlearn import _cbuild, kernels
from test_kernels import MATVEC_RTOL, _dequant_activations, random_blocks

needs_cc = pytest.mark.skipif(_cbuild.load() is None,
                              reason=f"C kernels unavailable: {_cbuild.status().get('reason')}")

# rows: one row, fewer rows than threads, a row count no tiling divides; blocks: 1, 2, 3, 5
SHAPES = [(1, 1), (1, 3), (2, 2), (7, 5), (37, 3)]


def _inputs(qtype, rows, nblocks, seed):
    rng = np.random.default_rng(seed)
    bs = kernels.block_info(qtype)[0]
    cols = (256 if bs == 256 else 32) * nblocks
    q = random_blocks(rng, qtype, rows, cols)
    x = (rng.standard_normal(cols) * rng.uniform(0.1, 10)).astype(np.float32)
    x[rng.integers(0, cols)] *= 30  # an outlier, as in real activations
    return q, x


def _c_matvec(q, qtype, x, simd=True, threads=1):
    """The C matvec of one build (SIMD or portable), on validated inputs."""
    lib = _cbuild.load(simd)
    xq, xd, bs32 = kernels.quantize_activations(x, qtype)
    y = np.empty(q.shape[0], np.float32)
    rc = lib.qlearn_matvec(kernels._TID[qtype], q.ctypes.data, q.shape[0], q.shape[1], x.shape[0],
                           xq.ctypes.data, xd.ctypes.data, bs32.ctypes.data, y.ctypes.data, threads)
    assert rc == 0
    return y


@needs_cc
def test_backend_reports_the_compiled_kernels():
    info = kernels.backend_info()
    assert kernels.backend() == info["backend"] == "c"
    assert os.path.exists(info["path"]) and "-march=native" in info["flags"]
    assert info["simd"] in ("avx2+avx512vnni", "avx2+avxvnni", "avx2", "portable C")
    assert _cbuild.status(simd=False)["simd"] == "portable C"


@needs_cc
@pytest.mark.parametrize("qtype", kernels.MATVEC_TYPES)
@pytest.mark.parametrize("rows,nblocks", SHAPES)
def test_c_matvec_agrees_with_reference(qtype, rows, nblocks):
    """SIMD build vs matvec_reference (float64): the integer block sums are exact, the float32
    sums of scaled blocks are added in another order (8 lanes, then a horizontal sum), so the
    stated tolerance is MATVEC_RTOL relative to sum |w_i * x_i| of the quantized operands."""
    for seed in range(3):
        q, x = _inputs(qtype, rows, nblocks, seed)
        W = kernels.dequantize(q, qtype).astype(np.float64)
        xh, _ = _dequant_activations(qtype, x)
        ref = kernels.matvec_reference(q, qtype, x)
        y = kernels.matvec(q, qtype, x, backend="c")
        assert y.dtype == np.float32 and y.shape == (rows,)
        assert np.all(np.abs(y - ref) <= MATVEC_RTOL * (np.abs(W) @ np.abs(xh)) + 1e-30)
        # rows are independent: any thread split gives the same bits
        for threads in (2, 3, 64):
            assert np.array_equal(_c_matvec(q, qtype, x, threads=threads), y)
        assert np.array_equal(kernels.matvec(q, qtype, x, backend="c", parallel=True), y)


@needs_cc
@pytest.mark.parametrize("qtype", kernels.MATVEC_TYPES)
@pytest.mark.parametrize("rows,nblocks", SHAPES)
def test_portable_c_equals_numba_bit_for_bit(qtype, rows, nblocks):
    """The portable C path adds the scaled block sums in the numba kernels' order with the same
    float32 operations (no FMA contraction under -std=c99): equal bits."""
    for seed in range(3):
        q, x = _inputs(qtype, rows, nblocks, seed)
        assert np.array_equal(_c_matvec(q, qtype, x, simd=False),
                              kernels.matvec(q, qtype, x, backend="numba"))


@needs_cc
@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_c_activation_quantizer_equals_numpy_bit_for_bit(simd, seed):
    """Both builds' qlearn_quantize_q8 give quantize_q8_k / quantize_q8_0's exact codes and
    scales (ties, an all-zero block, scales whose fp16 rounding is subnormal)."""
    lib = _cbuild.load(simd)
    rng = np.random.default_rng(seed)
    n = 256 * int(rng.integers(1, 6))
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 2)).astype(np.float32)
    if seed % 2:
        x = (np.round(x * 4) / 4).astype(np.float32)  # exact ties
    x[:256] *= seed % 3 != 0
    x[256 - 32:256] = (rng.standard_normal(32) * 1e-6).astype(np.float32)  # fp16-subnormal d
    for q8_0 in (False, True):
        xq = np.empty(n, np.int8)
        xd = np.empty(n // (32 if q8_0 else 256), np.float32)
        bs32 = np.empty(n // 32, np.int32)
        assert lib.qlearn_quantize_q8(kernels.ACT_KIND[q8_0], x.ctypes.data, n, xq.ctypes.data,
                                      xd.ctypes.data, bs32.ctypes.data) == 0
        if q8_0:
            qs, d = kernels.quantize_q8_0(x)
        else:
            qs, d, _ = kernels.quantize_q8_k(x)
        assert np.array_equal(xq, qs) and np.array_equal(xd.view(np.uint32), d.view(np.uint32))
        assert np.array_equal(bs32, qs.reshape(-1, 32).astype(np.int32).sum(1))


@needs_cc
def test_c_entry_points_refuse_unknown_types():
    lib = _cbuild.load()
    z = np.zeros(64, np.uint8)
    assert lib.qlearn_matvec(5, z.ctypes.data, 1, 64, 256, z.ctypes.data, z.ctypes.data,
                             z.ctypes.data, z.ctypes.data, 1) == -1  # Q2_K: no C kernel
    assert lib.qlearn_quantize_q8(7, z.ctypes.data, 32, z.ctypes.data, z.ctypes.data,
                                  z.ctypes.data) == -1


def test_bad_inputs_are_value_errors_before_any_c_call():
    q = np.zeros((3, 34 * 2), np.uint8)
    x = np.ones(64, np.float32)
    for backend in ("c", "numba", None):
        with pytest.raises(ValueError, match="float32, got float64"):
            kernels.matvec(q, "Q8_0", x.astype(np.float64), backend=backend)
        with pytest.raises(ValueError, match=r"shape \(64,\)"):
            kernels.matvec(q, "Q8_0", x[:32], backend=backend)
        with pytest.raises(ValueError, match="uint8"):
            kernels.matvec(q.view(np.int8), "Q8_0", x, backend=backend)
        with pytest.raises(ValueError, match="multiple of 34 bytes"):
            kernels.matvec(q[:, :40], "Q8_0", x, backend=backend)
        with pytest.raises(ValueError, match="at least one row"):
            kernels.matvec(q[:0], "Q8_0", x, backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.matvec(q, "Q8_0", x, backend="fortran")
    with pytest.raises(ValueError, match="supports Q4_K"):
        kernels.fused_kernel("Q3_K")


def test_numba_fallback_when_no_compiler(monkeypatch):
    """QLEARN_NO_CC=1 (or no compiler): backend() says numba, with the reason; matvec and the
    quantized model still run, on the numba kernels; asking for "c" is a clear ValueError."""
    monkeypatch.setenv("QLEARN_NO_CC", "1")
    _cbuild.reset()
    try:
        assert kernels.backend() == "numba"
        assert kernels.backend_info()["reason"] == "QLEARN_NO_CC is set"
        q, x = _inputs("Q4_K", 5, 2, 0)
        ref = kernels.matvec_reference(q, "Q4_K", x)
        y = kernels.matvec(q, "Q4_K", x)
        W = kernels.dequantize(q, "Q4_K").astype(np.float64)
        xh, _ = _dequant_activations("Q4_K", x)
        assert np.all(np.abs(y - ref) <= MATVEC_RTOL * (np.abs(W) @ np.abs(xh)))
        with pytest.raises(ValueError, match="C backend is not available: QLEARN_NO_CC"):
            kernels.matvec(q, "Q4_K", x, backend="c")
        monkeypatch.delenv("QLEARN_NO_CC")
        monkeypatch.setenv("CC", "qlearn-no-such-compiler")
        _cbuild.reset()
        assert kernels.backend() == "numba"
        assert "no C compiler" in kernels.backend_info()["reason"]
    finally:
        monkeypatch.undo()
        _cbuild.reset()


def test_fresh_process_without_compiler_runs_a_quantized_model(tmp_path):
    """The whole path in a new interpreter whose compiler does not exist."""
    code = ("import torch; from qlearn import kernels; from qlearn.models import load, "
            "quantize_for_inference; m, t = load('tiny'); q = quantize_for_inference(m, 'Q4_K'); "
            "c = q.new_cache(); q(torch.tensor([[1, 2, 3]]), cache=c); "
            "y = q(torch.tensor([[4]]), cache=c); assert torch.isfinite(y).all(); "
            "print(kernels.backend(), kernels.backend_info()['reason'])")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, CC=str(tmp_path / "no-cc")),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("numba no C compiler")


@needs_cc
def test_build_cache_is_keyed_atomic_and_safe_for_concurrent_builds(tmp_path, monkeypatch):
    """Four threads build into an empty cache at once: one file named by the hash, no
    temporary files left, each copy loads; a compile error falls back with the reason."""
    cc = _cbuild.status()["compiler"]
    monkeypatch.setenv("QLEARN_CACHE", str(tmp_path))
    dst = tmp_path / "ckernels" / "x.so"
    with ThreadPoolExecutor(4) as ex:
        errs = list(ex.map(lambda _: _cbuild._compile(cc, _cbuild.FLAGS, dst), range(4)))
    assert errs == [None] * 4
    assert sorted(p.name for p in dst.parent.iterdir()) == ["x.so"]
    err = _cbuild._compile(cc, _cbuild.FLAGS + ("-include", str(tmp_path / "missing.h")),
                           tmp_path / "ckernels" / "bad.so")
    assert err is not None and "failed" in err
    assert sorted(p.name for p in dst.parent.iterdir()) == ["x.so"]
    _cbuild.reset()
    try:
        lib = _cbuild.load()  # a fresh build in the empty cache, under the hashed name
        assert lib is not None
        path = _cbuild.status()["path"]
        assert path.startswith(str(tmp_path)) and os.path.basename(path).startswith("qlearn_ckernels_")
    finally:
        monkeypatch.undo()
        _cbuild.reset()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs for numba to start 2 threads")
def test_numba_thread_pool_keeps_torch_thread_count():
    """numba's OpenMP pool, started by a parallel kernel, used to reset torch's thread count to
    numba's (qlearn._threads): a fresh process keeps torch.set_num_threads(1)."""
    code = ("import torch; torch.set_num_threads(1); torch.randn(1, 3, 65, 64).repeat_interleave(3, dim=1); "
            "import numpy as np; from qlearn import kernels; "
            "kernels.dequantize(np.zeros((4, 288), np.uint8), 'Q4_K', parallel=True); "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, NUMBA_NUM_THREADS="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1"
