"""SmolLM2-135M perplexity against the KV cache format: qlearn and llama.cpp, for chapter 12.

The table, written to ``benchmarks/kv_cache_table.json`` (the chapter reads it; a test re-runs
its qlearn q4_0 row): llama-perplexity's protocol (chunks of ``N_CTX`` tokens, second half
scored) on the first ``N_CHUNKS`` chunks of the held-out Shakespeare text, for each cache type
with and without the Hadamard rotation: qlearn's dequantized Q4_1 model with
:func:`qlearn.kvcache.with_kv_cache` next to ``llama-perplexity -fa on -ctk T -ctv T`` on the
same GGUF file (``LLAMA_ATTN_ROT_DISABLE=1`` for no rotation). Each side's change is relative
to its own f16 cache. ``--extra`` adds q4_1, q5_0 and iq4_nl (rotated).

Run: ``PYTHONPATH=. python benchmarks/kv_cache_table.py [--extra]`` (about 5 minutes of CPU on 2
cores for the default rows).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

OUT = Path(__file__).with_name("kv_cache_table.json")
N_CTX = 512
N_CHUNKS = 8
#: (k_type, v_type, rotate) rows of the llama.cpp comparison
LLAMA_ROWS = [("q8_0", "q8_0", True), ("q8_0", "q8_0", False), ("q4_0", "q4_0", True),
              ("q4_0", "q4_0", False)]
EXTRA_ROWS = [("q4_1", "q4_1", True), ("q5_0", "q5_0", True), ("iq4_nl", "iq4_nl", True)]


def eval_text(tok, n_tokens: int) -> str:
    """The first n_tokens tokens of the held-out text, decoded (re-encodes to the same ids)."""
    from qlearn.models import validation_text

    return tok.decode(tok.encode(validation_text())[:n_tokens])


def qlearn_ppl(model, tok, text, k_type, v_type, **options) -> float:
    from qlearn import kvcache
    from qlearn.models.evaluate import llama_cpp_perplexity

    m = kvcache.with_kv_cache(model, k_type, v_type, **options)
    return llama_cpp_perplexity(m, tok, text, n_ctx=N_CTX)


def llama_rows(model, tok, rows=LLAMA_ROWS, n_chunks=N_CHUNKS) -> dict:
    """{"f16": {...}, rows...}: perplexities and % changes of both tools."""
    from qlearn import kvcache
    from qlearn.models.smollm2 import gguf_path

    text = eval_text(tok, n_chunks * N_CTX)
    base_q = qlearn_ppl(model, tok, text, "f16", "f16")
    base_l = kvcache.llama_cpp_perplexity(gguf_path(), text, "f16", "f16")
    out = {"f16": {"qlearn": base_q, "llama_cpp": base_l}}
    for k, v, rot in rows:
        q = qlearn_ppl(model, tok, text, k, v, rotate=rot)
        ll = kvcache.llama_cpp_perplexity(gguf_path(), text, k, v, rotate=rot)
        row = {"k": k, "v": v, "rotate": rot, "qlearn": q, "llama_cpp": ll,
               "qlearn_pct": 100 * (q / base_q - 1), "llama_cpp_pct": 100 * (ll / base_l - 1)}
        out[f"{k}/{v}/{'rot' if rot else 'norot'}"] = row
        print(row, flush=True)
    return out


def main(argv=None) -> int:
    from qlearn.models import load

    argv = sys.argv[1:] if argv is None else argv
    rows = LLAMA_ROWS + (EXTRA_ROWS if "--extra" in argv else [])
    model, tok = load("smollm2-135m")
    t0 = time.time()
    table = {"protocol": {"n_ctx": N_CTX, "n_chunks": N_CHUNKS,
                          "text": "held-out Shakespeare, first tokens"},
             "llama_cpp": llama_rows(model, tok, rows)}
    print(f"{time.time() - t0:.0f} s", flush=True)
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
