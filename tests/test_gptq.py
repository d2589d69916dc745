"""GPTQ and RTN against the IST-DASLab/gptq oracle (tests/data/gptq, see README there)."""

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from qlearn import gptq



@pytest.fixture(scope="module", autouse=True)
def two_threads():
    """The oracle ran with 2 torch threads; the blocked GEMM's summation order depends on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small(data_dir):
    d = np.load(data_dir / "gptq" / "gptq_small.npz")
    W, X = torch.from_numpy(d["W"]), torch.from_numpy(d["X"])
    return d, W, X, gptq.hessian(X)


def _gram(X):
    X64 = X.double().numpy()
    return X64.T @ X64


@pytest.fixture(scope="module")
def medium(data_dir):
    d = np.load(data_dir / "gptq" / "gptq_medium.npz")
    W, X, outliers = gptq.synthetic_layer()   # the documented recipe; the oracle stores checksums
    assert hashlib.sha256(W.tobytes()).hexdigest() == str(d["W_sha256"])
    assert hashlib.sha256(X.tobytes()).hexdigest() == str(d["X_sha256"])
    np.testing.assert_array_equal(outliers, d["outlier_channels"])
    W, X = torch.from_numpy(W), torch.from_numpy(X)
    return d, W, _gram(X), gptq.hessian(X)   # X only enters through its Gram matrix


def _run(d, W, H, i, backend="numba"):
    bits, gs, act, sym, static, bs = (int(v) for v in d["settings"][i])
    return gptq.gptq_quantize(W, H, bits=bits, group_size=gs, sym=bool(sym), act_order=bool(act),
                              static_groups=bool(static), blocksize=bs, backend=backend)


def _err(X, W, Q):
    """Relative output error; X is either the inputs or (square) their Gram matrix."""
    if X.shape[0] == X.shape[1] and isinstance(X, np.ndarray):
        return gptq.relative_output_error(None, W, Q, gram=X)
    return gptq.relative_output_error(X, W, Q)


def _check_against_oracle(d, W, X, r, i):
    k = f"{i:02d}"
    gs = int(d["settings"][i][1])
    rows = int(d["codes_rows"]) if "codes_rows" in d.files else W.shape[0]
    ref_codes = d[f"codes_{k}"]
    got = r.codes.numpy()[:rows]
    assert got.dtype == np.uint8 and r.codes.shape == W.shape
    assert (got == ref_codes).mean() >= 0.999
    assert np.abs(got.astype(int) - ref_codes.astype(int)).max() <= 2
    for name in ("scales", "zeros"):
        ref, mine = d[f"{name}_{k}"], getattr(r, name).numpy()
        assert mine.shape == ref.shape
        close = np.isclose(mine, ref, rtol=1e-5, atol=0).mean()
        assert close == 1.0 if gs == -1 else close >= 0.99, (name, close)
    np.testing.assert_array_equal(r.g_idx.numpy(), d[f"g_idx_{k}"])
    assert r.g_idx.dtype == torch.int32
    if f"perm_{k}" in d.files:
        np.testing.assert_array_equal(r.perm.numpy(), d[f"perm_{k}"])
    else:
        assert r.perm is None
    err = _err(X, W, r.Q)
    assert err == pytest.approx(d["err_gptq"][i], rel=1e-3)
    assert r.loss == pytest.approx(d["gptq_loss"][i], rel=1e-3)
    # Q is exactly the AutoGPTQ dequantization formula
    g = r.g_idx.long()
    torch.testing.assert_close(r.Q, r.scales[:, g] * (r.codes.float() - r.zeros[:, g]), rtol=0, atol=0)


@pytest.mark.parametrize("i", range(80))
def test_small_matches_reference(small, i):
    d, W, X, H = small
    _check_against_oracle(d, W, X, _run(d, W, H, i), i)


_RTN_ERR = {}   # (bits, group_size, sym) -> RTN error on the medium layer, shared across settings


@pytest.mark.parametrize("i", range(64))
def test_medium_matches_reference_and_beats_rtn(medium, i):
    d, W, G, H = medium
    r = _run(d, W, H, i)
    _check_against_oracle(d, W, G, r, i)
    bits, gs, act, sym = (int(v) for v in d["settings"][i][:4])
    if bits >= 3:  # the outlier layer: error feedback must clearly beat round-to-nearest
        key = (bits, gs, sym)
        if key not in _RTN_ERR:
            _RTN_ERR[key] = _err(G, W, gptq.rtn_quantize(W, bits, gs, bool(sym)).Q)
        rtn = _RTN_ERR[key]
        assert _err(G, W, r.Q) <= (0.70 if act else 0.80) * rtn


@pytest.mark.parametrize("i", [0, 13, 21, 30, 47, 50, 70, 79])
def test_numba_and_torch_backends_agree_bitwise(small, i):
    d, W, X, H = small
    a, b = _run(d, W, H, i, "numba"), _run(d, W, H, i, "torch")
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)
    assert torch.equal(a.zeros, b.zeros) and torch.equal(a.Q, b.Q)


def test_rtn_small_exact(small):
    d, W, X, H = small
    for j, (bits, gs, sym) in enumerate(d["rtn_settings"]):
        r = gptq.rtn_quantize(W, int(bits), int(gs), bool(sym))
        np.testing.assert_array_equal(r.codes.numpy(), d[f"rtn_codes_{j:02d}"])
        np.testing.assert_allclose(r.scales.numpy(), d[f"rtn_scales_{j:02d}"], rtol=1e-6, atol=0)
        np.testing.assert_allclose(r.zeros.numpy(), d[f"rtn_zeros_{j:02d}"], rtol=1e-6, atol=0)
        assert gptq.relative_output_error(X, W, r.Q) == pytest.approx(d["err_rtn_table"][j], rel=1e-6)


def test_rtn_medium_err_exact(medium):
    d, W, X, H = medium
    for j, (bits, gs, sym) in enumerate(d["rtn_settings"]):
        r = gptq.rtn_quantize(W, int(bits), int(gs), bool(sym))
        assert _err(X, W, r.Q) == pytest.approx(d["err_rtn_table"][j], rel=1e-6)


def test_hessian_running_rescale_and_3d_batches():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((4, 16, 24)).astype(np.float32)    # 4 sequences of 16 tokens
    acc = gptq.Hessian(24)
    acc.add_batch(X[:1])
    acc.add_batch(X[1:])
    assert acc.nsamples == 4
    flat = X.reshape(-1, 24).astype(np.float64)
    np.testing.assert_allclose(acc.H.numpy(), 2 / 4 * flat.T @ flat, rtol=1e-5, atol=1e-4)
    # a 2-D input counts as one sample, exactly as one reference add_batch call
    X2 = torch.from_numpy(X[0])
    inp = np.sqrt(2.0) * X2.t()
    torch.testing.assert_close(gptq.hessian(X2), inp.matmul(inp.t()), rtol=0, atol=0)


def test_hessian_scale_does_not_change_result(small):
    d, W, X, H = small
    a = gptq.gptq_quantize(W, H, 4, 32)
    b = gptq.gptq_quantize(W, H * 4, 4, 32)   # a power of two rescale is exact in float
    assert torch.equal(a.codes, b.codes)


def test_dead_input_channel_gets_zero_weight(small):
    d, W, X, H = small
    X = X.clone()
    X[:, 5] = 0
    r = gptq.gptq_quantize(W, gptq.hessian(X), 4, -1)
    assert torch.all(r.Q[:, 5] == 0)


# --- bad input ---------------------------------------------------------------------------------

def test_bad_input_errors(small):
    d, W, X, H = small
    with pytest.raises(ValueError, match="square"):
        gptq.gptq_quantize(W, H[:, :10])
    with pytest.raises(ValueError, match=r"\(128, 128\) to match"):
        gptq.gptq_quantize(W, H[:64, :64])
    Wn = W.clone(); Wn[3, 3] = float("nan")
    with pytest.raises(ValueError, match="W must be finite"):
        gptq.gptq_quantize(Wn, H)
    with pytest.raises(ValueError, match="W must be finite"):
        gptq.rtn_quantize(Wn, 4, -1, True)
    Hn = H.clone(); Hn[0, 1] = float("inf")
    with pytest.raises(ValueError, match="H must be finite"):
        gptq.gptq_quantize(W, Hn)
    with pytest.raises(ValueError, match="empty calibration"):
        gptq.hessian(torch.zeros(0, 128))
    with pytest.raises(ValueError, match="empty calibration"):
        gptq.Hessian(128).H
    with pytest.raises(ValueError, match="empty calibration"):
        gptq.gptq_quantize(W, torch.zeros(128, 128))
    with pytest.raises(ValueError, match="group_size must divide in_features = 128"):
        gptq.gptq_quantize(W, H, group_size=48)
    with pytest.raises(ValueError, match="group_size must be a positive int or -1"):
        gptq.rtn_quantize(W, 4, 0, True)
    for bits in (1, 9, 4.0):
        with pytest.raises(ValueError, match=r"bits must be an integer from 2 to 8"):
            gptq.gptq_quantize(W, H, bits=bits)
    with pytest.raises(ValueError, match="floating point"):
        gptq.gptq_quantize(W.to(torch.int32), H)
    with pytest.raises(ValueError, match=r"\(n_tokens, 128\)"):
        gptq.Hessian(128).add_batch(torch.zeros(4, 64))
    Xn = X.clone(); Xn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="X must be finite"):
        gptq.hessian(Xn)


def test_not_positive_definite_names_the_fix():
    W = torch.ones(4, 2)
    H = torch.tensor([[1.0, 2.0], [2.0, 1.0]])            # eigenvalues 3 and -1
    with pytest.raises(ValueError, match="calibration tokens.*larger percdamp"):
        gptq.gptq_quantize(W, H, bits=4)


# --- AutoGPTQ packing ----------------------------------------------------------------------------

def _random_result(rng, bits, out, cols, gs, sym):
    W = torch.from_numpy(rng.standard_normal((out, cols)).astype(np.float32))
    return gptq.rtn_quantize(W, bits, gs, sym)


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), out=st.sampled_from([32, 64, 96]),
       cols=st.sampled_from([32, 64, 128]), gs=st.sampled_from([-1, 32]), sym=st.booleans(),
       seed=st.integers(0, 2**16))
def test_pack_unpack_roundtrip(bits, out, cols, gs, sym, seed):
    r = _random_result(np.random.default_rng(seed), bits, out, cols, gs, sym)
    n_groups = r.scales.shape[1]
    fmt = "gptq" if bool((r.zeros > 0).all()) else "gptq_v2"
    p = gptq.pack_autogptq(r, format=fmt)
    assert p["qweight"].dtype == torch.int32 and p["qweight"].shape == (cols * bits // 32, out)
    assert p["qzeros"].dtype == torch.int32 and p["qzeros"].shape == (n_groups, out * bits // 32)
    assert p["scales"].dtype == torch.float16 and p["scales"].shape == (n_groups, out)
    assert p["g_idx"].dtype == torch.int32 and p["g_idx"].shape == (cols,)
    u = gptq.unpack_autogptq(p, format=fmt)
    assert u.bits == bits
    assert torch.equal(u.codes, r.codes) and torch.equal(u.zeros, r.zeros) and torch.equal(u.g_idx, r.g_idx)
    assert torch.equal(u.scales, r.scales.half().float())
    # with float32 scales the round trip is exact for everything
    u32 = gptq.unpack_autogptq(gptq.pack_autogptq(r, format=fmt, scales_dtype=torch.float32), format=fmt)
    assert torch.equal(u32.scales, r.scales) and torch.equal(u32.Q, r.Q)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_bit_layout_independent(bits):
    """Code k of each run of 32 input channels sits at bit bits*k of a little-endian stream."""
    rng = np.random.default_rng(bits)
    r = _random_result(rng, bits, 32, 64, -1, True)
    p = gptq.pack_autogptq(r)
    words = p["qweight"].numpy().view(np.uint32)
    for o in (0, 7, 31):
        for chunk in range(2):
            stream = sum(int(words[chunk * bits + w, o]) << (32 * w) for w in range(bits))
            expect = sum(int(r.codes[o, chunk * 32 + k]) << (bits * k) for k in range(32))
            assert stream == expect
    # the v1 format stores zero - 1 along the output dimension
    zwords = p["qzeros"].numpy().view(np.uint32)
    stream = sum(int(zwords[0, w]) << (32 * w) for w in range(bits))
    expect = sum((int(r.zeros[o, 0]) - 1) << (bits * o) for o in range(32))
    assert stream == expect


def test_pack_4bit_known_word():
    codes = torch.arange(8, dtype=torch.uint8).repeat(32, 4)        # (32, 32): 0..7 repeated
    r = gptq.GPTQResult(codes, torch.ones(32, 1), torch.full((32, 1), 8.0),
                        torch.zeros(32, dtype=torch.int32), None, torch.zeros(32, 32), None, 4, -1, True)
    p = gptq.pack_autogptq(r)
    assert p["qweight"].shape == (4, 32)
    assert int(p["qweight"][0, 0]) == 0x76543210
    assert int(p["qzeros"][0, 0]) == 0x77777777                    # zero 8 stored as 7


def test_pack_errors():
    r = _random_result(np.random.default_rng(0), 4, 32, 48, -1, True)
    with pytest.raises(ValueError, match="multiples of 32"):
        gptq.pack_autogptq(r)
    r = _random_result(np.random.default_rng(0), 4, 32, 64, -1, False)
    r.zeros[0, 0] = 0
    with pytest.raises(ValueError, match="gptq_v2"):
        gptq.pack_autogptq(r, format="gptq")
    with pytest.raises(ValueError, match="format"):
        gptq.pack_autogptq(r, format="awq")


def test_save_load_safetensors(tmp_path, small):
    d, W, X, H = small
    r = gptq.gptq_quantize(W, H, 4, 32, act_order=True)
    p = gptq.pack_autogptq(r)
    path = tmp_path / "model.safetensors"
    gptq.save_autogptq(path, {"layers.0.mlp.up_proj": p}, bits=4, group_size=32, sym=True, desc_act=True)
    layers, meta = gptq.load_autogptq(path)
    assert meta["bits"] == "4" and meta["desc_act"] == "true"
    q = layers["layers.0.mlp.up_proj"]
    for k in p:
        assert torch.equal(q[k], p[k])
    u = gptq.unpack_autogptq(q)
    assert torch.equal(u.codes, r.codes)
    torch.testing.assert_close(u.Q, gptq.dequantize(r.codes, r.scales.half().float(), r.zeros, r.g_idx),
                               rtol=0, atol=0)


# --- model-level GPTQ ----------------------------------------------------------------------------

class _TinyDecoder(torch.nn.Module):
    """A minimal decoder with Llama names (no attention softmax: enough to exercise the plumbing)."""

    def __init__(self, vocab=64, dim=64, ffn=128, n_layers=2):
        super().__init__()
        L = torch.nn.Linear
        self.embed_tokens = torch.nn.Embedding(vocab, dim)
        self.layers = torch.nn.ModuleList()
        for _ in range(n_layers):
            layer = torch.nn.Module()
            layer.self_attn = torch.nn.Module()
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                setattr(layer.self_attn, n, L(dim, dim, bias=False))
            layer.mlp = torch.nn.Module()
            layer.mlp.gate_proj, layer.mlp.up_proj = L(dim, ffn, bias=False), L(dim, ffn, bias=False)
            layer.mlp.down_proj = L(ffn, dim, bias=False)
            self.layers.append(layer)
        self.lm_head = L(dim, vocab, bias=False)

    def forward(self, tokens):
        h = self.embed_tokens(tokens)
        for ly in self.layers:
            a = ly.self_attn
            mix = torch.cumsum(a.v_proj(h) * torch.sigmoid(a.q_proj(h) + a.k_proj(h)), dim=1)
            h = h + a.o_proj(mix / torch.arange(1, h.shape[1] + 1)[None, :, None])
            m = ly.mlp
            h = h + m.down_proj(torch.nn.functional.silu(m.gate_proj(h)) * m.up_proj(h))
        return self.lm_head(h)


def test_gptq_model_sequential():
    torch.manual_seed(0)
    model = _TinyDecoder()
    tokens = torch.randint(0, 64, (4, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel, results = gptq.gptq_model(model, tokens, bits=4, group_size=32, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # original untouched
    assert len(results) == 14 and list(results)[0] == "layers.0.self_attn.q_proj"
    # layer 1 was calibrated on the outputs of the *quantized* layer 0
    from qlearn import adapters as ad
    half = _TinyDecoder()
    half.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name in [n for n in results if n.startswith("layers.0.")]:
            half.get_submodule(name).weight.copy_(results[name].Q)
    X = ad.capture_inputs(half, tokens, ["layers.1.mlp.up_proj"])["layers.1.mlp.up_proj"]
    W1 = model.get_submodule("layers.1.mlp.up_proj").weight
    expect = gptq.gptq_quantize(W1, gptq.hessian(X.reshape(4, 32, -1)), 4, 32)
    assert torch.equal(results["layers.1.mlp.up_proj"].codes, expect.codes)
    assert torch.equal(qmodel.get_submodule("layers.1.mlp.up_proj").weight, expect.Q)
    with torch.no_grad():
        y, yq = model(tokens), qmodel(tokens)
    assert 0 < float(((y - yq) ** 2).mean() / (y ** 2).mean()) < 0.05
    with pytest.raises(ValueError, match="non-empty"):
        gptq.gptq_model(model, torch.zeros(1, 0, dtype=torch.int64))
