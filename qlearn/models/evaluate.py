"""Perplexity (sliding window) and greedy generation for any ``model(tokens) -> logits``.

Perplexity is exp(mean negative log-likelihood per token). A text longer than the context is scored
with a sliding window: windows of ``ctx`` tokens start every ``stride`` tokens; each token is scored
once, by the first window that contains it after the window's first ``ctx - stride`` tokens (which
serve as context only; the first window scores all its tokens but the first). ``stride == ctx`` gives
disjoint windows (fast, each token sees on average ctx/2 tokens of context); a smaller stride gives
every scored token at least ``ctx - stride`` tokens of context (closer to the model's true quality,
ctx/stride times the work).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qlearn import validate

__all__ = ["Score", "score", "perplexity", "generate", "llama_cpp_perplexity"]

WINDOW_BATCH_TOKENS = 4096  # tokens per forward pass: big matmuls, yet logits (tokens x vocab) stay < 1 GB


@dataclasses.dataclass(frozen=True)
class Score:
    """Sum of negative log-likelihoods (nats) over ``n_tokens`` scored tokens covering ``n_bytes`` of UTF-8."""

    nll: float
    n_tokens: int
    n_bytes: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.n_tokens)

    @property
    def bits_per_byte(self) -> float:
        """Tokenizer-independent: compare models with different vocabularies with this, not perplexity."""
        return self.nll / math.log(2) / self.n_bytes


def _tokens(tokenizer, text, model=None) -> torch.Tensor:
    validate.tokenizer(tokenizer)
    if isinstance(text, str):
        if not text:
            raise ValueError("text must be a non-empty str (at least two tokens), got ''")
        ids = tokenizer.encode(text)
    elif isinstance(text, (list, tuple, np.ndarray, torch.Tensor)):
        vocab = validate.vocab_size(model) if model is not None else None
        return validate.tokens(text, "text (token ids)", ndim=1, vocab_size=vocab)
    else:
        raise validate.ArgumentTypeError(f"text must be a str or a sequence of token ids, got "
                                         f"{type(text).__name__}")
    return torch.tensor(ids, dtype=torch.int64)


def _check_ids(ids: torch.Tensor, model) -> None:
    """The tokenizer's ids fit the model's vocabulary (a mismatched pair is a ValueError)."""
    vocab = validate.vocab_size(model)
    if ids.numel() and vocab is not None and int(ids.max()) >= vocab:
        raise ValueError(f"the tokenizer gives ids up to {int(ids.max())}, expected ids below "
                         f"the model's vocabulary size {vocab} (mismatched model and tokenizer?)")


def _default_ctx(model) -> int:
    return getattr(getattr(model, "config", None), "max_seq_len", None) or 256


@torch.no_grad()
def score(model, tokenizer, text, ctx: int | None = None, stride: int | None = None,
          max_tokens: int | None = None, progress: bool = False) -> Score:
    """Sliding-window negative log-likelihood of ``text`` (a str, or a sequence of token ids).

    ctx: window length in tokens (default model.config.max_seq_len: 128 for qlearn-tiny, 512 for SmolLM2);
    stride: step between windows (default ctx: disjoint windows, the cheapest; must be in 1..ctx);
    max_tokens: score only the first max_tokens tokens (None: all). Bytes are counted on the decoded
    scored tokens, so ``bits_per_byte`` compares tokenizers fairly.
    """
    validate.language_model(model)
    validate.flag(progress, "progress")
    ctx = validate.optional_integer(ctx, "ctx", lo=2) or _default_ctx(model)
    stride = ctx if stride is None else validate.integer(stride, "stride", 1, ctx)
    validate.optional_integer(max_tokens, "max_tokens", lo=2)
    ids = _tokens(tokenizer, text, model)
    _check_ids(ids, model)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = ids.numel()
    if n < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n}")
    # windows: (start, first scored position inside the window)
    windows, prev_end = [], 0
    for start in range(0, n, stride):
        end = min(start + ctx, n)
        first = max(prev_end - start, 1)  # position 0 of a window has no context to be predicted from
        if end > prev_end:
            windows.append((start, end, first))
        prev_end = end
        if end == n:
            break
    nll, count = 0.0, 0
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(windows), desc="perplexity", disable=not progress)
    per_batch = max(1, WINDOW_BATCH_TOKENS // ctx)
    for i in range(0, len(windows), per_batch):
        group = windows[i:i + per_batch]
        full = [w for w in group if w[1] - w[0] == ctx]
        rest = [w for w in group if w[1] - w[0] != ctx]
        for batch in ([full] if full else []) + [[w] for w in rest]:
            x = torch.stack([ids[s:e] for s, e, _ in batch])      # (B, T)
            logits = model(x)[:, :-1].float()                       # (B, T-1, V): predicts positions 1..T-1
            tok_nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                      reduction="none").view(len(batch), -1)  # (B, T-1)
            for b, (s, e, first) in enumerate(batch):
                nll += tok_nll[b, first - 1:].sum().item()
                count += e - s - first
        bar.update(len(group))
    bar.close()
    model.train(was_training)
    scored = ids[1:]
    n_bytes = len(tokenizer.decode(scored.tolist()).encode("utf-8"))
    return Score(nll=nll, n_tokens=count, n_bytes=n_bytes)


def perplexity(model, tokenizer, text, ctx: int | None = None, stride: int | None = None, max_tokens: int | None = None,
               progress: bool = False) -> float:
    """exp(mean NLL per token) of ``text`` under ``model``, sliding window (see :func:`score`)."""
    return score(model, tokenizer, text, ctx=ctx, stride=stride, max_tokens=max_tokens, progress=progress).perplexity


@torch.no_grad()
def generate(model, tokenizer, prompt: str, max_new_tokens: int = 40, temperature: float = 0.0,
             top_k: int | None = None, seed: int = 0, ctx: int | None = None, stop_at_eos: bool = True,
             cache: bool = True) -> str:
    """Continue ``prompt``; returns only the new text. temperature 0 is greedy (deterministic).

    ctx: the model sees at most the last ctx tokens (default model.config.max_seq_len).
    cache: with a KV cache (models with ``new_cache()``, see :mod:`qlearn.models.llama`) the prompt
    is run once (prefill) and each new token costs one single-position forward; False recomputes
    the whole window for every token (quadratic work, the reference). Once prompt + new tokens
    exceed ctx the window slides, positions restart at 0, and each step recomputes the window
    either way, so both settings give the same tokens (up to float32 rounding of the logits).
    """
    validate.language_model(model)
    validate.tokenizer(tokenizer)
    validate.text(prompt, "prompt")
    validate.integer(max_new_tokens, "max_new_tokens", lo=0)
    validate.number(temperature, "temperature", lo=0)
    validate.optional_integer(top_k, "top_k", lo=0)
    validate.seed(seed)
    validate.flag(stop_at_eos, "stop_at_eos")
    validate.flag(cache, "cache")
    ctx = validate.optional_integer(ctx, "ctx", lo=1) or _default_ctx(model)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError(f"prompt must encode to at least one token, got {prompt!r}")
    _check_ids(torch.tensor(ids), model)
    use_cache = cache and hasattr(model, "new_cache")
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    new, kv = [], None
    for _ in range(max_new_tokens):
        seq = ids + new
        if not use_cache or len(seq) > ctx:      # recompute the (sliding) window
            logits = model(torch.tensor([seq[-ctx:]], dtype=torch.int64))[0, -1].float()
        elif kv is None:                          # prefill: the prompt's K/V go to the cache
            kv = model.new_cache()
            logits = model(torch.tensor([seq], dtype=torch.int64), cache=kv)[0, -1].float()
        else:                                     # decode: only the newest token is computed
            logits = model(torch.tensor([seq[-1:]], dtype=torch.int64), cache=kv)[0, -1].float()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, -math.inf)
            nxt = int(torch.multinomial(F.softmax(logits, -1), 1, generator=g))
        if stop_at_eos and nxt == getattr(tokenizer, "eos_id", None):
            break
        new.append(nxt)
    model.train(was_training)
    return tokenizer.decode(new)


def _stepped_logits(model, x: torch.Tensor, step: int) -> torch.Tensor:
    """Logits of ``x`` (B, T) computed ``step`` positions at a time through one KV cache."""
    cache = model.new_cache()
    return torch.cat([model(x[:, j:j + step], cache=cache) for j in range(0, x.shape[1], step)], 1)


@torch.no_grad()
def llama_cpp_perplexity(model, tokenizer, text, n_ctx: int = 512, step: int | None = None) -> float:
    """Perplexity by ``llama-perplexity``'s protocol, to compare with llama.cpp number for number.

    The text is tokenized without a BOS (SmolLM2 and qlearn-tiny are used without one) and cut
    into ``len(tokens) // n_ctx`` non-overlapping chunks of ``n_ctx`` tokens (the remainder is
    dropped). Each chunk is evaluated from an empty context and only its second half is scored:
    the logits at positions ``n_ctx//2 .. n_ctx-2`` predict tokens ``n_ctx//2 + 1 .. n_ctx-1``,
    so every scored token sees at least ``n_ctx/2`` tokens of context. Like the tool, it needs
    at least ``2 * n_ctx`` tokens. Returns exp(mean NLL) over the scored tokens.

    ``step``: feed each chunk through the model's KV cache (``model.new_cache()``) in pieces of
    ``step`` tokens instead of one forward. The logits are the same for a float cache; a cache
    that quantizes groups of tokens (KIVI's per-channel keys, a residual window) then shows every
    query the cache it would see in token-by-token decoding when ``step`` is that token group.
    """
    validate.language_model(model)
    validate.integer(n_ctx, "n_ctx", lo=4)
    step = validate.optional_integer(step, "step", lo=1, hi=n_ctx)
    if step is not None and not hasattr(model, "new_cache"):
        raise TypeError(f"step needs a model with a KV cache (new_cache()), got {type(model).__name__}")
    ids = _tokens(tokenizer, text, model)
    _check_ids(ids, model)
    n_chunks = ids.numel() // n_ctx
    if n_chunks < 2:
        raise ValueError(
            f"llama-perplexity needs at least 2 * n_ctx = {2 * n_ctx} tokens, got {ids.numel()} in the text"
        )
    first = n_ctx // 2
    chunks = ids[: n_chunks * n_ctx].view(n_chunks, n_ctx)  # (chunks, n_ctx)
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    per_batch = max(1, WINDOW_BATCH_TOKENS // n_ctx)
    for i in range(0, n_chunks, per_batch):
        x = chunks[i:i + per_batch]                                  # (B, n_ctx)
        if step is None:
            logits = model(x)[:, first:-1].float()                   # (B, n_ctx-1-first, V)
        else:
            logits = _stepped_logits(model, x, step)[:, first:-1].float()
        target = x[:, first + 1:]                                     # (B, n_ctx-1-first)
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                               reduction="sum").item()
        count += target.numel()
    model.train(was_training)
    return math.exp(nll / count)
