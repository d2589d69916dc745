"""QLoRA on a CPU: freeze a language model in 4 bits, train LoRA adapters on top.

The pieces: :mod:`qlearn.nf4` (storage and ``Linear4bit``), :mod:`qlearn.lora` (adapters) and
``qlearn.adapters.replace_linears`` (the only code that knows where a model's linears are).
This module wires them into an experiment: quantize the base, add adapters, train with AdamW,
and account for memory.

Base model: ``base_model()`` returns ``qlearn.models.load("tiny")``; switching the experiment
to another model is that one function.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from qlearn import nf4, validate
from qlearn.adapters import replace_linears
from qlearn.lora import LoRALinear, freeze_all_but_lora, lora_parameters

__all__ = ["base_model", "corpus", "encode", "quantize_base",
           "add_lora", "train", "evaluate", "MemoryReport", "memory_report"]

# ---------------------------------------------------------------------------------------------
# Model and data
# ---------------------------------------------------------------------------------------------


def base_model():
    """(model, tokenizer): the project's tiny LM, ``qlearn.models.load("tiny")`` (Shakespeare)."""
    from qlearn import models

    return models.load("tiny")


def corpus() -> tuple[str, str]:
    """Two disjoint halves of CPython's pydoc topics (present in every Python install).

    The tiny model learned Shakespeare, so Python documentation is a new domain to adapt it to;
    the chapter fine-tunes on the second half.
    """
    from pydoc_data.topics import topics

    keys = sorted(topics)
    half = len(keys) // 2
    return ("\n".join(topics[k] for k in keys[:half]), "\n".join(topics[k] for k in keys[half:]))


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids (n,) int64 of ``text``."""
    validate.tokenizer(tokenizer)
    validate.text(text)
    return torch.tensor(tokenizer.encode(text), dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# QLoRA
# ---------------------------------------------------------------------------------------------

QTYPES = nf4.QUANT_TYPES + ("int4",)


def _is_body_linear(name: str) -> bool:
    return name.startswith("layers.")   # quantize the decoder blocks; keep lm_head in float32


@validate.renamed(quant_type="qtype", blocksize="group_size")
def quantize_base(model: nn.Module, qtype: str = "nf4", group_size: int = 64,
                  compress_statistics: bool = True) -> nn.Module:
    """Replace the decoder-block linears by frozen 4-bit layers, in place.

    ``qtype`` "nf4"/"fp4" gives ``nf4.Linear4bit``; "int4" gives a frozen ``nn.Linear``
    holding the INT4-rounded weight (same blocks, absmax scaling and double quantization,
    integer code book), for comparison. ``group_size``: weights per absmax block (bitsandbytes'
    ``blocksize``). The old names ``quant_type=`` and ``blocksize=`` still work (deprecated).
    """
    validate.module(model, decoder=True)
    validate.choice(qtype, "qtype", QTYPES)
    validate.choice(group_size, "group_size", nf4.BLOCKSIZES)
    validate.flag(compress_statistics, "compress_statistics")
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and _is_body_linear(n)]

    def make(name, lin):
        if qtype == "int4":
            q = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
            with torch.no_grad():
                q.weight.copy_(nf4.fake_quantize_4bit(lin.weight.detach(), group_size, "int4",
                                                        compress_statistics))
                if lin.bias is not None:
                    q.bias.copy_(lin.bias)
            return q.requires_grad_(False)
        return nf4.Linear4bit.from_linear(lin, group_size, qtype, compress_statistics)

    return replace_linears(model, make, names)


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             seed: int = 0) -> int:
    """Wrap every decoder-block linear in a LoRALinear; freeze everything else.

    Returns the number of trainable parameters.
    """
    validate.module(model, decoder=True)
    r = validate.integer(r, "r", lo=1)
    validate.number(alpha, "alpha", lo=0, lo_open=True)
    validate.number(dropout, "dropout", 0.0, 1.0, hi_open=True)
    validate.seed(seed)
    names = [n for n, m in model.named_modules()
             if isinstance(m, (nn.Linear, nf4.Linear4bit)) and _is_body_linear(n)
             and "lora" not in n]
    gen = torch.Generator().manual_seed(seed)

    def make(name, lin):
        return LoRALinear(lin, r=r, alpha=alpha, dropout=dropout, generator=gen)

    _replace_modules(model, make, names)
    return freeze_all_but_lora(model)


def _replace_modules(model, make, names):
    # replace_linears only visits nn.Linear; Linear4bit bases need the same walk
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name, getattr(parent, child)))


@contextlib.contextmanager
def _threads(n: int | None):
    """Temporarily set torch's intra-op threads (None: leave as is)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _batches(tokens: torch.Tensor, batch: int, seq: int, rng: np.random.Generator):
    starts = rng.integers(0, tokens.numel() - seq - 1, batch)
    x = torch.stack([tokens[s:s + seq] for s in starts])
    y = torch.stack([tokens[s + 1:s + seq + 1] for s in starts])
    return x, y


def train(model: nn.Module, tokens: torch.Tensor, params, steps: int, lr: float = 1e-3,
          batch: int = 4, seq: int = 64, seed: int = 0, progress: bool = True,
          desc: str = "train", threads: int | None = 1) -> tuple[list[float], torch.optim.Optimizer]:
    """Next-token cross-entropy with AdamW on ``params`` for ``steps`` steps.

    tokens: (n,) int64. ``threads``: torch intra-op threads during training (restored after);
    a model this small trains fastest on one thread, and on a busy machine several threads
    can be many times slower. None leaves torch's setting alone.
    Returns (loss per step, the optimizer, for memory accounting).
    """
    tokens = _check_run(model, tokens, batch, seq, seed, threads)
    validate.integer(steps, "steps", lo=1)
    validate.number(lr, "lr", lo=0, lo_open=True)
    validate.flag(progress, "progress")
    with _threads(threads):
        return _train(model, tokens, params, steps, lr, batch, seq, seed, progress, desc)


def _check_run(model, tokens, batch, seq, seed, threads) -> torch.Tensor:
    """Checked (n,) int64 token stream for :func:`train` / :func:`evaluate`."""
    validate.integer(batch, "batch", lo=1)
    validate.integer(seq, "seq", lo=1)
    validate.seed(seed)
    validate.threads(threads)
    return validate.model_tokens(model, tokens, ndim=1, min_tokens=seq + 2)


def _train(model, tokens, params, steps, lr, batch, seq, seed, progress, desc):
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        x, y = _batches(tokens, batch, seq, rng)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses, opt


@torch.no_grad()
def evaluate(model: nn.Module, tokens: torch.Tensor, batches: int = 4, batch: int = 8,
             seq: int = 64, seed: int = 1234, threads: int | None = 1) -> float:
    """Mean next-token cross-entropy (nats) on fixed random windows of ``tokens``."""
    tokens = _check_run(model, tokens, batch, seq, seed, threads)
    validate.integer(batches, "batches", lo=1)
    rng = np.random.default_rng(seed)
    total = 0.0
    with _threads(threads):
        for _ in range(batches):
            x, y = _batches(tokens, batch, seq, rng)
            logits = model(x)
            total += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       y.reshape(-1)))
    return total / batches


@dataclass
class MemoryReport:
    """Bytes of each part of a QLoRA setup (all computed from the live objects)."""

    base_4bit: int          # packed nibbles + block statistics of the quantized linears
    base_fp32_equiv: int    # the same linears stored in float32
    other_frozen: int       # embeddings, norms, lm_head (kept in float32)
    adapters: int           # LoRA A and B (float32)
    optimizer: int          # AdamW exp_avg and exp_avg_sq (float32)
    gradients: int          # one float32 gradient per adapter parameter

    def rows(self) -> list[tuple[str, int]]:
        return [("4-bit base linears", self.base_4bit),
                ("(same linears in float32)", self.base_fp32_equiv),
                ("other frozen weights (fp32)", self.other_frozen),
                ("LoRA adapters (fp32)", self.adapters),
                ("adapter gradients (fp32)", self.gradients),
                ("AdamW state (fp32)", self.optimizer)]


def memory_report(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> MemoryReport:
    """Account for every byte of weights, adapters and optimizer state in a QLoRA model."""
    validate.module(model)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got "
                        f"{type(optimizer).__name__}")
    q = [m for m in model.modules() if isinstance(m, nf4.Linear4bit)]
    if not q and not lora_parameters(model):
        raise ValueError(f"model must hold nf4.Linear4bit or LoRALinear layers (quantize_base, "
                         f"add_lora), got a {type(model).__name__} with neither")
    base_4bit = sum(m.storage_bytes() for m in q)
    fp32_equiv = sum(4 * m.in_features * m.out_features for m in q)
    lora = {id(p) for p in lora_parameters(model)}
    adapters = sum(4 * p.numel() for p in lora_parameters(model))
    other = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in lora)
    other += sum(b.numel() * b.element_size() for n, b in model.named_buffers()
                 if not n.endswith("packed"))
    opt_bytes = 0
    if optimizer is not None:
        for s in optimizer.state.values():
            opt_bytes += sum(v.numel() * v.element_size() for v in s.values()
                             if isinstance(v, torch.Tensor) and v.dim() > 0)
    return MemoryReport(base_4bit, fp32_equiv, other, adapters, opt_bytes, adapters)
