"""AWQ against llm-awq / AutoAWQ outputs on the medium layer (tests/data/gptq_awq/)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn import awq

TAGS = {False: "llmawq_w4g128", True: "autoawq_duo_w4g128"}


@pytest.fixture(scope="module")
def layer(data_dir):
    d = np.load(data_dir / "gptq_awq" / "medium_layer.npz")
    return torch.from_numpy(d["W"]), torch.from_numpy(d["X"])


@pytest.fixture(scope="module")
def oracle(data_dir):
    return np.load(data_dir / "gptq_awq" / "awq_medium.npz")


@pytest.fixture(scope="module")
def results(layer):
    W, X = layer
    return {duo: awq.awq_quantize(W, X, 4, 128, duo_scaling=duo) for duo in (False, True)}


def test_outlier_layer_reproduces_the_oracle_data(layer, oracle):
    W, X, channels = awq.outlier_layer()
    assert torch.equal(W, layer[0]) and torch.equal(X, layer[1])
    assert channels.tolist() == oracle["outlier_channels"].tolist()


def test_rtn_codes_equal_llmawq(layer, oracle):
    Q, codes, scales, zeros = awq.pseudo_quantize(layer[0], 4, 128)
    assert codes.dtype == torch.uint8 and scales.shape == (512, 8) and zeros.shape == (512, 8)
    np.testing.assert_array_equal(codes.numpy(), oracle["llmawq_w4g128_rtn_codes"])
    rebuilt = (codes.float().reshape(512, 8, 128) - zeros[..., None]) * scales[..., None]
    np.testing.assert_array_equal(rebuilt.reshape(512, 1024).numpy(), Q.numpy())


@pytest.mark.parametrize("duo", [False, True])
def test_scale_search_matches_upstream(results, oracle, duo):
    r, tag = results[duo], TAGS[duo]
    assert r.best_ratio == float(oracle[f"{tag}_best_ratio"])
    np.testing.assert_allclose(r.scales.numpy(), oracle[f"{tag}_scales"], rtol=1e-5)
    if not duo:
        np.testing.assert_allclose(r.loss_history.numpy(), oracle[f"{tag}_loss_history"], rtol=1e-4)
        np.testing.assert_allclose(r.x_mean_abs.numpy(), oracle[f"{tag}_x_mean_abs"], rtol=1e-6)


def test_duo_false_equals_autoawq_noduo(results, oracle):
    r = results[False]
    np.testing.assert_allclose(r.scales.numpy(), oracle["autoawq_noduo_w4g128_scales"], rtol=1e-5)
    assert r.best_ratio == float(oracle["autoawq_noduo_w4g128_best_ratio"])
    same = np.mean(r.clip_max_val.numpy() == oracle["autoawq_noduo_w4g128_clip_max_val"])
    assert same >= 0.95
    full, scale_only = oracle["autoawq_noduo_w4g128_errors"]
    assert r.errors["full"] == pytest.approx(full, rel=1e-2)
    assert r.errors["scale_only"] == pytest.approx(scale_only, rel=1e-2)


@pytest.mark.parametrize("duo", [False, True])
def test_clip_factors_match_upstream(results, oracle, duo):
    r, tag = results[duo], TAGS[duo]
    assert r.clip_max_val.shape == (512, 8)
    assert np.mean(r.clip_max_val.numpy() == oracle[f"{tag}_clip_max_val"]) >= 0.95
    if not duo:
        assert np.mean(r.clip_only_max_val.numpy() == oracle[f"{tag}_clip_only_max_val"]) >= 0.95


def test_final_codes_and_errors_llmawq(results, oracle):
    r, tag = results[False], TAGS[False]
    assert np.mean(r.codes.numpy() == oracle[f"{tag}_codes"]) >= 0.95
    np.testing.assert_allclose(r.qscales.numpy(), oracle[f"{tag}_qscales"], rtol=1e-5)
    want = oracle[f"{tag}_errors"]  # RTN, scale only, clip only, full
    got = [r.errors[k] for k in ("rtn", "scale_only", "clip_only", "full")]
    np.testing.assert_allclose(got, want, rtol=1e-2)
    assert r.errors["rtn"] == pytest.approx(want[0], rel=1e-6)  # RTN is deterministic


def test_duo_scaling_errors_autoawq(results, oracle):
    full, scale_only = oracle["autoawq_duo_w4g128_errors"]
    assert results[True].errors["full"] == pytest.approx(full, rel=1e-2)
    assert results[True].errors["scale_only"] == pytest.approx(scale_only, rel=1e-2)


@pytest.mark.parametrize("duo", [False, True])
def test_awq_beats_rtn_by_a_third(results, duo):
    e = results[duo].errors
    assert e["full"] <= 0.65 * e["rtn"]
    assert e["full"] < e["scale_only"] < e["rtn"] and e["clip_only"] < e["rtn"]


def test_w_hat_is_q_over_s_in_x_space(layer, results):
    W, X = layer
    r = results[False]
    e = awq.output_error(X, W, r.W_hat)
    assert e == pytest.approx(r.errors["full"], rel=1e-4)


def test_search_clip_alone_and_factors_on_grid(layer, oracle):
    W, X = layer
    mv = awq.search_clip(W, X, 4, 128)
    assert np.mean(mv.numpy() == oracle["llmawq_w4g128_clip_only_max_val"]) >= 0.95
    absmax = W.abs().reshape(512, 8, 128).amax(-1)
    ratio = (mv / absmax).numpy()
    assert np.all(np.min(np.abs(ratio[..., None] - np.array(awq.CLIP_SHRINKS)), axis=-1) < 1e-6)


def test_search_scale_with_custom_forward_equals_default(layer):
    W, X = layer
    X = X[:256]
    a = awq.search_scale(W, X, 4, 128)
    b = awq.search_scale([W[:200], W[200:]], X, 4, 128,
                         forward=lambda ws: X @ torch.cat(ws).T)
    assert a.best_ratio == b.best_ratio
    np.testing.assert_allclose(a.loss_history.numpy(), b.loss_history.numpy(), rtol=1e-5)
    assert a.loss_history.shape == (20,) and a.ratio_grid[3] == pytest.approx(0.15)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 8), st.sampled_from([16, 32, 64]), st.integers(0, 2**31 - 1))
def test_pseudo_quantize_properties(bits, gs, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(8, 128, generator=g) * torch.rand(1, 128, generator=g) * 3
    Q, codes, scales, zeros = awq.pseudo_quantize(W, bits, gs)
    assert int(codes.max()) <= 2 ** bits - 1
    # min and max of each group are representable up to half a step
    err = (Q - W).abs().reshape(8, -1, gs)
    assert torch.all(err <= scales[..., None] * 0.5 + 1e-6)
    # the group min maps to code 0 or 1 step above (zero is rounded)
    assert torch.all(codes.reshape(8, -1, gs).amin(-1) <= 1)


def test_upstream_zero_clamp_quirk_on_one_sided_groups():
    # zero = clamp(-round(min/scale), 0, 15): a group entirely above 0 gets zero 0, so its grid
    # is [0, max - min] instead of [min, max]; a constant group collapses to 15 * 1e-5 / 15.
    W = torch.full((2, 128), 0.25)
    Q, codes, scales, zeros = awq.pseudo_quantize(W, 4, 128)
    assert torch.all(zeros == 0) and torch.allclose(Q, torch.full_like(W, 1e-5))
    W = torch.linspace(1.0, 2.0, 128).repeat(2, 1)
    Q, codes, scales, zeros = awq.pseudo_quantize(W, 4, 128)
    assert float(Q.max()) == pytest.approx(1.0, rel=1e-6)  # max - min, not max


# --- bad input --------------------------------------------------------------------------------

def _wx(n=600, n_in=256):
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, n_in, generator=g), torch.randn(n, n_in, generator=g)


def test_wrong_feature_count():
    W, X = _wx()
    with pytest.raises(ValueError, match="in_features = 256"):
        awq.search_scale(W, X[:, :200])
    with pytest.raises(ValueError, match="in_features = 256"):
        awq.awq_quantize(W, X[:, :200])


def test_too_few_tokens_for_clip_search():
    W, X = _wx(n=100)
    with pytest.raises(ValueError, match="512"):
        awq.search_clip(W, X)
    with pytest.raises(ValueError, match="512"):
        awq.awq_quantize(W, X)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_inf(bad):
    W, X = _wx()
    X[3, 4] = bad
    with pytest.raises(ValueError, match="finite"):
        awq.search_scale(W, X)
    W[0, 0] = bad
    with pytest.raises(ValueError, match="finite"):
        awq.pseudo_quantize(W)


def test_group_size_must_divide():
    W, X = _wx()
    with pytest.raises(ValueError, match="divide in_features = 256, got 100"):
        awq.pseudo_quantize(W, 4, 100)
    with pytest.raises(ValueError, match="group_size"):
        awq.search_scale(W, X, 4, 0)


def test_dtype_shape_empty_bits():
    W, X = _wx()
    with pytest.raises(ValueError, match="float32"):
        awq.pseudo_quantize(W.double())
    with pytest.raises(ValueError, match="2-D"):
        awq.pseudo_quantize(W[0])
    with pytest.raises(ValueError, match="empty"):
        awq.search_scale(W, X[:0])
    with pytest.raises(ValueError, match="w_bit"):
        awq.pseudo_quantize(W, 9)
