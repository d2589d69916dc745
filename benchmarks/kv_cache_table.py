"""SmolLM2-135M perplexity against the KV cache format: qlearn and llama.cpp, for chapter 12.

The table, written to ``benchmarks/kv_cache_table.json`` (the chapter reads it; a test re-runs
its qlearn q4_0 row): llama-perplexity's protocol (chunks of ``N_CTX`` tokens, second half
scored) on the first ``N_CHUNKS`` chunks of the held-out Shakespeare text, for each cache type
with and without the Hadamard rotation: qlearn's dequantized Q4_1 model with
:func:`qlearn.kvcache.with_kv_cache` next to ``llama-perplexity -fa on -ctk T -ctv T`` on the
same GGUF file (``LLAMA_ATTN_ROT_DISABLE=1`` for no rotation). Each side's change is relative
to its own f16 cache. ``--extra`` adds q4_1, q5_0 and iq4_nl (rotated).

``--long`` adds the ``long_context`` table: qlearn's perplexity for K only, V only and both
quantized, at ``N_CTX`` and at ``LONG_CTX`` tokens per chunk (``LONG_CHUNKS`` chunks), for
llama.cpp's types and for the per-token and KIVI integer grids, and llama.cpp's own perplexity
at ``LONG_CTX`` for its types. KIVI rows are fed through the cache ``KIVI_STEP`` tokens at a time
(``llama_cpp_perplexity(..., step=)``), so a query sees quantized keys and values as in decoding
(up to ``KIVI_STEP - 1`` more tokens quantized), not the whole chunk quantized at once.

Rows already in the JSON file are kept (the run resumes). Run:
``PYTHONPATH=. python benchmarks/kv_cache_table.py [--extra] [--long]`` (about 5 minutes of CPU
on 2 cores for the default rows, 25 more for ``--long``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

OUT = Path(__file__).with_name("kv_cache_table.json")
OUT_LONG = OUT.with_name("kv_cache_table_progress.json")   # rows of an unfinished --long run
N_CTX = 512
N_CHUNKS = 8
#: (k_type, v_type, rotate) rows of the llama.cpp comparison
LLAMA_ROWS = [("q8_0", "q8_0", True), ("q8_0", "q8_0", False), ("q4_0", "q4_0", True),
              ("q4_0", "q4_0", False)]
EXTRA_ROWS = [("q4_1", "q4_1", True), ("q5_0", "q5_0", True), ("iq4_nl", "iq4_nl", True)]
LONG_CTX = 2048
LONG_CHUNKS = 3
KIVI_STEP = 32                # KIVI's token group: the keys' commit unit
KIVI_RESIDUAL = 128
#: long-context formats: label -> (type, with_kv_cache options, step); quantized on K, V or both
LONG_FORMATS = {
    "q8_0": ("q8_0", {}, None),
    "q4_0": ("q4_0", {}, None),
    "q4_0 no rotation": ("q4_0", {"rotate": False}, None),
    "iq4_nl": ("iq4_nl", {}, None),
    "int4 per token": ("int4", {"group": 32, "symmetric": False}, None),
    "int2 per token": ("int2", {"group": 32, "symmetric": False}, None),
    "KIVI-4": ("int4", "kivi", KIVI_STEP),
    "KIVI-2": ("int2", "kivi", KIVI_STEP),
}
#: llama.cpp rows at LONG_CTX: label -> (k_type, v_type, rotate)
LONG_LLAMA = {"f16": ("f16", "f16", True), "q8_0": ("q8_0", "q8_0", True),
              "q4_0": ("q4_0", "q4_0", True), "q4_0 no rotation": ("q4_0", "q4_0", False),
              "q4_0 K only": ("q4_0", "f16", True), "q4_0 V only": ("f16", "q4_0", True)}


def eval_text(tok, n_tokens: int) -> str:
    """The first n_tokens tokens of the held-out text, decoded (re-encodes to the same ids)."""
    from qlearn.models import validation_text

    return tok.decode(tok.encode(validation_text())[:n_tokens])


def qlearn_ppl(model, tok, text, k_type, v_type, n_ctx=N_CTX, step=None, **options) -> float:
    from qlearn import kvcache
    from qlearn.models.evaluate import llama_cpp_perplexity

    m = kvcache.with_kv_cache(model, k_type, v_type, **options)
    return llama_cpp_perplexity(m, tok, text, n_ctx=n_ctx, step=step)


def _kivi_options() -> dict:
    """with_kv_cache options of KIVI (as :func:`qlearn.kvcache.kivi`): keys per channel in groups
    of KIVI_STEP tokens, values per token in groups of 32 channels, a residual window."""
    return {"rotate": False, "symmetric": False, "residual": KIVI_RESIDUAL, "k_axis": "channel",
            "v_axis": "token", "k_group": KIVI_STEP, "v_group": 32}


def long_rows(model, tok, old: dict) -> dict:
    """The long-context table (see the module docstring); rows in ``old`` are kept."""
    from qlearn import llama_cpp
    from qlearn.kvcache import llama_cpp_perplexity as llama_ppl
    from qlearn.models.smollm2 import gguf_path

    out = dict(old)
    texts = {N_CTX: eval_text(tok, N_CHUNKS * N_CTX), LONG_CTX: eval_text(tok, LONG_CHUNKS * LONG_CTX)}

    def put(key, fn):
        if key not in out:
            t0 = time.process_time()
            out[key] = fn()
            print(f"{key:<40}{out[key]:9.3f}  cpu {time.process_time() - t0:6.1f} s", flush=True)
            OUT_LONG.write_text(json.dumps(out, indent=1) + "\n")

    for n_ctx, text in texts.items():
        put(f"qlearn/{n_ctx}/f16", lambda: qlearn_ppl(model, tok, text, "f16", "f16", n_ctx))
        for label, (t, opts, step) in LONG_FORMATS.items():
            for which in ("K", "V", "KV"):
                k, v = (t if "K" in which else "f16"), (t if "V" in which else "f16")
                o = _kivi_options() if opts == "kivi" else opts
                put(f"qlearn/{n_ctx}/{label}/{which}",
                    lambda: qlearn_ppl(model, tok, text, k, v, n_ctx, step, **o))
    if llama_cpp.available("llama-perplexity"):
        for label, (k, v, rot) in LONG_LLAMA.items():
            put(f"llama_cpp/{LONG_CTX}/{label}",
                lambda: llama_ppl(gguf_path(), texts[LONG_CTX], k, v, rotate=rot, n_ctx=LONG_CTX))
    return out


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
    model, tok = load("smollm2-135m")
    t0 = time.time()
    table = json.loads(OUT.read_text()) if OUT.exists() else {}
    table["protocol"] = {"n_ctx": N_CTX, "n_chunks": N_CHUNKS, "long_ctx": LONG_CTX,
                         "long_chunks": LONG_CHUNKS, "kivi_step": KIVI_STEP,
                         "kivi_residual": KIVI_RESIDUAL,
                         "text": "held-out Shakespeare, first tokens"}
    rows = LLAMA_ROWS + (EXTRA_ROWS if "--extra" in argv else [])
    have = table.get("llama_cpp", {})
    missing = [r for r in rows if f"{r[0]}/{r[1]}/{'rot' if r[2] else 'norot'}" not in have]
    if missing or "f16" not in have:
        new = llama_rows(model, tok, missing if "f16" in have else rows)
        table["llama_cpp"] = {**have, **new, "f16": have.get("f16", new["f16"])}
    if "--long" in argv:
        old = table.get("long_context", {})
        if OUT_LONG.exists():
            old = {**json.loads(OUT_LONG.read_text()), **old}
        table["long_context"] = long_rows(model, tok, old)
        OUT_LONG.unlink(missing_ok=True)
    print(f"{time.time() - t0:.0f} s", flush=True)
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
