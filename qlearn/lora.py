"""LoRA: a trainable low-rank update beside a frozen (possibly 4-bit) linear layer.

    y = base(x) + (alpha / r) * B (A dropout(x))

with A: (r, in_features), B: (out_features, r). B starts at zero, so at step 0 the wrapped
layer computes exactly what the frozen base computes; only A and B are trained. On top of an
NF4 :class:`qlearn.nf4.Linear4bit` base this is QLoRA (Dettmers et al. 2023).

The module wraps one layer; putting it into a model is the adapters' job
(``qlearn.adapters.replace_linears(model, lambda name, lin: LoRALinear(lin, r=8))``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qlearn import validate

__all__ = ["LoRALinear", "lora_parameters", "freeze_all_but_lora"]


class LoRALinear(nn.Module):
    """A frozen ``base`` layer plus a rank-``r`` update scaled by ``alpha / r``.

    Args:
        base: any module mapping (..., in_features) -> (..., out_features) with attributes
            ``in_features`` and ``out_features`` (``nn.Linear``, ``Linear4bit``). Frozen here.
        r: rank of the update (>= 1).
        alpha: scale numerator; the update is multiplied by alpha / r so that changing r does
            not change the initial learning dynamics much.
        dropout: dropout probability on the adapter's input (0 disables it).
        generator: optional torch.Generator for a reproducible initialization of A.
    """

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        validate.module(base, "base")
        if not all(isinstance(getattr(base, a, None), int) for a in ("in_features", "out_features")):
            raise ValueError(f"base must be a linear layer with in_features and out_features "
                             f"(nn.Linear, nf4.Linear4bit), got {type(base).__name__}")
        r = validate.integer(r, "r", lo=1)
        alpha = validate.number(alpha, "alpha", lo=0, lo_open=True)
        dropout = validate.number(dropout, "dropout", 0.0, 1.0, hi_open=True)
        for p in base.parameters():
            p.requires_grad_(False)
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = r, float(alpha), float(alpha) / r
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features))       # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r))      # (out, r)
        bound = 1.0 / math.sqrt(self.in_features)  # nn.Linear's default uniform init range
        with torch.no_grad():
            self.lora_A.uniform_(-bound, bound, generator=generator)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) float32 -> (..., out_features) float32."""
        update = (self.dropout(x) @ self.lora_A.t()) @ self.lora_B.t()
        return self.base(x) + self.scaling * update

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}"


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The A and B matrices of every LoRALinear in ``model``."""
    return [p for m in model.modules() if isinstance(m, LoRALinear)
            for p in (m.lora_A, m.lora_B)]


def freeze_all_but_lora(model: nn.Module) -> int:
    """Set requires_grad only on LoRA matrices; returns the number of trainable parameters."""
    validate.module(model)
    if not lora_parameters(model):
        raise ValueError(f"model must contain LoRALinear layers (qlora.add_lora), got a "
                         f"{type(model).__name__} with none")
    for p in model.parameters():
        p.requires_grad_(False)
    params = lora_parameters(model)
    for p in params:
        p.requires_grad_(True)
    return sum(p.numel() for p in params)
