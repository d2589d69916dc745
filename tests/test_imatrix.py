"""qlearn.imatrix: mean squared activation per input column."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlearn.imatrix import compute_imatrix


def test_mean_of_squares_per_column():
    a = np.array([[1.0, -2.0, 0.0], [3.0, 2.0, 0.5]], dtype=np.float32)
    im = compute_imatrix({"blk.0.attn_q.weight": a, "other": a[:1]})
    np.testing.assert_allclose(im["blk.0.attn_q.weight"], [5.0, 4.0, 0.125])
    np.testing.assert_allclose(im["other"], [1.0, 4.0, 0.0])
    assert im["other"].dtype == np.float32


def test_torch_input():
    a = torch.randn(10, 4)
    np.testing.assert_allclose(compute_imatrix({"x": a})["x"], (a.double() ** 2).mean(0).numpy(), rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tokens=st.integers(1, 50), cols=st.integers(1, 40),
       c=st.floats(0.01, 100))
def test_scaling_and_token_order(seed, tokens, cols, c):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((tokens, cols)).astype(np.float32)
    base = compute_imatrix({"w": a})["w"]
    np.testing.assert_allclose(compute_imatrix({"w": (a * np.float32(c))})["w"], base * c * c, rtol=1e-5)
    np.testing.assert_allclose(compute_imatrix({"w": a[rng.permutation(tokens)]})["w"], base, rtol=1e-6)
    # splitting the tokens into two captures and averaging with weights gives the same answer
    if tokens > 1:
        k = tokens // 2
        parts = compute_imatrix({"a": a[:k], "b": a[k:]})
        np.testing.assert_allclose((k * parts["a"] + (tokens - k) * parts["b"]) / tokens, base, rtol=1e-5)


@pytest.mark.parametrize(
    "acts,match",
    [
        ({}, "non-empty dict"),
        ([np.ones((2, 2))], "non-empty dict"),
        ({"w": np.ones(4, np.float32)}, r"\(tokens, in_features\)"),
        ({"w": np.ones((2, 3, 4), np.float32)}, "flatten"),
        ({"w": np.ones((0, 4), np.float32)}, "empty"),
        ({"w": np.array([[1.0, np.nan]], np.float32)}, "NaN/Inf"),
        ({"w": np.array([[1.0, np.inf]], np.float32)}, "NaN/Inf"),
        ({"w": np.ones((2, 2), np.int32)}, "floating point"),
    ],
)
def test_bad_input(acts, match):
    with pytest.raises(ValueError, match=match):
        compute_imatrix(acts)
