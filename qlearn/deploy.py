"""Which quantization to deploy: memory arithmetic plus measured quality, and llama.cpp as a client.

:func:`recommend` answers the reader's question "which quantization for my model and my
machine?": for each option it computes the weight bytes (bits per weight of the format, for
GGUF presets from the per-tensor rules of :mod:`qlearn.gguf_mixes`) and the fp16 KV cache for
the requested context and batch (:mod:`qlearn.memory`), keeps the options that fit, and ranks
them by the perplexity increase *measured* on SmolLM2-135M (``qlearn/data/quality_table.json``,
written by ``benchmarks/quality_table.py``). A 135M model is far more sensitive to quantization
than a 7B one, so the ranking transfers better than the percentages.

:func:`llama_perplexity` and :func:`llama_generate` run llama.cpp's ``llama-perplexity`` and
``llama-simple`` on a GGUF file (built by ``scripts/llama_cpp.sh``).
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import gguf_mixes, memory, validate

__all__ = ["QUALITY_TABLE", "GRID_ALIGNED", "Option", "quality_table", "missing_rows", "recommend", "llama_perplexity",
           "llama_generate"]

QUALITY_TABLE = Path(__file__).with_name("data") / "quality_table.json"
GIB = memory.BYTES_PER_GIB
DEFAULT_RESERVE_GIB = 0.5  # runtime buffers, activations and the process itself (an assumption)
KV_BYTES_FP16 = 2
# non-GGUF options: row id in the quality table -> (label, storage format of the linears)
OTHER_OPTIONS = {"gptq4": ("GPTQ 4-bit g128", "INT4-g128 (4-bit zero)"),
                 "awq4": ("AWQ 4-bit g128", "INT4-g128 (4-bit zero)"),
                 "gptq3": ("GPTQ 3-bit g128", "INT3-g128 (3-bit zero)"),
                 "nf4": ("bitsandbytes NF4", "NF4"),
                 "w8a8": ("SmoothQuant W8A8", "INT8 (per-channel)")}


@dataclass(frozen=True)
class Option:
    """One way to store the model, with its memory and its measured quality.

    name: preset or method; bits_per_weight: whole-model average; weight_bytes, kv_bytes,
    total_bytes (weights + KV + reserve); fits: total <= memory; ppl_increase_pct: measured
    perplexity increase over the baseline on SmolLM2-135M (None when not measured).
    """

    name: str
    bits_per_weight: float
    weight_bytes: float
    kv_bytes: float
    total_bytes: float
    fits: bool
    ppl_increase_pct: float | None


@functools.lru_cache(maxsize=4)
def _read_table(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no quality table at {p}: run `python benchmarks/quality_table.py`")
    return json.loads(p.read_text())


def quality_table(path=None) -> dict:
    """The measured table: ``{"protocol": {...}, "date": ..., "rows": {row id: {...}}}``."""
    return _read_table(str(path or QUALITY_TABLE))


def expected_rows() -> list[str]:
    """Row ids a complete table has: every preset with and without imatrix (none for Q8_0 and Q6_K,
    which ignore it), RTN/GPTQ/AWQ at 4 and 3 bits, NF4, FP4, SmoothQuant W8A8."""
    ids = ["baseline"]
    for p in gguf_mixes.MIXES:
        ids.append(p)
        if p not in ("Q8_0", "Q6_K"):
            ids.append(p + "+imatrix")
    return ids + ["rtn4", "rtn3", "gptq4", "gptq3", "awq4", "awq3", "nf4", "fp4", "w8a8"]


def missing_rows(table=None) -> list[str]:
    """Row ids of :func:`expected_rows` that the table lacks."""
    rows = (table if isinstance(table, dict) else quality_table(table))["rows"]
    return [r for r in expected_rows() if r not in rows]


#: Rows whose grid holds the baseline's own Q4_1 grid (the table's baseline is SmolLM2
#: dequantized from a Q4_1 file): they reproduce the baseline to three decimals by construction,
#: so their measured change says nothing about the format and :func:`recommend` does not rank
#: by it (they come after the measured options, like options missing from the table).
GRID_ALIGNED = ("Q4_1", "Q4_1+imatrix", "Q5_1+imatrix")


def _ppl_increase(rows: dict, rid: str) -> float | None:
    base, row = rows.get("baseline"), rows.get(rid)
    if not base or not row or rid in GRID_ALIGNED:
        return None
    return 100 * (row["ppl"] / base["ppl"] - 1)


def _model(model) -> memory.ModelConfig:
    if isinstance(model, memory.ModelConfig):
        return model
    if isinstance(model, str):
        if model not in memory.MODELS:
            raise ValueError(f"unknown model {model!r}; expected one of {list(memory.MODELS)}, "
                             "a qlearn.memory.ModelConfig or a parameter count")
        return memory.MODELS[model]
    if isinstance(model, bool) or not isinstance(model, (int, float)) or not model > 0:
        raise TypeError(f"expected a parameter count (e.g. 7e9), a qlearn.memory.ModelConfig or a model "
                        f"name, got {model!r}")
    # only a count: borrow the shapes (layers, KV heads) of the published model closest in size
    return min(memory.MODELS.values(), key=lambda m: abs(m.n_params / model - 1))


def _gguf_config(m: memory.ModelConfig) -> gguf_mixes.ModelConfig:
    return gguf_mixes.ModelConfig(n_layers=m.layers, dim=m.hidden, ffn_dim=m.intermediate, vocab=m.vocab,
                                  n_heads=m.heads, n_kv_heads=m.kv_heads, tied_embeddings=m.tied)


def recommend(model, memory_gib: float, context: int, batch: int = 1, *, reserve_gib: float = DEFAULT_RESERVE_GIB,
              table=None, include_unfit: bool = False) -> list[Option]:
    """Ranked ways to run ``model`` in ``memory_gib`` GiB with ``context`` tokens x ``batch``.

    model: a parameter count (e.g. ``7e9``; the layer/head shapes of the published model of the
        closest size in ``qlearn.memory.MODELS`` are borrowed for the KV cache and the GGUF
        rules), a ``qlearn.memory.ModelConfig``, or a name in ``qlearn.memory.MODELS``.
    memory_gib: memory for weights + KV cache + ``reserve_gib``. context, batch: tokens per
        sequence and sequences (KV cache in fp16).
    Returns the options that fit (all of them with ``include_unfit``), best first: lowest
    measured perplexity increase, then fewest bytes; options not in the table, and those in
    :data:`GRID_ALIGNED`, come last.
    """
    m = _model(model)
    n_params = float(model) if isinstance(model, (int, float)) else m.n_params
    validate.number(memory_gib, "memory_gib", lo=0, lo_open=True, hint="GiB")
    validate.number(reserve_gib, "reserve_gib", lo=0, hint="GiB")
    validate.flag(include_unfit, "include_unfit")
    kv = memory.kv_cache_bytes(m.layers, m.kv_heads, m.head_dim, context, batch, KV_BYTES_FP16)
    rows = quality_table(table)["rows"]
    gcfg = _gguf_config(m)
    candidates = [("F16", 16.0, "baseline")]
    candidates += [(p, gguf_mixes.mix_bpw(p, gcfg), p) for p in gguf_mixes.MIXES]
    candidates += [(p + "+imatrix", gguf_mixes.mix_bpw(p, gcfg, has_imatrix=True), p + "+imatrix")
                   for p in gguf_mixes.MIXES if p + "+imatrix" in rows]
    emb = m.vocab * m.hidden * (1 if m.tied else 2)
    for rid, (label, fmt) in OTHER_OPTIONS.items():
        bpw = (memory.bits_per_weight(fmt) * (m.n_params - emb) + 16 * emb) / m.n_params
        candidates.append((label, bpw, rid))
    out = []
    for name, bpw, rid in candidates:
        w = n_params * bpw / 8
        total = w + kv + reserve_gib * GIB
        out.append(Option(name, bpw, w, kv, total, total <= memory_gib * GIB, _ppl_increase(rows, rid)))
    out.sort(key=lambda o: (o.ppl_increase_pct is None, o.ppl_increase_pct or 0.0, o.weight_bytes))
    return out if include_unfit else [o for o in out if o.fits]


# ---- llama.cpp as a client --------------------------------------------------------------------

# llama.cpp's tools log through a background thread that is not joined at exit (upstream keeps
# the logger alive on purpose, llama.cpp issue 22142), so the last lines -- llama-perplexity's
# "Final estimate" -- are sometimes lost on a busy machine. A preloaded library whose destructor
# waits a moment at exit gives that thread time to drain its queue.
_LINGER_C = "#include <unistd.h>\n__attribute__((destructor)) static void linger(void) { usleep(%d); }\n"
LINGER_US = 300_000


def _linger_lib() -> str | None:
    """Path of the tiny exit-delay library (compiled once next to the tools), or None without cc."""
    import os
    import shutil

    from . import llama_cpp

    lib = llama_cpp.bin_dir().parent / "linger.so"
    if not lib.exists():
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            return None
        src = lib.with_suffix(".c")
        src.write_text(_LINGER_C % LINGER_US)
        tmp = lib.with_name(f"linger.{os.getpid()}.so")
        if subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(src)]).returncode != 0:
            return None
        tmp.replace(lib)
    return str(lib)


def _run_merged(name: str, *args, timeout: float = 900, env: dict | None = None) -> str:
    """Run a llama.cpp tool with stdout and stderr in one stream and return the text.

    env: variables added to this process's environment for the tool."""
    import os

    from . import llama_cpp

    env = {**os.environ, **(env or {})}
    lib = _linger_lib()
    if lib:
        env["LD_PRELOAD"] = lib
    proc = subprocess.run([str(llama_cpp.tool(name)), *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
    return proc.stdout


def llama_perplexity(gguf_path, text: str, n_ctx: int = 512, threads: int = 2, *,
                     extra_args: tuple = (), env: dict | None = None) -> float:
    """``llama-perplexity``'s final estimate on ``text`` (written to a temporary file).

    extra_args: more command-line arguments (e.g. ``("-fa", "on", "-ctk", "q8_0")``); env:
    environment variables for the tool (e.g. ``{"LLAMA_ATTN_ROT_DISABLE": "1"}``).
    """
    gguf_path = validate.gguf_file(gguf_path)
    validate.text(text)
    validate.integer(n_ctx, "n_ctx", lo=4)
    validate.integer(threads, "threads", lo=1)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "text.txt"
        f.write_text(text + "\n", encoding="utf-8")   # llama-perplexity -f drops one trailing newline
        out = _run_merged("llama-perplexity", "-m", gguf_path, "-f", f, "-c", n_ctx, "-b", n_ctx,
                          "-t", threads, *extra_args, timeout=1800, env=env)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
    if not m:
        raise RuntimeError("llama-perplexity printed no final estimate:\n" + "\n".join(out.splitlines()[-10:]))
    return float(m.group(1))


def llama_generate(gguf_path, prompt: str, n_predict: int = 16) -> str:
    """Greedy continuation of ``prompt`` by ``llama-simple`` (only the new text)."""
    from . import llama_cpp

    gguf_path = validate.gguf_file(gguf_path)
    validate.text(prompt, "prompt")
    validate.integer(n_predict, "n_predict", lo=1)
    proc = subprocess.run([str(llama_cpp.tool("llama-simple")), "-m", str(gguf_path), "-n", str(n_predict), prompt],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-simple exited with {proc.returncode}:\n{proc.stderr.decode()[-2000:]}")
    out = proc.stdout.decode("utf-8", errors="replace")
    if not out.startswith(prompt):
        raise RuntimeError(f"llama-simple echoed a different prompt: {out[:len(prompt) + 20]!r}")
    return out[len(prompt):].removesuffix("\n")
