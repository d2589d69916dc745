"""LLM.int8() against bitsandbytes 0.50.2 (CPU) on the shared case (tests/data/gptq_awq/)."""

import numpy as np
import pytest
import torch

from qlearn import llm_int8


@pytest.fixture(scope="module")
def case(data_dir):
    return np.load(data_dir / "gptq_awq" / "llm_int8_case.npz")


@pytest.fixture(scope="module")
def result(case):
    return llm_int8.int8_matmul(torch.from_numpy(case["X"]), torch.from_numpy(case["W"]), 6.0)


def test_intermediates_exact(case, result):
    assert result.outlier_cols.tolist() == case["outlier_cols"].tolist()
    for k in ("CA", "SCA", "CB", "SCB"):
        got = getattr(result, k).numpy()
        assert got.dtype == case[k].dtype, k
        np.testing.assert_array_equal(got, case[k], err_msg=k)


def test_output_exact_with_and_without_decomposition(case, result):
    # exact: the op order of bitsandbytes' default backend is kept
    assert result.out.dtype == torch.float16
    np.testing.assert_array_equal(result.out.float().numpy(), case["out_int8_decomp"])
    r0 = llm_int8.int8_matmul(torch.from_numpy(case["X"]), torch.from_numpy(case["W"]), 0.0)
    assert r0.outlier_cols.numel() == 0
    np.testing.assert_array_equal(r0.out.float().numpy(), case["out_int8_nodecomp"])


def test_errors_vs_fp32(case, result):
    ref = case["out_fp32"].astype(np.float64)
    err = lambda y: float(((y.float().numpy().astype(np.float64) - ref) ** 2).sum() / (ref ** 2).sum())
    r0 = llm_int8.int8_matmul(torch.from_numpy(case["X"]), torch.from_numpy(case["W"]), 0.0)
    np.testing.assert_allclose([err(result.out), err(r0.out)], case["errors"], rtol=1e-6)
    assert err(result.out) < err(r0.out) / 5


def test_threshold_boundary_is_inclusive():
    A = torch.zeros(3, 4)
    A[0, 1], A[1, 2], A[2, 3] = 6.0, 5.99, -7.0
    A[:, 0] = 1.0
    r = llm_int8.int8_matmul(A, torch.randn(2, 4), 6.0)
    assert r.outlier_cols.tolist() == [1, 3]
    assert torch.all(r.CA[:, [1, 3]] == 0)


def test_matches_bitsandbytes_live(case):
    bnb = pytest.importorskip("bitsandbytes")
    A = torch.from_numpy(case["X"]).half()
    B = torch.from_numpy(case["W"]).half()
    for th in (6.0, 0.0):
        state = bnb.MatmulLtState()
        state.threshold, state.has_fp16_weights, state.is_training = th, False, False
        want = bnb.matmul(A, B, state=state)  # B is (out, in), as in Linear8bitLt
        got = llm_int8.int8_matmul(A.float(), B.float(), th).out
        assert torch.equal(got, want.to(torch.float16))


def test_bad_input():
    with pytest.raises(ValueError, match="in_features = 8"):
        llm_int8.int8_matmul(torch.randn(3, 7), torch.randn(2, 8))
    with pytest.raises(ValueError, match="finite"):
        llm_int8.int8_matmul(torch.tensor([[float("nan"), 1.0]]), torch.randn(2, 2))
    with pytest.raises(ValueError, match="float16"):
        llm_int8.int8_matmul(torch.tensor([[1e6, 1.0]]), torch.randn(2, 2))
    with pytest.raises(ValueError, match="threshold"):
        llm_int8.int8_matmul(torch.randn(3, 2), torch.randn(2, 2), -1.0)
