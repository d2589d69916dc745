"""QLoRA on the CPU, the long run: LoRA adapters on the frozen 4-bit tiny LM, NF4 vs FP4 vs INT4.

Fine-tunes for ``--steps`` steps (default 300) on half of CPython's documentation text
(``qlora.corpus()``) and prints, for each base format, the held-out loss of the 4-bit base,
the held-out loss after LoRA, the mean training loss of the first and last 20 steps, the
relative weight error of the base and the wall time. The chapter (notebooks/09_nf4_qlora)
runs the same code for fewer steps.

    PYTHONPATH=. python benchmarks/qlora_cpu.py [--steps 300] [--rank 8] [--blocksize 64]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from qlearn import nf4, qlora

WINDOW = 20  # steps averaged for the "first" and "last" training loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--blocksize", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()

    torch.manual_seed(0)
    model_fp32, tok = qlora.base_model()
    tokens = qlora.encode(tok, qlora.corpus()[1])
    split = int(0.9 * tokens.numel())
    train_tokens, val_tokens = tokens[:split], tokens[split:]
    weights = [m.weight.detach().numpy() for n, m in model_fp32.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("layers.")]
    print(f"float32 base: held-out loss {qlora.evaluate(model_fp32, val_tokens):.4f}; "
          f"{args.steps} steps, rank {args.rank}, alpha {args.alpha}, blocksize {args.blocksize}")
    print(f"{'base':<6}{'weight rel MSE':>15}{'base loss':>11}{'after LoRA':>12}"
          f"{'train first':>13}{'train last':>12}{'seconds':>9}")
    for qt in ("nf4", "fp4", "int4"):
        t0 = time.perf_counter()
        err = sum(float(np.sum((nf4.fake_quantize_4bit(w, args.blocksize, qt) - w) ** 2))
                  for w in weights) / sum(float(np.sum(w.astype(np.float64) ** 2)) for w in weights)
        model = copy.deepcopy(model_fp32)
        qlora.quantize_base(model, qt, args.blocksize, compress_statistics=True)
        base = qlora.evaluate(model, val_tokens)
        qlora.add_lora(model, r=args.rank, alpha=args.alpha)
        losses, opt = qlora.train(model, train_tokens,
                                  [p for p in model.parameters() if p.requires_grad], args.steps,
                                  lr=args.lr, desc=f"QLoRA {qt}")
        final = qlora.evaluate(model, val_tokens)
        print(f"{qt:<6}{err:>15.5f}{base:>11.4f}{final:>12.4f}{np.mean(losses[:WINDOW]):>13.4f}"
              f"{np.mean(losses[-WINDOW:]):>12.4f}{time.perf_counter() - t0:>9.1f}")
        if qt == "nf4":
            rep = qlora.memory_report(model, opt)
    print("memory of the NF4 run:")
    for name, nbytes in rep.rows():
        print(f"  {name:<30}{nbytes / 1024:>10.1f} KiB")


if __name__ == "__main__":
    main()
