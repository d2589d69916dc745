"""Decode and prefill tokens/s of each weight format, as ratios to float32 torch, in one run.

Formats: float32 (torch), bfloat16 (torch), and GGUF block bytes run by qlearn's kernels
(``qlearn.models.quantize_for_inference``): Q8_0, Q6_K, Q4_K, Q4_K_M. Every model decodes with a
KV cache (one token per step, greedy, batch 1, one thread). Rounds interleave the formats so
that load from other processes hits all alike; each figure is a median of CPU time
(``time.process_time``). With llama.cpp built (``scripts/llama_cpp.sh``), ``llama-bench -t 1``
on the same model as a Q4_K_M file is printed too (wall clock, as llama-bench measures).

Run: ``PYTHONPATH=. python benchmarks/bench_inference.py [--model tiny] [--rounds 3]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from qlearn import llama_cpp, speed
from qlearn.models import load, quantize_for_inference
from qlearn.models.quantized import weight_bytes

FORMATS = ("f32", "BF16", "Q8_0", "Q6_K", "Q4_K", "Q4_K_M")
PROMPT = "The quick brown fox jumps over the lazy dog, and the dog sleeps in the sun. " * 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", choices=("tiny", "smollm2-135m"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load(args.model)
    prompt = torch.tensor(tok.encode(PROMPT)[: args.prompt_tokens])
    models = {f: model if f == "f32" else quantize_for_inference(model, f) for f in FORMATS}
    mb = {f: sum(weight_bytes(m).values()) / 1e6 for f, m in models.items()}
    res = {f: {"decode": [], "prefill": []} for f in FORMATS}
    for r in range(args.rounds):
        for f, m in models.items():
            s = speed.tokens_per_second(m, prompt, new_tokens=args.new_tokens, repeats=1)
            for k in s:
                res[f][k].append(s[k])
        print(f"round {r + 1}: decode tok/s " + ", ".join(f"{f} {res[f]['decode'][-1]:.1f}" for f in FORMATS),
              flush=True)
    med = {f: {k: float(np.median(v)) for k, v in d.items()} for f, d in res.items()}
    print(f"\n{args.model}, 1 thread, CPU time; prompt {len(prompt)} tokens, {args.new_tokens} decode "
          f"steps x {args.rounds} rounds (medians)")
    print(f"{'format':<8}{'MB/token':>10}{'decode tok/s':>14}{'x f32':>7}{'prefill tok/s':>15}{'x f32':>7}")
    for f in FORMATS:
        d, p = med[f]["decode"], med[f]["prefill"]
        print(f"{f:<8}{mb[f]:>10.1f}{d:>14.1f}{d / med['f32']['decode']:>7.2f}"
              f"{p:>15.1f}{p / med['f32']['prefill']:>7.2f}")
    types = sorted(set(models["Q4_K"].qtypes.values()))
    print(f"(Q4_K means llama.cpp's rule per tensor: types used {', '.join(types)}; rows whose "
          "length is not a multiple of 256 fall back to Q5_0)")
    if args.model == "smollm2-135m" and llama_cpp.available("llama-quantize", "llama-bench"):
        path = speed.smollm2_gguf("Q4_K_M")
        lb = speed.llama_bench(path, n_gen=32, n_prompt=args.prompt_tokens, threads=1)
        ours = med["Q4_K_M"]["decode"]
        print(f"\nllama.cpp llama-bench -n 32 -p {args.prompt_tokens} -t 1 on {path.name}: "
              f"decode {lb['decode']:.1f} tok/s, prefill {lb['prefill']:.1f} tok/s (wall clock, as "
              f"llama-bench reports); decode {lb['decode_cpu']:.1f} tok/s from CPU time")
        print(f"qlearn Q4_K_M decode / llama.cpp decode: {ours / lb['decode_cpu']:.2f} (both CPU time), "
              f"{ours / lb['decode']:.2f} (ours CPU time / llama-bench wall clock)")
    else:
        print("\nllama.cpp tools not built (scripts/llama_cpp.sh): no llama-bench comparison")


if __name__ == "__main__":
    main()
