"""Byte-level BPE tokenizers built with the ``tokenizers`` library.

Two sources: :func:`train_bpe` learns a small vocabulary from text (qlearn-tiny), and
:func:`from_gguf_metadata` rebuilds SmolLM2's tokenizer from the vocabulary and merges stored in its
GGUF file. Both are wrapped in :class:`Tokenizer`, a thin object with ``encode``/``decode``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

__all__ = ["Tokenizer", "train_bpe", "from_gguf_metadata"]

EOS = "<|endoftext|>"  # separates works in the training stream; id 0 in qlearn-tiny


class Tokenizer:
    """encode(text) -> list[int]; decode(ids) -> str. Round-trips any text exactly (byte level).

    Attributes: ``vocab_size``, ``eos_id`` (or None), ``bos_id`` (or None), ``hf`` (the underlying
    ``tokenizers.Tokenizer``).
    """

    def __init__(self, hf: _HFTokenizer, eos: str | None = EOS, bos: str | None = None):
        self.hf = hf
        self.eos_id = hf.token_to_id(eos) if eos else None
        self.bos_id = hf.token_to_id(bos) if bos else None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    @classmethod
    def load(cls, path: str | Path, eos: str | None = EOS, bos: str | None = None) -> "Tokenizer":
        return cls(_HFTokenizer.from_file(str(path)), eos=eos, bos=bos)


def _byte_level(model, split_digits: bool = False) -> _HFTokenizer:
    tok = _HFTokenizer(model)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # SmolLM2 (GGUF pre-tokenizer "smollm") splits every digit into its own piece first
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(text: str, vocab_size: int = 4096) -> Tokenizer:
    """Learn a byte-level BPE of ``vocab_size`` tokens (256 bytes + merges + ``<|endoftext|>``) from text."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size must exceed the 256 byte tokens, got {vocab_size}")
    tok = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    chunk = 1 << 16  # feed the trainer pieces, not one giant string
    tok.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer=trainer)
    return Tokenizer(tok)


def from_gguf_metadata(tokens: list[str], merges: list[str], bos_id: int, eos_id: int,
                       split_digits: bool = True) -> Tokenizer:
    """Byte-level BPE from a GGUF's ``tokenizer.ggml.tokens`` and ``tokenizer.ggml.merges`` (gpt2 model).

    tokens: vocabulary in id order (byte-level strings, e.g. "Ġthe"); merges: "a b" strings.
    split_digits: pre-split every digit (GGUF pre-tokenizer "smollm"); False for "gpt-2".
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = _byte_level(models.BPE(vocab=vocab, merges=pairs), split_digits=split_digits)
    # control tokens (<|im_start|>, <|endoftext|>, ...) are matched whole, never split
    specials = [t for t in tokens if t.startswith("<|") and t.endswith("|>")]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return Tokenizer(tok, eos=tokens[eos_id], bos=tokens[bos_id])
