"""qlearn.nf4 against bitsandbytes 0.50.2 (CPU) golden vectors, bit for bit.

tests/data/nf4/{golden,tables}.npz are copies of the shared oracle (see its README);
short_blocks.npz is bitsandbytes' output for sizes that are not a multiple of the block size
(regenerate with tests/data/nf4/make_short_blocks.py).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from qlearn import nf4

BACKENDS = ("numpy", "numba")


@pytest.fixture(scope="module")
def golden(data_dir):
    return np.load(data_dir / "nf4" / "golden.npz")


@pytest.fixture(scope="module")
def tables(data_dir):
    return np.load(data_dir / "nf4" / "tables.npz")


@pytest.fixture(scope="module")
def short(data_dir):
    return np.load(data_dir / "nf4" / "short_blocks.npz")


def bits(a):
    """float32 bit patterns, so -0.0 != +0.0 and comparisons are exact."""
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def parse(cfg: str):
    """'nf4_bs64_dq' -> ('nf4', 64, True)."""
    parts = cfg.split("_")
    return parts[0], int(parts[1][2:]), parts[-1] == "dq"


def _all_configs():
    from pathlib import Path

    g = np.load(Path(__file__).parent / "data" / "nf4" / "golden.npz")
    return [(c, str(cfg)) for c in ("gaussian", "outliers", "edge") for cfg in g[f"{c}__configs"]]


CONFIGS = _all_configs()


# --- tables -------------------------------------------------------------------------------------

def test_code_tables_match_bitsandbytes(tables):
    assert (bits(nf4.NF4_CODE) == bits(tables["nf4_code"])).all()
    assert (bits(nf4.FP4_CODE) == bits(tables["fp4_code"])).all()
    assert (bits(nf4._FP4_DEQUANT) == bits(tables["fp4_code_cpu_dequant_lut"])).all()
    mid, order = nf4._midpoints_and_order(nf4.NF4_CODE)
    assert (bits(mid) == bits(tables["nf4_midpoints"])).all()
    assert (order == np.arange(16)).all()
    mid, order = nf4._midpoints_and_order(nf4.FP4_CODE)
    assert (bits(mid) == bits(tables["fp4_midpoints_sorted"])).all()
    assert (order == tables["fp4_sort_order"]).all()


def test_nf4_derived_from_normal_quantiles_exactly(tables):
    # Tolerance: none. With bitsandbytes' precision (float32 probabilities, float64 quantiles,
    # float32 normalization) the derivation reproduces the shipped table bit for bit.
    derived = nf4.nf4_code_from_quantiles()
    assert derived.dtype == np.float32 and derived.shape == (16,)
    assert (bits(derived) == bits(tables["nf4_code"])).all()
    # the construction: exact zero, 7 negative and 8 positive levels, symmetric range [-1, 1]
    assert (derived == 0).sum() == 1 and (derived < 0).sum() == 7 and (derived > 0).sum() == 8
    assert derived[0] == -1 and derived[-1] == 1


def test_dynamic_code_and_cpu_lut(tables):
    assert (bits(nf4.dynamic_code()) == bits(tables["dynamic_code_signed"])).all()
    assert (nf4._DYNAMIC_LUT == tables["dynamic_lut65536"]).all()


# --- golden vectors -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case,cfg", CONFIGS)
def test_golden_bit_exact(golden, case, cfg, backend):
    x = golden[f"{case}__x"]
    qt, bs, dq = parse(cfg)
    k = f"{case}__{cfg}__"
    packed, state = nf4.quantize_4bit(x, blocksize=bs, quant_type=qt, compress_statistics=dq,
                                      backend=backend)
    assert packed.dtype == np.uint8 and packed.shape == (x.size // 2,)
    assert (packed == golden[k + "packed"]).all()
    if dq:
        assert state.absmax.dtype == np.uint8
        assert (state.absmax == golden[k + "absmax_q"]).all()
        assert (bits(state.nested_absmax) == bits(golden[k + "nested_absmax"])).all()
        ours, theirs = int(bits(state.offset)), int(bits(golden[k + "offset"]))
        assert abs(ours - theirs) <= 1, "offset must equal bitsandbytes' within 1 ulp (README)"
        state.offset = np.float32(golden[k + "offset"])     # the stored offset ...
        assert (bits(state.absmax_dequant()) == bits(golden[k + "absmax_dequant"])).all()
    else:
        assert (bits(state.absmax) == bits(golden[k + "absmax"])).all()
    y = nf4.dequantize_4bit(packed, state, backend=backend)  # ... reproduces the rest exactly
    assert y.shape == x.shape and y.dtype == np.float32
    assert (bits(y) == bits(golden[k + "dq"])).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_last_block_like_bitsandbytes(short, backend):
    for name in short["names"]:
        k = f"{name}__"
        x = short[k + "x"]
        bs, dq = (int(v) for v in short[k + "meta"])
        qt = str(short[k + "qt"])
        assert x.size % bs, "fixture must exercise a short last block"
        packed, state = nf4.quantize_4bit(x, bs, qt, bool(dq), backend=backend)
        assert (packed == short[k + "packed"]).all(), name
        if dq:
            assert (state.absmax == short[k + "absmax"]).all(), name
            assert (bits(state.nested_absmax) == bits(short[k + "nested_absmax"])).all(), name
            assert bits(state.offset) == bits(short[k + "offset"]), name
        else:
            assert (bits(state.absmax) == bits(short[k + "absmax"])).all(), name
        y = nf4.dequantize_4bit(packed, state, backend=backend)
        # bitsandbytes' FP4 zero at nibble 8 is +0.0 or -0.0 depending on its CPU path
        # (see test_bitsandbytes_dequantizes_our_state); compare FP4 by value
        if qt == "nf4":
            assert (bits(y) == bits(short[k + "dq"])).all(), name
        else:
            assert (y == short[k + "dq"]).all(), name


def test_short_block_zero_tail_stores_clamped_absmax(short):
    # a full all-zero block stores absmax 0; a short all-zero last block stores 1e-38
    x = np.zeros(64 + 32, np.float32)
    _, state = nf4.quantize_4bit(x, 64)
    assert state.absmax[0] == 0 and state.absmax[1] == nf4.ABSMAX_FLOOR


# --- serialization ------------------------------------------------------------------------------

@pytest.mark.parametrize("qt,dq", [("nf4", False), ("nf4", True), ("fp4", True)])
def test_as_dict_safetensors_round_trip(tmp_path, qt, dq):
    from safetensors.torch import load_file, save_file

    x = np.random.default_rng(5).standard_normal((48, 700)).astype(np.float32)
    packed, state = nf4.quantize_4bit(x, 128, qt, dq)
    d = state.as_dict()
    expected = {"absmax", "quant_map", f"quant_state.bitsandbytes__{qt}"}
    if dq:
        expected |= {"nested_absmax", "nested_quant_map"}
    assert set(d) == expected
    path = tmp_path / "w.safetensors"
    save_file({"weight": torch.from_numpy(packed), **{f"weight.{k}": v for k, v in d.items()}},
              str(path))
    loaded = load_file(str(path))
    back = nf4.QuantState.from_dict({k: v for k, v in loaded.items() if k != "weight"})
    for f in ("blocksize", "quant_type", "shape", "dtype", "nested_blocksize"):
        assert getattr(back, f) == getattr(state, f), f
    for f in ("absmax", "nested_absmax", "code", "nested_code"):
        a, b = getattr(state, f), getattr(back, f)
        assert (a is None) == (b is None), f
        if a is not None:
            assert a.dtype == b.dtype and (a.view(np.uint8) == b.view(np.uint8)).all(), f
    if dq:
        assert bits(back.offset) == bits(state.offset)
    y0 = nf4.dequantize_4bit(packed, state)
    y1 = nf4.dequantize_4bit(loaded["weight"].numpy(), back)
    assert (bits(y0) == bits(y1)).all()


def test_from_dict_rejects_missing_metadata():
    _, state = nf4.quantize_4bit(np.ones(64, np.float32))
    d = state.as_dict()
    del d["quant_state.bitsandbytes__nf4"]
    with pytest.raises(ValueError, match="quant_state"):
        nf4.QuantState.from_dict(d)


# --- bitsandbytes itself ------------------------------------------------------------------------

@pytest.mark.parametrize("qt,bs,dq", [("nf4", 64, False), ("nf4", 64, True), ("nf4", 32, True),
                                      ("nf4", 4096, True), ("fp4", 64, False),
                                      ("fp4", 256, True)])
def test_bitsandbytes_dequantizes_our_state(qt, bs, dq):
    bnb_f = pytest.importorskip(
        "bitsandbytes.functional",
        reason="bitsandbytes not installed (optional: pip install qlearn[bnb]); the golden-vector "
               "tests already pin its CPU semantics")
    rng = np.random.default_rng(bs + dq)
    x = rng.standard_normal((64, 1000)).astype(np.float32)
    x[0, :40] = 0  # zeros: NF4 code 7, FP4 nibbles 0 and 8
    x[1, :40] = rng.choice([1e-3, -1e-3], 40)
    packed, state = nf4.quantize_4bit(x, bs, qt, dq)
    bnb_state = bnb_f.QuantState.from_dict(state.as_dict(), device="cpu")
    y_bnb = bnb_f.dequantize_4bit(torch.from_numpy(packed).reshape(-1, 1), bnb_state)
    y_bnb = y_bnb.reshape(x.shape).numpy()
    y = nf4.dequantize_4bit(packed, state)
    if qt == "nf4":
        assert (bits(y_bnb) == bits(y)).all()
    else:
        # FP4 nibble 8: bitsandbytes' scalar native kernel (the oracle's machine) outputs -0.0, as
        # we do; its AVX-512 kernel and its torch fallback (blocksize >= 2048 on AVX-512) output
        # +0.0. Every other element must match bit for bit, those must be zeros.
        nib = np.empty(x.size, np.uint8)
        nib[0::2], nib[1::2] = packed >> 4, packed & 15
        eight = (nib == 8).reshape(x.shape)
        assert eight.any()
        assert (bits(y_bnb)[~eight] == bits(y)[~eight]).all()
        assert (y_bnb[eight] == 0).all() and (y[eight] == 0).all()
    # and bitsandbytes' own quantizer produces our bytes and statistics
    pb, sb = bnb_f.quantize_4bit(torch.from_numpy(x), blocksize=bs, quant_type=qt,
                                 compress_statistics=dq)
    assert (pb.reshape(-1).numpy() == packed).all()
    assert (sb.absmax.numpy().view(np.uint8) == state.absmax.view(np.uint8)).all()


# --- reference vs numba, API behaviour ----------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(n_half=st.integers(1, 3000), bs=st.sampled_from(nf4.BLOCKSIZES),
       qt=st.sampled_from(nf4.QUANT_TYPES), dq=st.booleans(), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e4]), zero_frac=st.sampled_from([0.0, 0.5]))
def test_reference_and_numba_bitwise_equal(n_half, bs, qt, dq, seed, scale, zero_frac):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(2 * n_half) * scale).astype(np.float32)
    x[rng.random(x.size) < zero_frac] = 0
    p_ref, s_ref = nf4.quantize_4bit(x, bs, qt, dq, backend="numpy")
    p_nb, s_nb = nf4.quantize_4bit(x, bs, qt, dq, backend="numba")
    assert (p_ref == p_nb).all()
    assert (s_ref.absmax.view(np.uint8) == s_nb.absmax.view(np.uint8)).all()
    if dq:
        assert (bits(s_ref.nested_absmax) == bits(s_nb.nested_absmax)).all()
        assert bits(s_ref.offset) == bits(s_nb.offset)
    y_ref = nf4.dequantize_4bit(p_ref, s_ref, backend="numpy")
    y_nb = nf4.dequantize_4bit(p_ref, s_ref, backend="numba")
    assert (bits(y_ref) == bits(y_nb)).all()


def test_torch_in_torch_out_and_shapes():
    x = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(0))
    packed, state = nf4.quantize_4bit(x)
    assert isinstance(packed, torch.Tensor) and packed.dtype == torch.uint8
    assert packed.shape == (x.numel() // 2,) and state.shape == (3, 4, 64)
    y = nf4.dequantize_4bit(packed, state)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == torch.float32
    y_np = nf4.dequantize_4bit(packed.numpy(), state)
    assert isinstance(y_np, np.ndarray) and (bits(y_np) == bits(y.numpy())).all()
    # first element in the HIGH nibble
    x2 = np.array([1.0, -1.0] + [0.0] * 62, np.float32)
    p2, _ = nf4.quantize_4bit(x2)
    assert p2[0] == (15 << 4) | 0


def test_error_shrinks_with_block_size_and_nf4_beats_int4_on_gaussian():
    x = np.random.default_rng(1).standard_normal((128, 512)).astype(np.float32)
    mse = {(qt, bs): float(np.mean((nf4.fake_quantize_4bit(x, bs, qt) - x) ** 2))
           for qt in ("nf4", "fp4", "int4") for bs in (32, 256)}
    for qt in ("nf4", "fp4", "int4"):
        assert mse[(qt, 32)] < mse[(qt, 256)]
    assert mse[("nf4", 32)] < mse[("int4", 32)]


def test_bits_per_weight_matches_stored_bytes():
    x = np.zeros(2**20, np.float32)
    for bs in (64, 256):
        for dq in (False, True):
            packed, s = nf4.quantize_4bit(x, bs, "nf4", dq)
            stored = packed.nbytes + s.absmax.nbytes
            if dq:
                stored += s.nested_absmax.nbytes
            assert math.isclose(8 * stored / x.size, nf4.bits_per_weight(bs, dq))


@pytest.mark.parametrize("bad,match", [
    (np.ones(63, np.float32), "even number"),
    (np.zeros(0, np.float32), "empty"),
    (np.array([1.0, np.nan], np.float32), "finite"),
    (np.array([1.0, np.inf], np.float32), "finite"),
    (np.ones(64, np.int32), "float32"),
    (torch.ones(64, dtype=torch.int64), "float32"),
])
def test_bad_input_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        nf4.quantize_4bit(bad)


@pytest.mark.parametrize("kw,match", [
    (dict(quant_type="int4"), "quant_type"),
    (dict(quant_type="nf5"), "quant_type"),
    (dict(blocksize=48), "blocksize"),
    (dict(blocksize=8192), "blocksize"),
    (dict(backend="cuda"), "backend"),
])
def test_bad_arguments_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        nf4.quantize_4bit(np.ones(64, np.float32), **kw)


def test_dequantize_rejects_mismatched_inputs():
    packed, state = nf4.quantize_4bit(np.ones(128, np.float32))
    with pytest.raises(ValueError, match="bytes"):
        nf4.dequantize_4bit(packed[:10], state)
    with pytest.raises(ValueError, match="uint8"):
        nf4.dequantize_4bit(packed.astype(np.int32), state)
    with pytest.raises(ValueError, match="QuantState"):
        nf4.dequantize_4bit(packed, {"absmax": state.absmax})


# --- Linear4bit, LoRA, QLoRA wiring -------------------------------------------------------------

def test_linear4bit_and_lora_forward_and_gradients():
    from qlearn.lora import LoRALinear, freeze_all_but_lora

    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64)
    q = nf4.Linear4bit.from_linear(lin, blocksize=64, quant_type="nf4", compress_statistics=True)
    x = torch.randn(5, 128)
    w_hat = torch.from_numpy(nf4.fake_quantize_4bit(lin.weight.detach().numpy(), 64, "nf4", True))
    assert torch.equal(q(x), torch.nn.functional.linear(x, w_hat, lin.bias))
    assert q.storage_bytes() < lin.weight.numel() * 4 / 6
    lora = LoRALinear(q, r=4, alpha=8)
    model = torch.nn.Sequential(lora)
    assert freeze_all_but_lora(model) == 4 * (128 + 64)
    assert torch.equal(model(x), q(x))              # B = 0 at init: exactly the base
    model(x).square().sum().backward()
    assert lora.lora_B.grad is not None and lora.lora_B.grad.abs().sum() > 0
    assert q.bias.grad is None and not q.bias.requires_grad
    with pytest.raises(ValueError, match="r must"):
        LoRALinear(q, r=0)


def test_qlora_memory_report_counts_every_byte():
    from qlearn import qlora
    from qlearn.models import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(vocab_size=256, dim=64, n_layers=1, n_heads=2, n_kv_heads=1,
                                   ffn_dim=128))
    fp32_linears = sum(m.weight.numel() * 4 for n, m in model.named_modules()
                       if isinstance(m, torch.nn.Linear) and n.startswith("layers."))
    qlora.quantize_base(model, "nf4", 64, compress_statistics=True)
    n_train = qlora.add_lora(model, r=4)
    tokens = torch.randint(0, 256, (2000,))
    losses, opt = qlora.train(model, tokens, [p for p in model.parameters() if p.requires_grad],
                              steps=3, batch=2, seq=16, progress=False)
    assert len(losses) == 3 and all(np.isfinite(losses))
    rep = qlora.memory_report(model, opt)
    assert rep.base_fp32_equiv == fp32_linears
    assert rep.adapters == 4 * n_train and rep.optimizer == 2 * rep.adapters
    assert rep.base_4bit < rep.base_fp32_equiv / 6


def test_fake_quantize_int4_double_quant_uses_nested_scales():
    x = np.random.default_rng(2).standard_normal((64, 512)).astype(np.float32)
    plain = nf4.fake_quantize_4bit(x, 64, "int4")
    dq = nf4.fake_quantize_4bit(x, 64, "int4", compress_statistics=True)
    assert not np.array_equal(plain, dq)
    # same codes, only the block scales move (by the nested 8-bit error, well under 1%)
    assert np.abs(dq - plain).max() <= 0.01 * np.abs(x).max()


def test_dequantize_into_out_buffer():
    x = np.random.default_rng(3).standard_normal((64, 128)).astype(np.float32)
    packed, state = nf4.quantize_4bit(x, 64, "nf4", compress_statistics=True)
    buf = np.full(x.size, np.nan, np.float32)
    got = nf4.dequantize_4bit(packed, state, out=buf)
    np.testing.assert_array_equal(got, nf4.dequantize_4bit(packed, state))
    assert np.shares_memory(got, buf)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        nf4.dequantize_4bit(packed, state, out=np.empty(x.size, np.float64))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        nf4.dequantize_4bit(packed, state, out=np.empty(x.size - 2, np.float32))
    with pytest.raises(ValueError, match="numba backend only"):
        nf4.dequantize_4bit(packed, state, backend="numpy", out=buf)
