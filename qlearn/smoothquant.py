"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights, then W8A8.

Activations have a few channels that are 10-100x larger than the rest, so one int8 scale per
token (or per tensor) wastes most of the grid on them. Weights are flat. SmoothQuant divides
input channel ``j`` by ``s_j`` and multiplies weight column ``j`` by ``s_j`` -- the product is
unchanged -- with

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

so ``alpha`` says how much of the difficulty moves into the weights. The division is folded into
the preceding LayerNorm/RMSNorm weight, so inference costs nothing extra. Matches
mit-han-lab/smoothquant (``smooth_ln_fcs`` and its ``quantize_*_absmax`` fake quantizers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qlearn import uniform, validate
from qlearn._checks import check_matrix, check_pair

__all__ = ["act_scales", "weight_scales", "smooth_scales", "smooth", "fake_quant_w8a8",
           "absmax_fake_quant", "W8A8Result", "W8A8Linear", "smooth_model", "w8a8_model"]

STAT_FLOOR = 1e-5    # weight statistic and smoothing factor floor: a dead channel gets s = 1e-5, not 0/inf
INT8_QMAX = 127      # symmetric int8 grid [-127, 127]
WEIGHT_MODES = ("per_channel", "per_tensor")
ACT_MODES = ("per_token", "per_tensor")


def act_scales(X) -> torch.Tensor:
    """Per-channel activation statistic: ``max_t |X[t, j]|``.

    Args:
        X: (tokens, in_features) float32 calibration inputs of the layer.
    Returns:
        (in_features,) float32.
    """
    X = check_matrix(X, "X", "(tokens, in_features)")
    return X.abs().amax(dim=0)


def weight_scales(*Ws) -> torch.Tensor:
    """Per-input-channel weight statistic over all linears reading the same input.

    Args:
        *Ws: one or more (out_i, in_features) float32 weights (e.g. q, k, v).
    Returns:
        (in_features,) float32: ``max over linears and rows of |W[:, j]|``, clamped at 1e-5.
    """
    if not Ws:
        raise ValueError("weight_scales needs at least one weight, got none "
                         "(pass the weights of every linear that reads the smoothed input)")
    Ws = [check_matrix(w, f"Ws[{i}]", "(out_features, in_features)") for i, w in enumerate(Ws)]
    n_in = {w.shape[1] for w in Ws}
    if len(n_in) != 1:
        raise ValueError(f"all weights must share in_features, got {[tuple(w.shape) for w in Ws]}")
    per_linear = torch.cat([w.abs().max(dim=0, keepdim=True)[0] for w in Ws], dim=0)
    return per_linear.max(dim=0)[0].clamp(min=STAT_FLOOR)


def _check_alpha(alpha) -> float:
    if not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha (migration strength) must be a number in [0, 1], got {alpha!r} "
                         f"(0.5 is the paper's default; 0.75-0.85 for harder models)")
    return float(alpha)


def _vector(v, name: str) -> torch.Tensor:
    """A 1-D float statistic as a (1, n) float32 tensor (numpy or torch in)."""
    if isinstance(v, np.ndarray):
        v = torch.from_numpy(validate.float_array(v, name, ndim=1, allow_empty=True))
    if not isinstance(v, torch.Tensor):
        raise validate.ArgumentTypeError(f"{name} must be a 1-D float tensor, got "
                                         f"{type(v).__name__}")
    return v.reshape(1, -1)


def smooth_scales(act_scales, weight_scales, alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's factors ``s = clamp(act^alpha / weight^(1 - alpha), 1e-5)``.

    Args:
        act_scales, weight_scales: (in_features,) float32 from :func:`act_scales` and
            :func:`weight_scales`.
        alpha: migration strength in [0, 1].
    Returns:
        (in_features,) float32.
    """
    a = check_matrix(_vector(act_scales, "act_scales"), "act_scales", "(in_features,)")[0]
    w = check_matrix(_vector(weight_scales, "weight_scales"), "weight_scales",
                     "(in_features,)")[0]
    if a.shape != w.shape:
        raise ValueError(f"act_scales and weight_scales must have the same length, got "
                         f"{a.shape[0]} and {w.shape[0]}")
    alpha = _check_alpha(alpha)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=STAT_FLOOR)


def smooth(norm: torch.nn.Module, linears, scales) -> None:
    """Fold the smoothing factors into a norm and the linears it feeds, in place.

    ``norm.weight /= s`` (and ``norm.bias /= s`` for LayerNorm; RMSNorm has no bias), every
    ``linear.weight[:, j] *= s_j``. The block computes the same function afterwards (exactly in
    real arithmetic); its input to the linears is now ``x / s``.

    Args:
        norm: LayerNorm or RMSNorm-like module with ``.weight (in_features,)``.
        linears: the nn.Linear modules reading the norm's output.
        scales: (in_features,) float32.
    """
    linears = list(linears)
    s = check_matrix(_vector(scales, "scales"), "scales", "(in_features,)")[0]
    if getattr(norm, "weight", None) is None or norm.weight.shape != s.shape:
        raise ValueError(f"norm must have a weight of shape {tuple(s.shape)}, got "
                         f"{None if getattr(norm, 'weight', None) is None else tuple(norm.weight.shape)}")
    for fc in linears:
        if fc.weight.shape[1] != s.shape[0]:
            raise ValueError(f"every linear must have in_features = {s.shape[0]}, got weight "
                             f"{tuple(fc.weight.shape)}")
    with torch.no_grad():
        norm.weight.div_(s)
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(s)
        for fc in linears:
            fc.weight.mul_(s.view(1, -1))


@validate.renamed(n_bits="bits", mode="granularity")
def absmax_fake_quant(t: torch.Tensor, granularity: str, bits: int = 8) -> torch.Tensor:
    """Dynamic symmetric absmax fake quantization (upstream ``quantize_*_absmax``).

    ``scale = clamp(absmax, 1e-5) / 127``, ``t -> round(t / scale) * scale``, with absmax per row
    (``"per_channel"`` of a weight, ``"per_token"`` of activations) or over the tensor
    (``"per_tensor"``): :mod:`qlearn.uniform`'s ``"symmetric"`` grid with a range floor of
    1e-5. ``t: (rows, cols) float32``; returns a new tensor. ``n_bits=`` and ``mode=`` are
    deprecated aliases of ``bits=`` and ``granularity=`` (as in :func:`qlearn.uniform.block_size_for`).
    """
    t = check_matrix(t, "t", "(rows, cols)")
    bits = validate.bits(bits, lo=2, hi=8)
    granularity = validate.choice(granularity, "granularity",
                                  ("per_tensor", "per_channel", "per_token"))
    x = t.detach().numpy()
    bs = x.shape if granularity == "per_tensor" else (1, x.shape[1])
    scale, zero = uniform.choose_qparams(x, bits, bs, "symmetric", range_floor=STAT_FLOOR)
    q = uniform.quantize_affine(x, scale, zero, bits, block_size=bs, mapping="symmetric")
    return torch.from_numpy(q.dequantize())


@dataclass
class W8A8Result:
    """Output of :func:`fake_quant_w8a8`.

    Attributes:
        out: (tokens, out_features) float32, ``X_q @ W_q^T``.
        X_q: (tokens, in_features) float32, fake-quantized activations.
        W_q: (out_features, in_features) float32, fake-quantized weight.
    """
    out: torch.Tensor
    X_q: torch.Tensor
    W_q: torch.Tensor


def fake_quant_w8a8(X, W, weight: str = "per_channel", act: str = "per_token") -> W8A8Result:
    """Simulated W8A8 linear: int8 weights and dynamically int8-quantized activations.

    Args:
        X: (tokens, in_features) float32 (already smoothed if you smooth: ``X / s``).
        W: (out_features, in_features) float32 (``W * s``).
        weight: "per_channel" (one scale per output row) or "per_tensor".
        act: "per_token" (one scale per row of X) or "per_tensor".
    Returns:
        :class:`W8A8Result` (out, X_q, W_q).
    """
    W, X = check_pair(W, X)
    if weight not in WEIGHT_MODES:
        raise ValueError(f"weight must be one of {WEIGHT_MODES}, got {weight!r}")
    if act not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
    with torch.no_grad():
        W_q = absmax_fake_quant(W, weight)
        X_q = absmax_fake_quant(X, act)
        return W8A8Result(X_q @ W_q.T, X_q, W_q)


# --- a whole model (structure comes from qlearn.adapters) -------------------------------------

class W8A8Linear(torch.nn.Module):
    """A linear whose weight is int8 fake-quantized once and whose input is fake-quantized per call.

    ``x: (..., in) float32 -> (..., out)``; weight per output channel or per tensor, activations per
    token or per tensor (dynamic absmax, as upstream's fake-quant ``W8A8Linear``).
    """

    def __init__(self, linear: torch.nn.Linear, weight: str = "per_channel", act: str = "per_token"):
        super().__init__()
        if weight not in WEIGHT_MODES or act not in ACT_MODES:
            raise ValueError(f"weight must be one of {WEIGHT_MODES} and act one of {ACT_MODES}, "
                             f"got {weight!r}, {act!r}")
        self.act = act
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.weight = torch.nn.Parameter(absmax_fake_quant(linear.weight.detach().float(), weight),
                                             requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = absmax_fake_quant(x.reshape(-1, x.shape[-1]), self.act).reshape(x.shape)
        return torch.nn.functional.linear(x_q, self.weight, self.bias)


def smooth_model(model: torch.nn.Module, tokens: torch.Tensor, alpha: float = 0.5,
                 progress: bool = True) -> torch.nn.Module:
    """SmoothQuant on a decoder: a deep copy with every norm -> linears group smoothed.

    For each layer's groups whose ``prev`` is a norm (input_layernorm -> q,k,v and
    post_attention_layernorm -> gate,up; see ``qlearn.adapters.scale_groups``), the activation
    statistic is the max |x| over the calibration tokens (captured on the original model, as
    upstream), and :func:`smooth` folds the factors in. Linear -> linear groups are left alone.

    Args:
        tokens: (batch, seq) int64 calibration tokens.
    """
    import copy

    from tqdm.auto import tqdm

    from qlearn import adapters

    alpha = _check_alpha(alpha)
    q = copy.deepcopy(model).eval()
    linears = adapters.find_linears(q)
    names = {id(m): n for n, m in linears.items()}
    groups = [g for layer in adapters.decoder_layers(q) for g in adapters.scale_groups(layer)
              if not isinstance(g.prev, torch.nn.Linear)]
    first = [names[id(g.linears[0])] for g in groups]
    inputs = adapters.capture_inputs(q, tokens, first)
    with torch.no_grad():
        for g, n in tqdm(list(zip(groups, first)), desc=f"SmoothQuant alpha={alpha}", disable=not progress):
            s = smooth_scales(act_scales(inputs[n]), weight_scales(*[fc.weight.detach() for fc in g.linears]),
                              alpha)
            smooth(g.prev, g.linears, s)
    return q


def w8a8_model(model: torch.nn.Module, weight: str = "per_channel", act: str = "per_token") -> torch.nn.Module:
    """A deep copy whose linears (``qlearn.adapters.find_linears``, lm_head kept) run W8A8 fake quant."""
    import copy

    from qlearn import adapters

    q = copy.deepcopy(model)
    return adapters.replace_linears(q, lambda name, lin: W8A8Linear(lin, weight, act))
