"""One quantization core: every method's grid is qlearn.uniform, bit for bit.

For each wrapper (GPTQ, AWQ, SmoothQuant, LLM.int8(), calibration) two checks:

* the wrapper's output has the same bytes as ``uniform.quantize_affine`` with the wrapper's
  mapping (the proof that it goes through the core with nothing changed on the way);
* the same bytes as the upstream formula written out in torch/numpy here (the arithmetic the
  wrapper replaced), so the float32 operation order of each tool is kept.

Plus an import test: the wrapper modules import the core and no ``round(... / scale)`` grid
code stands outside it (the numba GPTQ sweep excepted: test_gptq checks it against the torch
sweep, which calls the core).
"""

import ast
import functools
import inspect
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qlearn import awq, calibration, gptq, llm_int8, smoothquant, uniform

SETTINGS = settings(max_examples=25, deadline=None)
finite = st.floats(-100, 100, width=32, allow_subnormal=False)


@st.composite
def weights(draw, g_choices=(4, 8, 16)):
    """A (rows, n_groups * g) float32 matrix (some rows all-positive, some all-zero) and g."""
    rows, n_groups = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    g = draw(st.sampled_from(g_choices))
    w = draw(hnp.arrays(np.float32, (rows, n_groups * g), elements=finite))
    kind = draw(st.sampled_from(["any", "positive", "zero_row"]))
    if kind == "positive":
        w = np.abs(w)
    elif kind == "zero_row":
        w[0] = 0
    return w, g


def same_bytes(a, b) -> bool:
    """Identical bytes (torch or numpy), same shape and dtype."""
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def core(x, bits, bs, mapping, **kw):
    """The core's codes, scale, zero point and dequantized values."""
    scale, zero = uniform.choose_qparams(x, bits, bs, mapping, **kw)
    q = uniform.quantize_affine(x, scale, zero, bits, block_size=bs, mapping=mapping)
    return q, uniform.dequantize(q)


# --- GPTQ: "symmetric_offset" (sym) and "asymmetric" ---------------------------------------------

def _gptq_reference(W, bits, sym):
    """The reference quantizer (IST-DASLab/gptq ``Quantizer.find_params`` + ``quantize``)."""
    maxq = torch.tensor(2 ** bits - 1)
    zero_row = torch.zeros(W.shape[0])
    xmin = torch.minimum(W.min(1)[0], zero_row)
    xmax = torch.maximum(W.max(1)[0], zero_row)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        neg = xmin < 0
        xmin[neg] = -xmax[neg]
    empty = (xmin == 0) & (xmax == 0)
    xmin[empty], xmax[empty] = -1, +1
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (2 ** bits) / 2) if sym else torch.round(-xmin / scale)
    codes = torch.clamp(torch.round(W / scale[:, None]) + zero[:, None], 0, maxq)
    return scale, zero, codes


@SETTINGS
@given(weights(), st.integers(2, 8), st.booleans())
def test_gptq_wrappers_equal_the_core_and_the_reference(wg, bits, sym):
    w, g = wg
    mapping = "symmetric_offset" if sym else "asymmetric"
    q, deq = core(w, bits, (1, g), mapping)
    r = gptq.rtn_quantize(torch.from_numpy(w), bits, g, sym)
    assert same_bytes(r.codes, q.codes) and same_bytes(r.scales, q.scale)
    assert same_bytes(r.zeros, q.zero_point.astype(np.float32))
    assert same_bytes(r.Q, deq)
    scale, zero = gptq.find_params(torch.from_numpy(w[:, :g]), bits, sym)
    assert same_bytes(scale, q.scale[:, 0]) and same_bytes(zero, r.zeros[:, 0])
    rs, rz, rc = _gptq_reference(torch.from_numpy(w[:, :g].copy()), bits, sym)
    assert same_bytes(scale, rs) and same_bytes(zero, rz + 0.0)  # upstream may hold -0.0
    assert same_bytes(r.codes[:, :g], rc.to(torch.uint8))
    c = gptq._codes(torch.from_numpy(w[:, :g]), scale[:, None], zero[:, None], bits, mapping)
    assert same_bytes(c, rc.to(torch.uint8))


# --- AWQ: "asymmetric_minmax" ----------------------------------------------------------------------

def _awq_reference(w, bits):
    """llm-awq ``pseudo_quantize_tensor`` (zero_point=True) on rows of ``w``."""
    max_int = 2 ** bits - 1
    max_val, min_val = w.amax(dim=1, keepdim=True), w.amin(dim=1, keepdim=True)
    scales = (max_val - min_val).clamp(min=1e-5) / max_int
    zeros = (-torch.round(min_val / scales)).clamp_(0, max_int)
    codes = torch.clamp(torch.round(w / scales) + zeros, 0, max_int)
    return (codes - zeros) * scales, codes, scales, zeros


@SETTINGS
@given(weights(), st.integers(2, 8))
def test_awq_wrapper_equals_the_core_and_llm_awq(wg, bits):
    w, g = wg
    q, deq = core(w, bits, (1, g), "asymmetric_minmax")
    Q, codes, scales, zeros = awq.pseudo_quantize(torch.from_numpy(w), bits, g)
    assert same_bytes(codes, q.codes) and same_bytes(scales, q.scale)
    assert same_bytes(zeros, q.zero_point.astype(np.float32)) and same_bytes(Q, deq)
    rq, rc, rs, rz = _awq_reference(torch.from_numpy(w).reshape(-1, g), bits)
    assert same_bytes(codes, rc.to(torch.uint8).reshape(w.shape))
    assert same_bytes(scales, rs.reshape(scales.shape))
    assert same_bytes(zeros + 0.0, rz.reshape(zeros.shape) + 0.0)  # upstream may hold -0.0
    assert same_bytes(Q, rq.reshape(w.shape) + 0.0)


# --- SmoothQuant: "symmetric" with a 1e-5 floor on absmax ----------------------------------------

@SETTINGS
@given(weights(), st.sampled_from(["per_tensor", "per_channel", "per_token"]),
       st.integers(2, 8))
def test_smoothquant_wrapper_equals_the_core_and_upstream(wg, mode, bits):
    w, _ = wg
    t = torch.from_numpy(w)
    bs = w.shape if mode == "per_tensor" else (1, w.shape[1])
    _, deq = core(w, bits, bs, "symmetric", range_floor=smoothquant.STAT_FLOOR)
    got = smoothquant.absmax_fake_quant(t, mode, bits)
    assert same_bytes(got, deq)
    # upstream quantize_*_absmax; it writes -0.0 where the core writes +0.0 (same value)
    absmax = t.abs().max() if mode == "per_tensor" else t.abs().max(dim=-1, keepdim=True)[0]
    scales = absmax.clamp(min=1e-5).div(2 ** (bits - 1) - 1)
    assert same_bytes(got, t.div(scales).round_().mul_(scales) + 0.0)


# --- LLM.int8(): "symmetric" int8 with bitsandbytes' reciprocal ----------------------------------

@SETTINGS
@given(weights(), st.sampled_from([0.0, 20.0, 60.0]))
def test_llm_int8_wrapper_equals_the_core_and_bitsandbytes(wg, threshold):
    w, _ = wg
    A = torch.from_numpy(w).half()
    codes, absmax, cols = llm_int8.vectorwise_quant(A, threshold)
    # bitsandbytes' CPU int8_vectorwise_quant, written out
    B = A.clone()
    if threshold > 0:
        outliers = B.abs() >= threshold
        B[outliers] = 0
    ref_absmax = torch.max(B.abs(), dim=1).values.float()
    with np.errstate(all="ignore"):
        ref = torch.round(B * (127.0 / ref_absmax.unsqueeze(-1)))
    ref = torch.where(ref_absmax.unsqueeze(-1) > 0, ref, torch.zeros_like(ref)).to(torch.int8)
    if B.shape[0] > 1 and cols.numel():
        ref[:, cols] = 0
    assert same_bytes(absmax, ref_absmax) and same_bytes(codes, ref)
    # and the core with the same parameters
    safe = np.where(ref_absmax.numpy() > 0, ref_absmax.numpy(), np.float32(1))[:, None]
    inv = np.float32(127) * (np.float32(1) / safe)
    q = uniform.quantize_affine(B.float().numpy(), safe / np.float32(127),
                                np.zeros(safe.shape, np.int32), 8, block_size=(1, w.shape[1]),
                                mapping="symmetric", inv_scale=inv)
    core_codes = torch.from_numpy(q.codes)
    if B.shape[0] > 1 and cols.numel():
        core_codes[:, cols] = 0
    assert same_bytes(codes, core_codes)


# --- calibration: "symmetric"/"asymmetric" in float64 over a given range -------------------------

@SETTINGS
@given(weights(), st.integers(2, 8), st.booleans(), st.floats(0.05, 1.0))
def test_calibration_wrapper_equals_the_core_and_the_formula(wg, bits, symmetric, frac):
    w, _ = wg
    x = w.astype(np.float64)
    lo, hi = float(x.min()) * frac, float(x.max()) * frac
    rng = calibration.Range(lo, hi, "test")
    got = calibration.fake_quantize_range(x, rng, bits, symmetric)
    if symmetric:
        qmax, a = 2 ** (bits - 1) - 1, max(abs(lo), abs(hi))
        s = a / qmax if a else 1.0
        ref = np.clip(np.round(x / s), -qmax, qmax) * s if a else np.zeros_like(x)
    else:
        levels, lo0, hi0 = 2 ** bits - 1, min(lo, 0.0), max(hi, 0.0)
        if hi0 == lo0:
            ref = np.zeros_like(x)
        else:
            s = (hi0 - lo0) / levels
            z = np.round(-lo0 / s)
            ref = (np.clip(np.round(x / s) + z, 0, levels) - z) * s
    assert same_bytes(got, ref + 0.0)
    mapping = "symmetric" if symmetric else "asymmetric"
    if max(abs(lo), abs(hi)) and not (not symmetric and min(lo, 0.0) == max(hi, 0.0)):
        scale, zero = uniform.qparams_from_range(np.array([lo]), np.array([hi]), bits, mapping,
                                                 dtype=np.float64)
        one = (1,) * x.ndim
        q = uniform.quantize_affine(x, scale.reshape(one), zero.reshape(one), bits,
                                    mapping=mapping, dtype=np.float64)
        assert same_bytes(got, uniform.dequantize_affine(q.codes, q.scale, q.zero_point,
                                                         q.block_size, mapping,
                                                         dtype=np.float64))


# --- the structure: the wrappers import the core, no grid code outside it -----------------------

WRAPPERS = (gptq, awq, smoothquant, llm_int8, calibration)
# round(...) of a division or of a product by a reciprocal: the grid step of an affine quantizer
GRID_CODE = re.compile(r"((np\.rint|np\.round|torch\.round|\.round_?)\s*\(?[^\n]*(/|\* *\())"
                       r"|\.div\([^)]*\)\.round")


def _code_lines(module):
    """Source lines of ``module`` without docstrings and comments."""
    tree = ast.parse(inspect.getsource(module))
    doc_lines = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = inspect.getsource(module).splitlines()
    return [(i + 1, ln.split("#")[0]) for i, ln in enumerate(lines) if i + 1 not in doc_lines]


@pytest.mark.parametrize("module", WRAPPERS, ids=lambda m: m.__name__)
def test_wrapper_modules_import_the_core_and_hold_no_grid_code(module):
    assert module.uniform is uniform
    numba_sweep = inspect.getsourcelines(gptq._sweep_block_numba)
    skip = set(range(numba_sweep[1], numba_sweep[1] + len(numba_sweep[0])))
    found = [(n, ln) for n, ln in _code_lines(module)
             if GRID_CODE.search(ln) and not (module is gptq and n in skip)]
    assert not found, f"grid code outside qlearn.uniform in {module.__name__}: {found}"


def test_the_grid_pattern_finds_grid_code():
    """The check above can fail: it flags each of the formulas the wrappers replaced."""
    for line in ("codes = torch.clamp(torch.round(w / scale) + zero, 0, maxq)",
                 "return np.clip(np.round(x / s), -qmax, qmax) * s",
                 "return t.div(scales).round_().mul_(scales)",
                 "codes = torch.round(A * (INT8_QMAX / row_absmax))"):
        assert GRID_CODE.search(line), line


def test_mappings_table_names_each_grid():
    assert set(uniform.MAPPINGS) >= {"symmetric", "symmetric_offset", "asymmetric",
                                     "asymmetric_minmax"}
    x = np.array([[-1.0, 0.25, 0.5, 1.0]], np.float32)
    # restricted symmetric 4-bit: codes -7..7, scale 1/7; GPTQ's offset grid: 0..15, zero 8,
    # scale 2/15, so +max is clipped to 7/15 * 2 = 0.933 (and -max = -7.4999995 steps -> code 1)
    s, z = uniform.choose_qparams(x, 4, mapping="symmetric")
    assert (s[0, 0], z[0, 0]) == (np.float32(1) / np.float32(7), 0)
    s, z = uniform.choose_qparams(x, 4, mapping="symmetric_offset")
    assert (s[0, 0], z[0, 0]) == (np.float32(2) / np.float32(15), 8)
    q = uniform.quantize(x, 4, mapping="symmetric_offset")
    assert q.codes.tolist() == [[1, 10, 12, 15]] and q.mapping == "symmetric_offset"
    assert uniform.dequantize(q)[0, 3] == pytest.approx(7 * 2 / 15)


def test_old_keyword_names_are_deprecated_aliases():
    W = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32))
    with pytest.warns(DeprecationWarning, match="w_bit"):
        old = awq.pseudo_quantize(W, w_bit=3, group_size=16)
    assert all(torch.equal(a, b) for a, b in zip(old, awq.pseudo_quantize(W, bits=3,
                                                                           group_size=16)))
    with pytest.warns(DeprecationWarning, match="n_bits"):
        old = smoothquant.absmax_fake_quant(W, "per_channel", n_bits=6)
    assert torch.equal(old, smoothquant.absmax_fake_quant(W, "per_channel", bits=6))
    with pytest.raises(TypeError, match="both bits= and its deprecated alias w_bit="):
        awq.pseudo_quantize(W, bits=3, w_bit=3)


# --- one result convention: every method's result carries a QTensor and dequantizes alike ----------

@functools.lru_cache(maxsize=1)
def _result_cases():
    rng = np.random.default_rng(3)
    W = torch.from_numpy(rng.standard_normal((16, 64)).astype(np.float32))
    X = torch.from_numpy(rng.standard_normal((512, 64)).astype(np.float32))
    H = gptq.hessian(X)
    return {
        "gptq.rtn sym g32": gptq.rtn_quantize(W, 4, 32, sym=True),
        "gptq.rtn asym per-row": gptq.rtn_quantize(W, 3, -1, sym=False),
        "gptq sym g16": gptq.gptq_quantize(W, H, 4, 16, sym=True, blocksize=16),
        "gptq asym act_order static": gptq.gptq_quantize(W, H, 3, 32, sym=False, act_order=True,
                                                         static_groups=True, blocksize=16),
        "awq g32": awq.awq_quantize(W, X, bits=4, group_size=32),
    }


@pytest.mark.parametrize("name", list(_result_cases()))
def test_results_carry_a_qtensor_that_dequantizes_bit_for_bit(name):
    r = _result_cases()[name]
    old = (gptq.dequantize(r.codes, r.scales, r.zeros, r.g_idx) if isinstance(r, gptq.GPTQResult)
           else r.Q)
    assert torch.equal(old, r.Q)                                   # the old path gave Q
    assert torch.equal(r.dequantize(), old)                        # .dequantize(), no argument
    q = r.qtensor
    assert isinstance(q, uniform.QTensor) and q.mapping == r.mapping
    assert q.block_size == (1, r.group_size if getattr(r, "group_size", -1) != -1 else 64)
    assert torch.equal(torch.from_numpy(q.dequantize()), old)      # the QTensor path
    assert torch.equal(torch.from_numpy(uniform.dequantize_affine(
        q.codes, q.scale, q.zero_point, q.block_size, q.mapping, bits=q.bits)), old)


def test_gptq_act_order_groups_have_no_block_form_but_dequantize():
    rng = np.random.default_rng(4)
    W = torch.from_numpy(rng.standard_normal((8, 64)).astype(np.float32))
    H = gptq.hessian(torch.from_numpy(rng.standard_normal((128, 64)).astype(np.float32)))
    r = gptq.gptq_quantize(W, H, 4, 16, act_order=True, blocksize=16)
    assert torch.equal(r.dequantize(), gptq.dequantize(r.codes, r.scales, r.zeros, r.g_idx))
    with pytest.raises(ValueError, match="contiguous groups"):
        r.qtensor
