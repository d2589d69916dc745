"""SmoothQuant against mit-han-lab/smoothquant outputs on the medium layer (x10 outliers)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn import smoothquant as sq
from qlearn.awq import output_error


@pytest.fixture(scope="module")
def layer(data_dir):
    d = np.load(data_dir / "gptq_awq" / "medium_layer.npz")
    return torch.from_numpy(d["W"]), torch.from_numpy(d["X"])


@pytest.fixture(scope="module")
def oracle(data_dir):
    return np.load(data_dir / "gptq_awq" / "smoothquant_medium.npz")


def test_statistics_match(layer, oracle):
    W, X = layer
    np.testing.assert_allclose(sq.act_scales(X).numpy(), oracle["x10_act_scales"], rtol=1e-6)
    np.testing.assert_allclose(sq.weight_scales(W).numpy(), oracle["x10_weight_scales"], rtol=1e-6)


@pytest.mark.parametrize("alpha,key", [(0.5, "a05"), (0.8, "a08")])
def test_smooth_scales_match(layer, oracle, alpha, key):
    W, X = layer
    s = sq.smooth_scales(sq.act_scales(X), sq.weight_scales(W), alpha)
    np.testing.assert_allclose(s.numpy(), oracle[f"x10_smooth_scales_{key}"], rtol=1e-6)


def test_w8a8_error_table(layer, oracle):
    W, X = layer
    a, w = sq.act_scales(X), sq.weight_scales(W)
    rows = zip(oracle["x10_w8a8_table_alpha"], oracle["x10_w8a8_table_wq"],
               oracle["x10_w8a8_table_aq"], oracle["x10_w8a8_table_err"])
    for alpha, wq, aq, want in rows:
        if alpha == 0:  # the table's alpha 0 means "no smoothing"
            Xs, Ws = X, W
        else:
            s = sq.smooth_scales(a, w, float(alpha))
            Xs, Ws = X / s, W * s
        r = sq.fake_quant_w8a8(Xs, Ws, weight=str(wq), act=str(aq))
        assert output_error(X, W, r.W_q, r.X_q) == pytest.approx(want, rel=1e-3), (alpha, wq, aq)
        np.testing.assert_allclose(r.out.numpy(), (r.X_q @ r.W_q.T).numpy())


def test_weight_scales_pools_linears():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)
    want = torch.maximum(a.abs().amax(0), b.abs().amax(0))
    assert torch.equal(sq.weight_scales(a, b), want)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_smooth_in_place_keeps_the_function(kind):
    torch.manual_seed(0)
    d = 16
    if kind == "layernorm":
        norm = torch.nn.LayerNorm(d)
        with torch.no_grad():
            norm.bias.normal_()
    else:
        norm = torch.nn.RMSNorm(d)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    fcs = [torch.nn.Linear(d, 5), torch.nn.Linear(d, 7, bias=False)]
    x = torch.randn(10, d) * torch.linspace(0.1, 20, d)
    before = [fc(norm(x)) for fc in fcs]
    w_before = [fc.weight.detach().clone() for fc in fcs]
    nw = norm.weight.detach().clone()
    s = sq.smooth_scales(sq.act_scales(norm(x).detach()), sq.weight_scales(*w_before), 0.5)
    sq.smooth(norm, fcs, s)
    assert torch.equal(norm.weight.detach(), nw / s)
    for fc, wb in zip(fcs, w_before):
        assert torch.equal(fc.weight.detach(), wb * s)
    for fc, y in zip(fcs, before):
        torch.testing.assert_close(fc(norm(x)), y, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["per_tensor", "per_channel", "per_token"]))
def test_absmax_fake_quant_on_grid(seed, mode):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(6, 40, generator=g) * 3
    q = sq.absmax_fake_quant(t, mode)
    amax = t.abs().max() if mode == "per_tensor" else t.abs().amax(-1, keepdim=True)
    step = amax / 127
    assert torch.all((q - t).abs() <= step / 2 * (1 + 1e-5))
    assert torch.allclose(q / step, torch.round(q / step), atol=1e-3)


def test_bad_input():
    W, X = torch.randn(4, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"alpha .* \[0, 1\], got 1.5"):
        sq.smooth_scales(sq.act_scales(X), sq.weight_scales(W), 1.5)
    with pytest.raises(ValueError, match="alpha"):
        sq.smooth_scales(sq.act_scales(X), sq.weight_scales(W), -0.1)
    with pytest.raises(ValueError, match="in_features = 8"):
        sq.fake_quant_w8a8(X[:, :6], W)
    Xn = X.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        sq.act_scales(Xn)
    with pytest.raises(ValueError, match="weight must be one of"):
        sq.fake_quant_w8a8(X, W, weight="per_token")
    with pytest.raises(ValueError, match="act must be one of"):
        sq.fake_quant_w8a8(X, W, act="per_channel")
    with pytest.raises(ValueError, match="same length"):
        sq.smooth_scales(torch.ones(8), torch.ones(7), 0.5)
    with pytest.raises(ValueError, match="float32"):
        sq.act_scales(X.double())
    with pytest.raises(ValueError, match="at least one"):
        sq.weight_scales()
    with pytest.raises(ValueError, match="shape"):
        sq.smooth(torch.nn.LayerNorm(6), [torch.nn.Linear(8, 2)], torch.ones(8))
