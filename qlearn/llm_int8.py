"""LLM.int8() (Dettmers et al., 2022): int8 matmul with the outlier columns kept in 16 bits.

Rows of the input and rows of the weight are quantized to int8 with their own absmax
("vector-wise"); input columns holding any value with ``|a| >= threshold`` are taken out of the
int8 product and multiplied separately in fp16. Reproduces bitsandbytes 0.50.2 on CPU (its
default/torch backend) bit for bit, including two details the paper does not mention:

* the int32 accumulator is dequantized with the constant ``6.200124e-05`` (the CUDA kernel uses
  ``6.200012e-05 = 1/127^2``), and
* the outlier part multiplies the fp16 inputs with the *int8-dequantized* weight columns, not with
  the original fp16 weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qlearn import uniform, validate
from qlearn._checks import check_pair

__all__ = ["int8_matmul", "vectorwise_quant", "Int8MatmulResult", "DEQUANT_CONST"]

INT8_QMAX = 127.0                    # symmetric int8 rows: round(a * 127 / absmax)
DEQUANT_CONST = 6.200124e-05         # bitsandbytes' CPU/default int32 -> float factor (~1/127^2)
WEIGHT_DEQUANT = 7.874015718698502e-3  # bitsandbytes' 1/127 for int8 -> float weight columns


@dataclass
class Int8MatmulResult:
    """Result of :func:`int8_matmul`.

    Attributes:
        out: (tokens, out_features) float16.
        outlier_cols: (n_outlier,) int64, input columns taken out of the int8 product.
        CA: (tokens, in_features) int8, quantized input (outlier columns zeroed).
        SCA: (tokens,) float32, row absmax of the input without its outlier elements.
        CB: (out_features, in_features) int8, quantized weight.
        SCB: (out_features,) float32, row absmax of the weight.
    """
    out: torch.Tensor
    outlier_cols: torch.Tensor
    CA: torch.Tensor
    SCA: torch.Tensor
    CB: torch.Tensor
    SCB: torch.Tensor


def vectorwise_quant(A: torch.Tensor, threshold: float = 0.0):
    """Row-wise absmax int8 quantization of a float16 matrix, with optional outlier columns.

    The grid is :mod:`qlearn.uniform`'s ``"symmetric"`` at 8 bits, one block per row, with
    bitsandbytes' arithmetic: the codes are ``round(a * (127 / absmax))``, where torch evaluates
    ``127 / absmax`` as ``127 * (1 / absmax)`` (passed to the core as ``inv_scale``). A row that is all zero (after removing outliers) gets
    codes 0.

    Args:
        A: (rows, cols) float16.
        threshold: elements with ``|a| >= threshold`` are outliers (0 disables). They are
            excluded from their row's absmax, and their whole columns are zeroed in the codes
            (when rows > 1).
    Returns:
        ``(codes (rows, cols) int8, row_absmax (rows,) float32, outlier_cols (k,) int64)``.
    """
    if not isinstance(A, torch.Tensor) or A.dtype != torch.float16:
        raise validate.ArgumentTypeError(f"A must be a float16 torch tensor, got "
                        f"{A.dtype if isinstance(A, torch.Tensor) else type(A).__name__}")
    if A.dim() != 2 or A.numel() == 0:
        raise ValueError(f"A must be a non-empty (rows, cols) matrix, got shape {tuple(A.shape)}")
    if not bool(torch.isfinite(A).all()):
        raise ValueError("A must be finite, got NaN/Inf entries")
    threshold = validate.number(threshold, "threshold", lo=0.0)
    A = A.clone()
    outlier_cols = torch.empty(0, dtype=torch.int64)
    if threshold > 0.0:
        outliers = A.abs() >= threshold
        outlier_cols = torch.argwhere(outliers.any(dim=0)).view(-1)
        A[outliers] = 0
    row_absmax = torch.max(A.abs(), dim=1).values.float()
    absmax = row_absmax.numpy()[:, None]
    safe = np.where(absmax > 0, absmax, np.float32(1.0))
    inv = np.float32(INT8_QMAX) * (np.float32(1.0) / safe)  # torch's 127.0 / t is 127 * (1/t)
    scale = safe / np.float32(INT8_QMAX)
    q = uniform.quantize_affine(A.float().numpy(), scale, np.zeros(scale.shape, np.int32), 8,
                                block_size=(1, A.shape[1]), mapping="symmetric", inv_scale=inv)
    codes = torch.from_numpy(q.codes)
    if A.shape[0] > 1 and outlier_cols.numel():
        codes[:, outlier_cols] = 0
    return codes, row_absmax, outlier_cols


def int8_matmul(A, W, threshold: float = 6.0) -> Int8MatmulResult:
    """``A @ W^T`` the LLM.int8() way (bitsandbytes ``bnb.matmul`` with an int8 weight).

    Args:
        A: (tokens, in_features) float32 (cast to float16 first, as bitsandbytes does).
        W: (out_features, in_features) float32 (cast to float16, then int8 per output row).
        threshold: outlier threshold on ``|A|`` (6.0 in the paper; 0 = no decomposition).
    Returns:
        :class:`Int8MatmulResult` with the float16 output and every intermediate.
    """
    W, A = check_pair(W, A)
    if not isinstance(threshold, (int, float)) or threshold < 0:
        raise ValueError(f"threshold must be a number >= 0 (0 disables the decomposition), "
                         f"got {threshold!r}")
    A16, W16 = A.to(torch.float16), W.to(torch.float16)
    if not torch.isfinite(A16).all() or not torch.isfinite(W16).all():
        raise ValueError("A and W must fit float16 (|x| <= 65504), got values that overflow to "
                         "Inf when cast (rescale the inputs)")
    with torch.no_grad():
        CA, SCA, cols = vectorwise_quant(A16, threshold)
        CB, SCB, _ = vectorwise_quant(W16)
        # int8 x int8 -> int32: exact in float64 (|sum| <= in_features * 127^2 << 2^53)
        acc = torch.matmul(CA.double(), CB.double().T).to(torch.int32)
        out = (acc * (SCA.unsqueeze(-1) * SCB.unsqueeze(0)) * DEQUANT_CONST).to(torch.float16)
        if threshold > 0.0 and cols.numel():
            sub_A = A16[:, cols].contiguous()
            sub_W = (CB[:, cols].contiguous() * SCB.view(-1, 1) * WEIGHT_DEQUANT).to(torch.float16).t()
            out = out.addmm(sub_A, sub_W)
    return Int8MatmulResult(out, cols, CA, SCA, CB, SCB)
