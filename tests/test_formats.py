"""qlearn.formats against torch's casts, bit for bit, plus properties and bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qlearn import formats as F

SMALL = ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"]
N_RANDOM = 1_000_000


def torch_encode(x: np.ndarray, fmt: str) -> np.ndarray:
    """torch's cast of float32 x to fmt, as raw codes."""
    f = F.FORMATS[fmt]
    t = torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, f.torch_dtype))
    return t.view(torch.int16 if f.bits == 16 else torch.uint8).numpy().view(f.code_dtype)


def torch_decode(codes: np.ndarray, fmt: str) -> np.ndarray:
    f = F.FORMATS[fmt]
    raw = torch.from_numpy(codes.view(np.int16) if f.bits == 16 else codes)
    return raw.view(getattr(torch, f.torch_dtype)).float().numpy()


def assert_codes_match(x, ours, theirs, fmt):
    """Bit-exact outside NaN; NaN inputs must give NaN codes, bit-exact too except BF16."""
    f = F.FORMATS[fmt]
    nan_in = np.isnan(x)
    bad = (ours != theirs) & ~nan_in
    assert not bad.any(), (f"{fmt}: {bad.sum()} codes differ, e.g. x bits "
                           f"{[hex(v) for v in x[bad][:4].view(np.uint32)]} ours "
                           f"{[hex(v) for v in ours[bad][:4]]} torch {[hex(v) for v in theirs[bad][:4]]}")
    assert np.isnan(F.decode(ours[nan_in], fmt)).all()
    if fmt == "bf16":
        # torch's vectorized BF16 cast writes 0xFFFF, its scalar c10 rule (ours) 0x7FC0: both NaN
        assert set(np.unique(theirs[nan_in]).tolist()) <= {0xFFFF, 0x7FC0}
        assert set(np.unique(ours[nan_in]).tolist()) <= {f.nan_code}
    else:
        assert np.array_equal(ours[nan_in], theirs[nan_in])


# --- decode: every code -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", SMALL)
def test_decode_every_code_matches_torch(fmt):
    f = F.FORMATS[fmt]
    codes = np.arange(2 ** f.bits, dtype=np.int64).astype(f.code_dtype)
    ours, theirs = F.decode(codes, fmt), torch_decode(codes, fmt)
    nan = np.isnan(theirs)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(ours[~nan].view(np.uint32), theirs[~nan].view(np.uint32))
    assert nan.sum() == {"fp16": 2046, "bf16": 254, "fp8_e4m3": 2, "fp8_e5m2": 6}[fmt]


@pytest.mark.parametrize("fmt", SMALL)
def test_encode_decode_roundtrips_every_non_nan_code(fmt):
    f = F.FORMATS[fmt]
    codes = np.arange(2 ** f.bits, dtype=np.int64).astype(f.code_dtype)
    vals = F.decode(codes, fmt)
    keep = ~np.isnan(vals)
    assert np.array_equal(F.encode(vals[keep], fmt), codes[keep])


# --- encode: random bit patterns, ties, edges ---------------------------------------------------

@pytest.mark.parametrize("fmt", SMALL)
def test_encode_random_bit_patterns_match_torch(fmt):
    """10^6 uniformly random float32 bit patterns: every exponent, NaN payloads, inf, subnormals."""
    rng = np.random.default_rng(sum(map(ord, fmt)))
    x = rng.integers(0, 2 ** 32, size=N_RANDOM, dtype=np.uint64).astype(np.uint32).view(np.float32)
    assert_codes_match(x, F.encode(x, fmt), torch_encode(x, fmt), fmt)


@pytest.mark.parametrize("fmt", SMALL)
def test_encode_in_range_values_match_torch(fmt):
    """10^6 values spread over the format's own range (log-uniform magnitudes, both signs)."""
    f = F.FORMATS[fmt]
    rng = np.random.default_rng(7 + f.bits)
    lo, hi = np.log2(f.min_subnormal) - 2, np.log2(f.max) + 1
    with np.errstate(over="ignore"):  # bf16's range reaches float32's: some become inf, on purpose
        x = (np.exp2(rng.uniform(lo, hi, N_RANDOM)) * rng.choice([-1.0, 1.0], N_RANDOM)).astype(np.float32)
    assert_codes_match(x, F.encode(x, fmt), torch_encode(x, fmt), fmt)


def neighbours_and_midpoints(fmt):
    """Every pair of adjacent finite positive values, their exact midpoints (ties) and the float32
    values one ulp either side of each midpoint; both signs."""
    f = F.FORMATS[fmt]
    codes = np.arange(f.max_code + 1, dtype=np.int64)  # 0 .. max finite, ascending
    vals = F.decode(codes.astype(f.code_dtype), fmt).astype(np.float64)
    mid = ((vals[:-1] + vals[1:]) / 2).astype(np.float32)  # exact: fewer bits than float32
    assert np.array_equal(mid.astype(np.float64), (vals[:-1] + vals[1:]) / 2)
    # the tie just above max (the first value a cast rounds past max)
    top = np.float32(f.max + 2.0 ** (f.max_exponent - f.mantissa_bits) / 2)
    pts = np.concatenate([mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(np.inf)),
                          vals.astype(np.float32), [top, np.nextafter(top, np.float32(0)),
                                                    np.nextafter(top, np.float32(np.inf))]])
    return np.concatenate([pts, -pts]).astype(np.float32)


@pytest.mark.parametrize("fmt", SMALL)
def test_ties_round_to_even_like_torch(fmt):
    x = neighbours_and_midpoints(fmt)
    ours = F.encode(x, fmt)
    assert_codes_match(x, ours, torch_encode(x, fmt), fmt)
    # and by the rule itself: an exact tie lands on the even code
    f = F.FORMATS[fmt]
    codes = np.arange(f.max_code + 1, dtype=np.int64)
    vals = F.decode(codes.astype(f.code_dtype), fmt).astype(np.float64)
    mid = ((vals[:-1] + vals[1:]) / 2).astype(np.float32)
    assert (F.encode(mid, fmt) % 2 == 0).all()


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 448, 449, 464, 465,
                    480, 500, 57344, 61439, 61440, 65504, 65519, 65520, 65536, 1e6, 3.4e38,
                    -3.4e38, 2 ** -24, 2 ** -25, 1.5 * 2 ** -25, 2 ** -9, 2 ** -10, 2 ** -16,
                    2 ** -17, 1e-40, -1e-40, 1e-45, 2 ** -133, 2 ** -134, 3 * 2 ** -134],
                   dtype=np.float32)
SIGNALING_NANS = np.array([0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FFFFFFF, 0xFFC00001, 0x7FC02000],
                          dtype=np.uint32).view(np.float32)


@pytest.mark.parametrize("fmt", SMALL)
def test_special_values_match_torch(fmt):
    x = np.concatenate([SPECIAL, SIGNALING_NANS])
    assert_codes_match(x, F.encode(x, fmt), torch_encode(x, fmt), fmt)


def test_special_value_rules():
    """The rules the chapter states, checked directly."""
    e4 = F.FORMATS["fp8_e4m3"]
    big = np.array([np.inf, 1e6, 449, -np.inf], dtype=np.float32)
    assert F.round_to(big, "fp8_e4m3").tolist() == [e4.max, e4.max, e4.max, -e4.max]  # saturates
    assert np.isinf(F.round_to(np.array([61440, 1e6], np.float32), "fp8_e5m2")).all()
    assert F.round_to(np.array([65519, 65520], np.float32), "fp16").tolist() == [65504, np.inf]
    z = F.encode(np.array([0.0, -0.0], np.float32), "fp16")
    assert z.tolist() == [0, 0x8000]


def test_empty_and_shape_preserved():
    for fmt in F.FORMATS:
        x = np.zeros((0, 3), np.float32)
        assert F.encode(x, fmt).shape == (0, 3)
        y = np.arange(12, dtype=np.float32).reshape(3, 4)
        assert F.round_to(y, fmt).shape == (3, 4)


def test_fp32_is_identity():
    x = np.array([1.1, -0.0, np.inf, 1e-45], np.float32)
    assert np.array_equal(F.encode(x, "fp32"), x.view(np.uint32))
    assert np.array_equal(F.round_to(x, "fp32").view(np.uint32), x.view(np.uint32))


# --- the specs are computed from the bits: compare with torch.finfo ---------------------------

@pytest.mark.parametrize("fmt", list(F.FORMATS))
def test_spec_numbers_match_finfo(fmt):
    f = F.FORMATS[fmt]
    fi = torch.finfo(getattr(torch, f.torch_dtype))
    assert (f.max, f.min_normal, f.epsilon) == (fi.max, fi.tiny, fi.eps)
    assert f.min_subnormal == fi.smallest_normal * 2.0 ** -f.mantissa_bits
    assert f.bits == fi.bits
    top = F.decode(np.array([f.max_code], f.code_dtype), fmt)[0]
    assert top == np.float32(f.max)


def test_int_range_and_layouts():
    assert F.int_range(8) == (np.iinfo(np.int8).min, np.iinfo(np.int8).max)
    assert F.int_range(8, signed=False) == (0, np.iinfo(np.uint8).max)
    assert F.int_range(4) == (-8, 7)
    for lay in F.LAYOUTS:
        assert sum(n for _, n in lay.fields) == lay.bits


# --- fields ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", SMALL)
def test_fields_reassemble_the_code(fmt):
    f = F.FORMATS[fmt]
    for v, kind in [(1.0, "normal"), (-2.5, "normal"), (f.min_subnormal, "subnormal"),
                    (0.0, "zero"), (float("nan"), "nan"), (1e30, None)]:
        r = F.fields(v, fmt)
        assert int(r.bits, 2) == r.code == (r.sign << (f.bits - 1)) | (r.exponent << f.mantissa_bits) | r.mantissa
        assert len(r.bits) == f.bits
        if kind:
            assert r.kind == kind, (v, r)
        ref = torch_decode(torch_encode(np.array([v], np.float32), fmt), fmt)[0]
        assert (np.isnan(ref) and np.isnan(r.value)) or r.value == ref
    assert F.fields(1.0, fmt).exponent == f.bias
    assert F.fields(1e30, fmt).kind == ("normal" if fmt in ("bf16", "fp8_e4m3") else "inf")


# --- properties ---------------------------------------------------------------------------------

finite32 = hnp.arrays(np.float32, st.integers(1, 64),
                      elements=st.floats(width=32, allow_nan=False, allow_infinity=True))


@settings(max_examples=150, deadline=None)
@given(x=finite32, fmt=st.sampled_from(SMALL))
def test_round_to_is_idempotent_and_monotone(x, fmt):
    r = F.round_to(x, fmt)
    assert np.array_equal(F.round_to(r, fmt).view(np.uint32), r.view(np.uint32))
    order = np.argsort(x, kind="stable")
    rs = r[order].astype(np.float64)  # x holds no NaN; e4m3 saturates inf, so r holds none either
    assert not np.isnan(rs).any()
    assert (rs[1:] >= rs[:-1]).all()


@settings(max_examples=150, deadline=None)
@given(v=st.floats(width=32, allow_nan=False, allow_infinity=False), fmt=st.sampled_from(SMALL))
def test_round_to_is_nearest_and_sign_symmetric(v, fmt):
    f = F.FORMATS[fmt]
    x = np.array([v, -v], np.float32)
    r = F.round_to(x, fmt)
    assert r[0] == -r[1] or (np.isnan(r).all())
    if abs(v) <= f.max:
        # no representable value is strictly nearer than the one chosen
        code = int(F.encode(np.array([abs(v)], np.float32), fmt)[0])
        near = np.array([max(code - 1, 0), code, min(code + 1, f.max_code)], dtype=np.int64)
        cand = F.decode(near.astype(f.code_dtype), fmt).astype(np.float64)
        assert abs(float(r[0]) - v) <= np.abs(cand - abs(v)).min() + 0.0


# --- bad input -----------------------------------------------------------------------------------

def test_bad_input_raises_valueerror_with_expected_and_got():
    with pytest.raises(ValueError, match="expected dtype float32, got float64"):
        F.encode(np.ones(3), "fp16")
    with pytest.raises(ValueError, match="torch tensor"):
        F.encode(torch.ones(3), "fp16")
    with pytest.raises(ValueError, match="unknown format 'fp7'"):
        F.encode(np.ones(3, np.float32), "fp7")
    with pytest.raises(ValueError, match="expected dtype uint8.*got uint16"):
        F.decode(np.ones(3, np.uint16), "fp8_e4m3")
    with pytest.raises(ValueError, match="expected dtype uint16.*got int64"):
        F.decode(np.ones(3, np.int64), "bf16")
    with pytest.raises(ValueError, match="unknown format"):
        F.decode(np.ones(3, np.uint8), "int8")
    with pytest.raises(ValueError, match="unknown format"):
        F.encode(np.ones(3, np.float32), torch.float16)  # a dtype object, not a name
    with pytest.raises(ValueError, match="one real number"):
        F.fields(np.ones(3), "fp16")
    with pytest.raises(ValueError, match="positive integer"):
        F.int_range(0)


def test_aliases():
    assert F.spec("float8_e4m3fn") is F.FORMATS["fp8_e4m3"]
    assert F.spec("bfloat16") is F.FORMATS["bf16"]


# --- the chapter's exercise checkers reject the usual mistakes ------------------------------------

def test_ch02_checkers_reject_common_mistakes():
    from qlearn.exercises import check

    def truncate_bf16(x):
        return (x.view(np.uint32) >> 16).astype(np.uint16)

    def no_subnormals(code):
        s, e, m = code >> 15, (code >> 10) & 31, code & 1023
        v = float("inf") if e == 31 and m == 0 else float("nan") if e == 31 else (1 + m / 1024) * 2.0 ** (e - 15)
        return -v if s else v

    def limits_without_reserved_exponent(e, m):
        bias = 2 ** (e - 1) - 1
        return (2 - 2.0 ** -m) * 2.0 ** (2 ** e - 1 - bias), 2.0 ** (1 - bias), 2.0 ** (1 - bias - m), 2.0 ** -m

    assert not check("ch02.round_to_bf16", truncate_bf16).passed
    assert check("ch02.round_to_bf16", lambda x: F.encode(x, "bf16")).passed
    assert not check("ch02.decode_fp16", no_subnormals).passed
    assert not check("ch02.format_limits", limits_without_reserved_exponent).passed
    assert not check("ch02.first_missing_integer", lambda m: 2 ** m + 1).passed
    assert not check("ch02.bf16_epsilon", 2.0 ** -8).passed


def test_encode_a_million_values_under_a_second():
    import time

    x = np.random.default_rng(3).standard_normal(N_RANDOM).astype(np.float32)
    for fmt in SMALL:
        best = np.inf
        for _ in range(3):  # best of 3: the machine is shared
            t0 = time.perf_counter()
            F.encode(x, fmt)
            best = min(best, time.perf_counter() - t0)
        assert best < 1.0, f"encode of 1e6 values to {fmt} took {best:.2f} s"
