"""Write notebooks/15_interview.ipynb from the interview bank (one section per chapter present).

    PYTHONPATH=$PWD python scripts/make_interview_notebook.py      # then: nbtools.py run it

Run it again whenever a chapter's question file appears (chapters 11-14 come from other
branches); tests/test_interview.py fails while a chapter of the bank is missing from the notebook.
The cells only call qlearn.interview: every number is computed when the notebook runs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "notebooks" / "15_interview.ipynb"
COLAB = ("https://colab.research.google.com/github/qlearn-book/qlearn/blob/main/"
         "notebooks/15_interview.ipynb")

HEAD = '''# %% [markdown]
# # Interview preparation
#
# Every chapter closes with interview questions; this one gathers them all, adds the questions
# most often asked about LLM quantization and a few system-design problems, and turns them into
# practice. Each model answer quotes numbers that qlearn computed when this page was built, on
# the chapters' own layers and models, so an answer cannot drift from the book.
#
# ## Goals
#
# - answer the classic questions (what quantization is, symmetric vs asymmetric, GPTQ vs AWQ vs
#   GGUF, fitting a 70B model, measuring quality, KV-cache quantization, deployment) with
#   computed numbers instead of folklore;
# - follow a mock interview where each question builds on the previous answer;
# - spot the popular wrong numbers: GiB printed as GB, 64 KV heads where a model has 8, a
#   block type's bits taken for a whole mix;
# - test yourself here without a kernel, and drill in a terminal or in Anki.
#
# ## How to use this chapter
#
# Read a question, answer it aloud, then open the folded model answer and the follow-ups an
# interviewer would ask next. The same bank runs as a drill in a terminal, with filters, a
# random order you can repeat, self-grading and resume:
#
# ```bash
# python -m qlearn.interview --chapter ch09 --difficulty hard \\
#     --seed 1 --progress me.json
# python -m qlearn.interview --export anki qlearn.apkg  # Anki deck
# python -m qlearn.interview --export markdown qlearn.md
# ```
#
# The bank in numbers (computed from it):

# %%
from collections import Counter

from qlearn import interview
from qlearn.interview.ch15 import COMMON

qs = interview.bank()
chapters = sorted({q.chapter for q in qs})
levels = interview.DIFFICULTIES
count = Counter((q.chapter, q.difficulty) for q in qs)
print(f"{'chapter':8s}{'topic':40s}" + "".join(f"{d:>7s}" for d in levels)
      + f"{'all':>6s}")
for c in chapters:
    row = [count[c, d] for d in levels]
    title = interview.CHAPTER_TITLES.get(c, c)[:38]
    print(f"{c:8s}{title:40s}" + "".join(f"{n:7d}" for n in row)
          + f"{sum(row):6d}")
tot = [sum(count[c, d] for c in chapters) for d in levels]
print(f"{'total':48s}" + "".join(f"{n:7d}" for n in tot) + f"{len(qs):6d}")
chains = interview.chains()
print(f"{len(chains)} mock-interview chains, "
      f"{sum(q.quiz is not None for q in qs)} self-test items, "
      f"{len(COMMON)} classic questions mapped")

# %% [markdown]
# ## The classic questions
#
# The seventeen questions that come up most in interviews on this topic, in the usual order.
# The answers compute the numbers that popular model answers get wrong.

# %%
by_id = {q.id: q for q in qs}
interview.sheet([by_id[COMMON[n]] for n in sorted(COMMON)])

# %% [markdown]
# ## Mock interviews
#
# In each chain the next question starts from the previous answer, the way an interviewer
# digs deeper. Answer the first before opening anything.

# %%
for name, chain in interview.chains().items():
    display(interview.sheet(chain, title=f"Chain: {name}"))

'''

TOPIC = '''
# %% [markdown]
# ### {title}
#
# From {link}.

# %%
interview.show("{chapter}", by_difficulty=True)
'''

TAIL = '''
# %% [markdown]
# ## Self-test
#
# Choose an option or type a number and press *Check*; a number within the stated tolerance
# counts. This works in the static page, with no kernel; without JavaScript, open *Answer*.

# %%
interview.quiz(title="Self-test")

# %% [markdown]
# ## Summary
#
# - The numbers in an answer are what separates a strong answer from a recited one: compute
#   memory from the config (KV heads, not query heads), in the unit the hardware reports.
# - Most questions reduce to two ideas from the book: error is set by what shares a scale
#   (granularity, outliers, clipping), and speed is set by bytes moved per token.
# - Check claims against measurements: NF4 is not better than every 4-bit grid, GPTQ's
#   calibration error is not its held-out error, and perplexity can hide damage that KL shows.
#
# ## Exercises
#
# 1. Work through every chain above without opening an answer, then grade yourself.
# 2. Drill the hard questions in a terminal until your score passes 80 %:
#    `python -m qlearn.interview --difficulty hard --progress hard.json`.
# 3. Export the deck (`--export anki qlearn.apkg`) and review it for a week.
# 4. Pick one system-design question and redo its arithmetic for your own model and GPU with
#    `qlearn.memory`; open this chapter in [Colab]({colab}) to run it.
# 5. For graded practice, each chapter's exercise notebook opens in Colab:
{exercise_links}

# %% [markdown]
# ## Interview questions
#
# Every question of the bank, by chapter, from easy to hard. Each chapter's page ends with the
# same questions.
'''

CHAPTER_DOCS = {
    "ch01": "01_why_quantize", "ch02": "02_number_formats", "ch03": "03_uniform_quantization",
    "ch04": "04_calibration", "ch05": "05_weight_only_ptq", "ch06": "06_gptq", "ch07": "07_awq",
    "ch08": "08_smoothquant_llm_int8", "ch09": "09_nf4_qlora", "ch10": "10_gguf_kquants",
    "ch11": "11_qat", "ch12": "12_kv_cache", "ch13": "13_cpu_inference",
    "ch14": "14_choosing_a_quantization",
}


def source() -> str:
    sys.path.insert(0, str(ROOT))
    from qlearn import interview

    text = HEAD
    topics = ""
    for ch in sorted({q.chapter for q in interview.bank()}):
        title = interview.CHAPTER_TITLES.get(ch, ch)
        if ch in CHAPTER_DOCS and (ROOT / "notebooks" / f"{CHAPTER_DOCS[ch]}.ipynb").exists():
            link = f"{{doc}}`{CHAPTER_DOCS[ch]}`"
        else:
            link = "questions that span the whole book"
        topics += TOPIC.format(title=f"{int(ch[2:])}. {title}" if ch in CHAPTER_DOCS else title,
                             link=link, chapter=ch)
    base = COLAB.rsplit("/notebooks/", 1)[0] + "/exercises/"
    links = ", ".join(f"[{int(ch[2:])}]({base}{doc}.ipynb)" for ch, doc in CHAPTER_DOCS.items()
                      if (ROOT / "exercises" / f"{doc}.ipynb").exists())
    return text + TAIL.format(colab=COLAB, exercise_links=f"#    {links}.") + topics


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        py = Path(d) / "15_interview.py"
        py.write_text(source())
        subprocess.run([sys.executable, str(ROOT / "scripts" / "nbtools.py"), "frompy", str(py), str(OUT),
                        "--chapter", "ch15"], check=True)
    print(f"wrote {OUT}; now run: python scripts/nbtools.py run {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
