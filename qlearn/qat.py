"""Quantization-aware training (QAT): train through the quantizer so the weights learn to live on
its grid.

``round()`` has a zero derivative almost everywhere, so a network whose forward pass quantizes its
weights cannot be trained by plain back-propagation. QAT keeps a full-precision copy of every
weight, quantizes it in the forward pass ("fake quantization": quantize then dequantize, on exactly
the grid of :mod:`qlearn.uniform`), and replaces the missing derivative by a surrogate:

* **STE**, the straight-through estimator (Bengio et al. 2013): treat ``round`` as the identity in
  the backward pass. :func:`fake_quantize_ste` passes the gradient unchanged where the code
  ``round(x / scale) + zero_point`` lies inside ``[qmin, qmax]`` and zeroes it where the value is
  clamped (the PyTorch ``FakeQuantize`` rule). The scale is chosen from the current weights
  (absmax / min-max, as :func:`qlearn.uniform.quantize` does) and treated as a constant.
* **LSQ**, learned step size quantization (Esser et al. 2020): the scale is a parameter too.
  :class:`LSQQuantizer` implements the paper's step-size gradient
  ``d x_hat / d s = round(x/s) - x/s`` inside the range, ``-Q_N`` / ``Q_P`` below / above it,
  multiplied by ``g = 1 / sqrt(N * Q_P)`` (N = elements sharing the step size).
* **BitNet b1.58** (Ma et al. 2024): :class:`BitLinear` keeps ternary weights ``{-1, 0, +1}``
  times one absmean scale per tensor (:func:`ternarize`) and 8-bit absmax activations per token.
  That ternary grid is :mod:`qlearn.uniform`'s 2-bit symmetric grid with another scale rule.

:func:`prepare` turns a model's linears (found only through :mod:`qlearn.adapters`) into
:class:`QATLinear` modules; :func:`train` runs next-token training; :func:`convert` replaces them by
:class:`QuantizedLinear` modules that hold real integer codes and scales (a
:class:`qlearn.uniform.QTensor`, equal to ``uniform.quantize_affine`` of the trained weights), whose
outputs equal the fake-quantized model's bit for bit.

Granularity is one ``block_size`` tuple, as everywhere in qlearn: per channel of an
``(out_features, in_features)`` weight is ``(1, in_features)``, per group of ``g`` is ``(1, g)``,
per tensor is the weight's shape.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qlearn import adapters, uniform, validate

__all__ = ["MAPPINGS", "METHODS", "fake_quantize_ste", "LSQQuantizer",
           "lsq_step_gradient", "QATLinear", "QuantizedLinear", "BitLinear", "ternarize",
           "prepare", "prepare_bitnet", "convert", "quantized_weights", "train", "TrainLog",
           "fake_quantize_activations", "blockwise_qat"]

MAPPINGS = tuple(uniform.MAPPINGS)  # the core's grids: symmetric, symmetric_offset, asymmetric, ...
METHODS = ("ste", "lsq")
TERNARY_EPS = 1e-5  # BitNet's floor on the absmean scale: an all-zero weight still gets a scale
ACT8_BITS = 8       # BitNet b1.58: 8-bit absmax activations, one scale per token


# --- validation --------------------------------------------------------------------------------

def _check_tensor(x: Any, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (QAT trains through autograd), got "
                        f"{type(x).__name__} (wrap numpy with torch.from_numpy)")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype} "
                         f"(convert with {name}.float())")
    if x.ndim == 0 or x.numel() == 0:
        raise ValueError(f"{name} must have at least one dimension and one element, got shape "
                         f"{tuple(x.shape)}")
    if not torch.isfinite(x.detach()).all():
        n_bad = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(f"{name} must be finite, got {n_bad} NaN/Inf value(s) of {x.numel()}")
    return x


def _check_mapping(mapping: Any) -> uniform.Mapping:
    """The core's :class:`qlearn.uniform.Mapping` of that name."""
    if not isinstance(mapping, str) or mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    return uniform.MAPPINGS[mapping]


def _blocked(x: torch.Tensor, block_size: tuple[int, ...]) -> torch.Tensor:
    """(d0, d1, ...) -> (d0/b0, b0, d1/b1, b1, ...): :mod:`qlearn.uniform`'s blocked view, in torch."""
    return uniform._blocked(x, block_size)


def _expand(p: torch.Tensor) -> torch.Tensor:
    """Per-block parameter (n0, n1, ...) -> broadcastable (n0, 1, n1, 1, ...)."""
    return p.reshape(sum(((n, 1) for n in p.shape), ()))


def _qparams(x: torch.Tensor, bits: int, block_size, mapping: str, clip: float = 1.0):
    """The core's :func:`qlearn.uniform.choose_qparams` of the detached ``x``, as float32
    tensors ``(scale, zero_point)`` of shape ``x.shape // block_size``."""
    scale, zp = uniform.choose_qparams(x.detach(), bits, block_size, mapping, clip)
    return torch.from_numpy(scale), torch.from_numpy(zp.astype(np.float32))


class _FakeQuantSTE(torch.autograd.Function):
    """x_hat = (clamp(round(x/s) + z, qmin, qmax) - z) * s; backward: straight through where
    the unclamped code is inside [qmin, qmax], zero where it was clamped."""

    @staticmethod
    def forward(ctx, xb, scale_e, zp_e, qmin, qmax):
        q = torch.round(xb / scale_e) + zp_e
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        return (q.clamp(qmin, qmax) - zp_e) * scale_e

    @staticmethod
    def backward(ctx, grad_out):
        (inside,) = ctx.saved_tensors
        return grad_out * inside, None, None, None, None


def fake_quantize_ste(x: torch.Tensor, bits: int, block_size=None, mapping: str = "symmetric",
                      *, scale: torch.Tensor | None = None, zero_point: torch.Tensor | None = None,
                      clip: float = 1.0) -> torch.Tensor:
    """Quantize-dequantize on :mod:`qlearn.uniform`'s grid, differentiable by the STE.

    Forward: ``(clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``, equal
    bit for bit to ``uniform.dequantize(uniform.quantize_affine(x, scale, zero_point, ...))``.
    Backward: ``d x_hat / d x = 1`` where ``round(x / scale) + zero_point`` is in
    ``[qmin, qmax]``, 0 where it is clamped. No gradient reaches ``scale`` (use
    :class:`LSQQuantizer` to learn it).

    Args:
        x: any shape ``(d0, d1, ...)``, float tensor (computed in float32).
        bits: 2..8. block_size: one entry per dimension (None = per tensor).
        mapping: a grid of :data:`qlearn.uniform.MAPPINGS` (``"symmetric"``: restricted range,
            zero point 0; ``"symmetric_offset"``: GPTQ's; ``"asymmetric"``;
            ``"asymmetric_minmax"``: AWQ's).
        scale, zero_point: a fixed grid, shape ``x.shape // block_size`` (default: chosen from
            the detached ``x`` by :func:`qlearn.uniform.choose_qparams`, with ``clip``); values beyond
            a fixed or clipped range saturate and get no gradient.
    Returns:
        x_hat: ``x.shape`` float32.
    """
    x = _check_tensor(x)
    bits = uniform._check_bits(bits)
    m = _check_mapping(mapping)
    bs = uniform._check_block_size(tuple(x.shape), block_size)
    n_blocks = tuple(n // b for n, b in zip(x.shape, bs))
    if scale is None:
        if zero_point is not None:
            raise ValueError("zero_point given without scale: pass both (a fixed grid) or neither")
        scale, zero_point = _qparams(x, bits, bs, mapping, clip)
    else:  # a fixed grid, checked by the core's own rules (fixed zero points, code range)
        to_np = lambda t: t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t  # noqa
        scale = torch.from_numpy(uniform._check_scale(to_np(scale), n_blocks,
                                                      np.dtype(np.float32)))
        if zero_point is None:
            zero_point = np.full(n_blocks, m.fixed_zero_point(bits) or 0)
        zero_point = torch.from_numpy(uniform._check_zero_point(
            to_np(zero_point), n_blocks, m, bits).astype(np.float32))
    qmin, qmax = m.code_range(bits)
    out = _FakeQuantSTE.apply(_blocked(x.float(), bs), _expand(scale), _expand(zero_point),
                              qmin, qmax)
    return out.reshape(x.shape)


def fake_quantize_activations(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-token symmetric absmax fake quantization of activations ``x: (..., features)``
    (one scale per row of the last axis, chosen on the fly), with the STE backward."""
    _check_tensor(x)
    flat = x.reshape(-1, x.shape[-1])
    return fake_quantize_ste(flat, bits, (1, flat.shape[1]), "symmetric").reshape(x.shape)


# --- LSQ ---------------------------------------------------------------------------------------

def lsq_step_gradient(x: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int) -> torch.Tensor:
    """The LSQ paper's ``d x_hat / d s`` per element (before the gradient scale ``g``).

    ``-x/s + round(x/s)`` where ``-Q_N < x/s < Q_P``, ``-Q_N`` where ``x/s <= -Q_N``, ``Q_P``
    where ``x/s >= Q_P``. x and step broadcast together; returns their broadcast shape.
    """
    v = x / step
    inner = torch.round(v) - v
    return torch.where(v <= -q_n, torch.full_like(v, -float(q_n)),
                       torch.where(v >= q_p, torch.full_like(v, float(q_p)), inner))


class _LSQFunction(torch.autograd.Function):
    """x_hat = round(clamp(x/s, -Q_N, Q_P)) * s with the paper's gradients (Esser et al. 2020)."""

    @staticmethod
    def forward(ctx, xb, step_e, grad_scale, q_n, q_p):
        v = xb / step_e
        ctx.save_for_backward(xb, step_e)
        ctx.grad_scale, ctx.q_n, ctx.q_p = grad_scale, q_n, q_p
        # + 0.0 turns round()'s -0.0 into +0.0, as the integer codes of the core dequantize
        return (torch.round(v.clamp(-q_n, q_p)) + 0.0) * step_e

    @staticmethod
    def backward(ctx, grad_out):
        xb, step_e = ctx.saved_tensors
        v = xb / step_e
        inside = (v > -ctx.q_n) & (v < ctx.q_p)
        grad_x = grad_out * inside
        d_step = grad_out * lsq_step_gradient(xb, step_e, ctx.q_n, ctx.q_p) * ctx.grad_scale
        axes = [ax for ax in range(xb.ndim) if step_e.shape[ax] == 1 and xb.shape[ax] != 1]
        grad_step = d_step.sum(dim=axes, keepdim=True) if axes else d_step
        return grad_x, grad_step, None, None, None


class LSQQuantizer(nn.Module):
    """Learned step size quantization of a weight (Esser et al. 2020), one step per block.

    The step size ``s`` (the grid's scale) is an ``nn.Parameter`` of shape
    ``weight.shape // block_size``; the grid is :mod:`qlearn.uniform`'s restricted symmetric one,
    ``Q_N = Q_P = 2**(bits-1) - 1``, zero point 0. The step's gradient is multiplied by
    ``g = 1 / sqrt(N * Q_P)`` with N the number of weights per step size (the paper's N for a
    per-tensor step), which keeps the step's updates in proportion to the weights'.

    Args:
        weight: the initial weight, any shape, float (only its shape and values are read).
        bits: 2..8. block_size: one entry per dimension (None = per tensor).
        init: ``"absmax"`` (the RTN scale: training starts exactly at the round-to-nearest model)
            or ``"lsq"`` (the paper's ``2 mean|w| / sqrt(Q_P)`` per block).
    """

    def __init__(self, weight: torch.Tensor, bits: int, block_size=None, init: str = "absmax"):
        super().__init__()
        weight = _check_tensor(weight, "weight")
        self.bits = uniform._check_bits(bits)
        self.block_size = uniform._check_block_size(tuple(weight.shape), block_size)
        self.shape = tuple(weight.shape)
        _, self.q_p = uniform.code_range(self.bits, True)
        self.q_n = self.q_p
        per_step = math.prod(self.block_size)
        self.grad_scale = 1.0 / math.sqrt(per_step * self.q_p)
        if init == "absmax":
            step, _ = _qparams(weight, self.bits, self.block_size, "symmetric")
        elif init == "lsq":
            wb = _blocked(weight.detach().float(), self.block_size)
            step = 2 * wb.abs().mean(dim=tuple(range(1, 2 * weight.ndim, 2))) / math.sqrt(self.q_p)
            step = torch.where(step > 0, step, torch.full_like(step, uniform.ALL_ZERO_SCALE))
        else:
            raise ValueError(f"init must be 'absmax' or 'lsq', got {init!r}")
        self.step = nn.Parameter(step.float().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """weight: ``self.shape`` -> fake-quantized weight, same shape, float32."""
        if tuple(weight.shape) != self.shape:
            raise ValueError(f"weight must have shape {self.shape}, got {tuple(weight.shape)}")
        if not bool((self.step.detach() > 0).all()):
            raise ValueError("a learned step size became <= 0; lower the learning rate")
        out = _LSQFunction.apply(_blocked(weight.float(), self.block_size),
                                 _expand(self.step), self.grad_scale,
                                 self.q_n, self.q_p)
        return out.reshape(self.shape)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) of the current grid, shape ``shape // block_size`` float32."""
        s = self.step.detach().clone()
        return s, torch.zeros_like(s)


# --- modules -----------------------------------------------------------------------------------

class QATLinear(nn.Module):
    """A linear layer that trains with fake-quantized weights (and optionally activations).

    weight: (out_features, in_features) float32 parameter (the full-precision "latent" weight);
    forward uses its fake quantization by the STE (``method="ste"``: scale from the current
    weights) or by an :class:`LSQQuantizer` (``method="lsq"``: learned scale).
    ``activations_bits``: also fake-quantize each input token (symmetric absmax, STE).
    """

    def __init__(self, linear: nn.Linear, bits: int, block_size, method: str = "ste",
                 mapping: str = "symmetric", activations_bits: int | None = None,
                 lsq_init: str = "absmax"):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        _check_mapping(mapping)
        if method == "lsq" and mapping != "symmetric":
            raise ValueError("method 'lsq' learns a step size on the symmetric grid (zero point 0); "
                             "use mapping='symmetric' (a learned offset is LSQ+, not implemented)")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.method, self.mapping = uniform._check_bits(bits), method, mapping
        self.block_size = uniform._check_block_size(tuple(linear.weight.shape), block_size)
        self.activations_bits = None if activations_bits is None else \
            uniform._check_bits(activations_bits)
        self.weight = nn.Parameter(linear.weight.detach().float().clone())
        self.bias = None if linear.bias is None else \
            nn.Parameter(linear.bias.detach().float().clone())
        self.lsq = LSQQuantizer(self.weight, bits, self.block_size, lsq_init) \
            if method == "lsq" else None

    def weight_hat(self) -> torch.Tensor:
        """The fake-quantized weight, (out_features, in_features) float32."""
        if self.lsq is not None:
            return self.lsq(self.weight)
        return fake_quantize_ste(self.weight, self.bits, self.block_size, self.mapping)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero_point) of the grid the forward pass uses now, per block, float32."""
        if self.lsq is not None:
            return self.lsq.qparams()
        return _qparams(self.weight, self.bits, self.block_size, self.mapping)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations_bits is not None:
            x = fake_quantize_activations(x, self.activations_bits)
        return F.linear(x, self.weight_hat(), self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_features} -> {self.out_features}, bits={self.bits}, "
                f"block_size={self.block_size}, method={self.method!r}, mapping={self.mapping!r}, "
                f"activations_bits={self.activations_bits}")


class QuantizedLinear(nn.Module):
    """A linear layer that stores its weight as integer codes and scales.

    qtensor: a :class:`qlearn.uniform.QTensor` (codes (out, in) int8/uint8, one scale and zero
    point per block). The forward pass multiplies by ``uniform.dequantize(qtensor)`` (computed
    once), and fake-quantizes its inputs per token when ``activations_bits`` is set.
    """

    def __init__(self, qtensor: uniform.QTensor, bias: torch.Tensor | None = None,
                 activations_bits: int | None = None):
        super().__init__()
        if not isinstance(qtensor, uniform.QTensor) or len(qtensor.shape) != 2:
            raise ValueError("qtensor must be a 2-D qlearn.uniform.QTensor (out_features, "
                             f"in_features), got {type(qtensor).__name__}")
        self.qtensor = qtensor
        self.out_features, self.in_features = qtensor.shape
        self.activations_bits = activations_bits
        self.register_buffer("weight", torch.from_numpy(uniform.dequantize(qtensor)))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations_bits is not None:
            x = fake_quantize_activations(x, self.activations_bits)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        q = self.qtensor
        return (f"{self.in_features} -> {self.out_features}, bits={q.bits}, "
                f"symmetric={q.symmetric}, block_size={q.block_size}, "
                f"activations_bits={self.activations_bits}")


# --- BitNet b1.58 ------------------------------------------------------------------------------

class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized value ``x_q`` exactly; backward: the gradient passes to ``x``
    unchanged (``x + (x_q - x).detach()`` would round differently in the last bit)."""

    @staticmethod
    def forward(ctx, x, x_q):
        return x_q

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out, None


def _absmean_scale(w: torch.Tensor) -> torch.Tensor:
    return torch.clamp(w.detach().float().abs().mean(), min=TERNARY_EPS)


def ternarize(w: Any) -> uniform.QTensor:
    """BitNet b1.58's absmean ternary quantization of a weight, one scale per tensor.

    ``gamma = max(mean|W|, 1e-5)``, ``codes = clamp(round(W / gamma), -1, 1)``: that is
    :mod:`qlearn.uniform`'s 2-bit symmetric grid ({-1, 0, +1}) with an absmean instead of an
    absmax scale. w: any shape, float (numpy or torch). Returns a QTensor with int8 codes
    in {-1, 0, 1}, scale (1, ..., 1) float32 = gamma, zero point 0, bits 2, per tensor.
    """
    t = torch.from_numpy(uniform._to_numpy_float32(w, "w")) if not isinstance(w, torch.Tensor) \
        else _check_tensor(w, "w")
    gamma = _absmean_scale(t)
    return uniform.quantize_affine(t.detach().float(), gamma.reshape((1,) * t.ndim).numpy(),
                                   np.zeros((1,) * t.ndim, np.int32), bits=2,
                                   block_size=tuple(t.shape), mapping="symmetric")


class BitLinear(nn.Module):
    """BitNet b1.58's linear layer (Ma et al. 2024), trained from a full-precision weight.

    Forward: ternary weights ``gamma * clamp(round(W / gamma), -1, 1)`` with
    ``gamma = mean|W|`` per tensor, and 8-bit absmax activations per token (the symmetric grid
    of :mod:`qlearn.uniform`, -127..127). Backward: the plain STE of the BitNet recipe, identity
    for weights and activations everywhere (also where a weight is clamped to +-1).
    weight: (out_features, in_features) float32 parameter. The paper's extra normalization
    before the activation quantizer is left out: the model's own RMSNorms stay as trained.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"BitLinear wraps an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().float().clone())
        self.bias = None if linear.bias is None else \
            nn.Parameter(linear.bias.detach().float().clone())

    def weight_hat(self) -> torch.Tensor:
        """Ternary weight ``gamma * codes``, (out_features, in_features) float32."""
        w = self.weight
        gamma = _absmean_scale(w)
        # + 0.0 turns round()'s -0.0 into +0.0, as the integer codes of the core dequantize
        w_q = (torch.clamp(torch.round(w.detach() / gamma), -1, 1) + 0.0) * gamma
        return _StraightThrough.apply(w, w_q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = fake_quantize_activations(x.detach(), ACT8_BITS)
        return F.linear(_StraightThrough.apply(x, x_q), self.weight_hat(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, ternary weights, 8-bit activations"


# --- whole models ------------------------------------------------------------------------------

def _group_block(in_features: int, group_size: int | None) -> tuple[int, int]:
    if group_size is None:
        return (1, in_features)
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) \
            or group_size < 1:
        raise ValueError(f"group_size must be a positive integer (or None for one scale per "
                         f"output channel), got {group_size!r}")
    if in_features % group_size:
        raise ValueError(f"group_size must divide every linear's in_features, got "
                         f"{group_size} for in_features {in_features} (pick a divisor, e.g. 64)")
    return (1, int(group_size))


def prepare(model: nn.Module, bits: int, group_size: int | None = None, method: str = "ste",
            activations_bits: int | None = None, mapping: str = "symmetric",
            lsq_init: str = "absmax") -> nn.Module:
    """A deep copy of ``model`` whose linears train with fake-quantized weights.

    Every linear of :func:`qlearn.adapters.find_linears` (the LM head and embedding stay full
    precision) becomes a :class:`QATLinear`: ``bits`` 2..8, one scale per ``group_size``
    consecutive inputs of each output row (None: one per output channel), ``method`` "ste" or
    "lsq", ``mapping`` one of :data:`MAPPINGS` (LSQ: "symmetric"), activations per token at
    ``activations_bits`` (None: full precision). ``model`` is not modified. All parameters of
    the copy are trainable.
    """
    validate.module(model, decoder=True)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    uniform._check_bits(bits)
    _check_mapping(mapping)
    for linear in adapters.find_linears(model).values():
        _group_block(linear.in_features, group_size)
    q = copy.deepcopy(model)

    def make(name, linear):
        return QATLinear(linear, bits, _group_block(linear.in_features, group_size), method,
                         mapping, activations_bits, lsq_init)

    adapters.replace_linears(q, make)
    for p in q.parameters():
        p.requires_grad_(True)
    return q


def prepare_bitnet(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose linears (from :mod:`qlearn.adapters`) are :class:`BitLinear`."""
    validate.module(model, decoder=True)
    q = copy.deepcopy(model)
    adapters.replace_linears(q, lambda name, linear: BitLinear(linear))
    for p in q.parameters():
        p.requires_grad_(True)
    return q


def _qat_modules(model: nn.Module) -> dict[str, nn.Module]:
    validate.module(model, decoder=True)
    linears = adapters.find_linears(model)
    found = {n: m for n, m in linears.items() if isinstance(m, (QATLinear, BitLinear))}
    if not found:
        raise ValueError(f"expected a model from qat.prepare or qat.prepare_bitnet, got a "
                         f"{type(model).__name__} none of whose linears is a QATLinear or "
                         f"BitLinear")
    return found


@torch.no_grad()
def quantized_weights(model: nn.Module) -> dict[str, uniform.QTensor]:
    """{linear name: QTensor} of a prepared model's current weights, on the grid its forward
    pass uses: ``uniform.quantize_affine(W, scale, zero_point, bits, block_size=, mapping=)``."""
    out = {}
    for name, m in _qat_modules(model).items():
        w = m.weight.detach().float()
        if isinstance(m, BitLinear):
            out[name] = ternarize(w)
            continue
        scale, zp = m.qparams()
        out[name] = uniform.quantize_affine(w, scale.numpy(), zp.numpy().astype(np.int32), m.bits,
                                            block_size=m.block_size, mapping=m.mapping)
    return out


@torch.no_grad()
def convert(model: nn.Module) -> nn.Module:
    """A deep copy of a prepared model whose QAT/BitNet linears hold real codes and scales.

    Each :class:`QATLinear` / :class:`BitLinear` becomes a :class:`QuantizedLinear` holding
    :func:`quantized_weights`' QTensor (activation quantization kept); its outputs equal the
    fake-quantized model's bit for bit. ``model`` is not modified.
    """
    qts = quantized_weights(model)
    q = copy.deepcopy(model)
    modules = adapters.find_linears(q)

    def make(name, m):
        act = ACT8_BITS if isinstance(m, BitLinear) else m.activations_bits
        return QuantizedLinear(qts[name], m.bias, act)

    adapters.replace_linears(q, lambda name, m: make(name, modules[name]), names=list(qts))
    for p in q.parameters():
        p.requires_grad_(False)
    return q.eval()


# --- training ----------------------------------------------------------------------------------

class TrainLog(dict):
    """What :func:`train` returns: ``loss`` (per step), ``steps``, ``tokens`` (seen),
    ``wall_s`` and ``cpu_s`` (process CPU time) of the run."""


def train(model: nn.Module, tokens: torch.Tensor, steps: int, lr: float = 1e-4, batch: int = 4,
          seq: int = 128, seed: int = 0, threads: int | None = 1, params=None,
          weight_decay: float = 0.0) -> TrainLog:
    """Next-token cross-entropy with AdamW on a prepared model, in place.

    tokens: (n,) int64 training stream (windows of ``seq + 1`` drawn at random, seeded);
    params: what to train (default every parameter with ``requires_grad``); threads: torch
    intra-op threads during the run (restored after; None leaves the setting alone).
    Returns a :class:`TrainLog`. The model is left in eval mode.
    """
    for name, v in (("steps", steps), ("batch", batch), ("seq", seq)):
        validate.integer(v, name, lo=1)
    validate.number(lr, "lr", lo=0, lo_open=True)
    validate.number(weight_decay, "weight_decay", lo=0)
    validate.seed(seed)
    validate.threads(threads)
    tokens = validate.model_tokens(model, tokens, ndim=1, min_tokens=seq + 2)
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    try:
        for _ in range(steps):
            starts = torch.randint(0, tokens.numel() - seq - 1, (batch,), generator=g)
            x = torch.stack([tokens[s:s + seq + 1] for s in starts.tolist()]).long()
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
            if not torch.isfinite(loss):
                raise ValueError(f"training diverged (loss {loss.item()}) at step {len(losses)}; "
                                 f"lower lr (got {lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        model.eval()
        torch.set_num_threads(old_threads)
    return TrainLog(loss=losses, steps=steps, tokens=steps * batch * seq,
                    wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)


# --- block-wise QAT (EfficientQAT's Block-AP, OmniQuant) ------------------------------------------

class _StopForward(Exception):
    pass


@torch.no_grad()
def _first_layer_input(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The hidden states entering decoder layer 0, (batch, seq, dim) float32."""
    captured = {}

    def hook(mod, args):
        captured["h"] = args[0].detach().float().clone()
        raise _StopForward

    handle = adapters.decoder_layers(model)[0].register_forward_pre_hook(hook)
    try:
        model(tokens)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["h"]


def blockwise_qat(model: nn.Module, tokens: torch.Tensor, bits: int = 3, group_size: int = 64,
                  method: str = "lsq", mapping: str = "symmetric", epochs: int = 2,
                  batch: int = 4, lr_weight: float = 1e-5, lr_step: float = 1e-4,
                  max_layers: int | None = None, seed: int = 0,
                  progress: bool = False) -> tuple[nn.Module, list[dict]]:
    """Train each decoder block to reproduce its full-precision outputs, one block at a time.

    The scheme of EfficientQAT's Block-AP and OmniQuant: block ``i``'s linears become
    :class:`QATLinear` (``bits``, ``group_size``, ``method``, ``mapping``); their weights
    (AdamW, ``lr_weight``) and step sizes (``lr_step``, LSQ only) are trained for ``epochs``
    passes over the cached inputs so that the block, fed the outputs of the already quantized
    blocks ``0..i-1``, matches the full-precision block fed the full-precision inputs (mean
    squared error). Memory stays at one block plus two copies of the cached hidden states.

    Args:
        model: a decoder with :mod:`qlearn.adapters` naming; not modified.
        tokens: (n_samples, seq) int64 calibration tokens.
        max_layers: train only the first ``max_layers`` blocks (the others stay full precision).
    Returns:
        ``(converted deep copy, [{"layer", "mse_rtn", "mse_qat", "seconds"} per block])``:
        ``mse_rtn`` is the block's output error at the start (round-to-nearest weights),
        ``mse_qat`` after training, both on the cached inputs.
    """
    tokens = validate.model_tokens(model, tokens, ndim=2, shape_doc="n_samples, seq")
    for name, v in (("epochs", epochs), ("batch", batch)):
        validate.integer(v, name, lo=1)
    for name, v in (("lr_weight", lr_weight), ("lr_step", lr_step)):
        validate.number(v, name, lo=0, lo_open=True)
    validate.optional_integer(max_layers, "max_layers", lo=1)
    validate.seed(seed)
    validate.flag(progress, "progress")
    uniform._check_bits(bits)
    _check_mapping(mapping)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    for linear in adapters.find_linears(model).values():
        _group_block(linear.in_features, group_size)
    q = copy.deepcopy(model).eval()
    for p in q.parameters():
        p.requires_grad_(False)
    fp_layers, q_layers = adapters.decoder_layers(model), adapters.decoder_layers(q)
    n = len(fp_layers) if max_layers is None else min(int(max_layers), len(fp_layers))
    h_fp = _first_layer_input(model, tokens.long())
    h_q = h_fp.clone()
    g = torch.Generator().manual_seed(seed)
    report = []
    for i in range(n):
        t0 = time.perf_counter()
        with torch.no_grad():
            target = torch.cat([fp_layers[i](h_fp[j:j + batch])
                                for j in range(0, len(h_fp), batch)])
        names = [f"layers.{i}.{sub}" for sub in adapters.LAYER_LINEARS]
        adapters.replace_linears(q, lambda name, lin: QATLinear(
            lin, bits, _group_block(lin.in_features, group_size), method, mapping), names)
        layer = q_layers[i]
        mods = [layer.get_submodule(sub) for sub in adapters.LAYER_LINEARS]
        groups = [{"params": [m.weight for m in mods], "lr": lr_weight}]
        if method == "lsq":
            groups.append({"params": [m.lsq.step for m in mods], "lr": lr_step})
        opt = torch.optim.AdamW(groups, weight_decay=0.0)

        def block_mse() -> float:
            with torch.no_grad():
                return float(sum(F.mse_loss(layer(h_q[j:j + batch]), target[j:j + batch],
                                            reduction="sum")
                                 for j in range(0, len(h_q), batch)) / target.numel())

        mse_rtn = block_mse()
        for _ in range(epochs):
            for idx in torch.randperm(len(h_q), generator=g).split(batch):
                loss = F.mse_loss(layer(h_q[idx]), target[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        for m in mods:
            m.weight.requires_grad_(False)
            if m.lsq is not None:
                m.lsq.step.requires_grad_(False)
        mse_qat = block_mse()
        with torch.no_grad():
            h_q = torch.cat([layer(h_q[j:j + batch]) for j in range(0, len(h_q), batch)])
        h_fp = target
        report.append({"layer": i, "mse_rtn": mse_rtn, "mse_qat": mse_qat,
                       "seconds": time.perf_counter() - t0})
        if progress:
            print(f"block {i}: output MSE {mse_rtn:.3e} (RTN) -> {mse_qat:.3e} (QAT), "
                  f"{report[-1]['seconds']:.1f} s", flush=True)
    return convert(q), report
