"""SmolLM2-135M perplexity against the KV cache format: qlearn and llama.cpp, for chapter 12.

Two tables, written to ``benchmarks/kv_cache_table.json`` and ``benchmarks/kv_cache_long.json``
(the chapter reads them; a test re-runs one row):

* ``llama_cpp``: llama-perplexity's protocol (chunks of ``N_CTX`` tokens, second half scored)
  on the first ``N_CHUNKS`` chunks of the held-out Shakespeare text, for each cache type with
  and without the Hadamard rotation: qlearn's dequantized Q4_1 model with
  :func:`qlearn.kvcache.with_kv_cache` next to ``llama-perplexity -fa on -ctk T -ctv T`` on the
  same GGUF file (``LLAMA_ATTN_ROT_DISABLE=1`` for no rotation). Each side's change is relative
  to its own f16 cache.
* ``long``: qlearn only, the same protocol with ``LONG_CTX``-token chunks, K and V separately.

Run: ``PYTHONPATH=. python benchmarks/kv_cache_table.py [llama_cpp|long ...]`` (~15 minutes of
CPU on 2 cores for both).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

OUT = Path(__file__).with_name("kv_cache_table.json")
OUT_LONG = Path(__file__).with_name("kv_cache_long.json")
N_CTX = 512
N_CHUNKS = 4
LONG_CTX = 2048
LONG_CHUNKS = 2
#: (k_type, v_type, rotate) rows of the llama.cpp comparison
LLAMA_ROWS = [("q8_0", "q8_0", True), ("q8_0", "q8_0", False), ("q4_0", "q4_0", True),
              ("q4_0", "q4_0", False), ("q4_1", "q4_1", True), ("q5_0", "q5_0", True),
              ("iq4_nl", "iq4_nl", True)]
#: (label, k_type, v_type, options) rows of the long-context table
LONG_ROWS = [("f16", "f16", "f16", {}), ("q4_0", "q4_0", "q4_0", {}),
             ("q4_0 no rot", "q4_0", "q4_0", {"rotate": False}),
             ("K q4_0 no rot", "q4_0", "f16", {"rotate": False}),
             ("V q4_0 no rot", "f16", "q4_0", {"rotate": False}),
             ("int2 tok", "int2", "int2", {"rotate": False, "group": 32}),
             ("KIVI-2", "int2", "int2", {"kivi": True})]


def eval_text(tok, n_tokens: int) -> str:
    """The first n_tokens tokens of the held-out text, decoded (re-encodes to the same ids)."""
    from qlearn.models import validation_text

    return tok.decode(tok.encode(validation_text())[:n_tokens])


def qlearn_ppl(model, tok, text, k_type, v_type, n_ctx=N_CTX, **options) -> float:
    from qlearn import kvcache
    from qlearn.models.evaluate import llama_cpp_perplexity

    if options.pop("kivi", False):
        m = kvcache.kivi(model, 2, 32, 128)
    else:
        m = kvcache.with_kv_cache(model, k_type, v_type, **options)
    return llama_cpp_perplexity(m, tok, text, n_ctx=n_ctx)


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


def long_rows(model, tok) -> dict:
    text = eval_text(tok, LONG_CHUNKS * LONG_CTX)
    out = {}
    for label, k, v, opts in LONG_ROWS:
        out[label] = qlearn_ppl(model, tok, text, k, v, n_ctx=LONG_CTX, **dict(opts))
        print(label, out[label], flush=True)
    return out


def main(argv=None) -> int:
    from qlearn.models import load

    parts = (argv if argv is not None else sys.argv[1:]) or ["llama_cpp", "long"]
    model, tok = load("smollm2-135m")
    protocol = {"n_ctx": N_CTX, "n_chunks": N_CHUNKS, "long_ctx": LONG_CTX,
                "long_chunks": LONG_CHUNKS, "text": "held-out Shakespeare, first tokens"}
    for part in parts:
        t0 = time.time()
        rows = llama_rows(model, tok) if part == "llama_cpp" else long_rows(model, tok)
        print(f"{part}: {time.time() - t0:.0f} s", flush=True)
        path = OUT if part == "llama_cpp" else OUT_LONG
        path.write_text(json.dumps({"protocol": protocol, part: rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
