"""The interview question bank.

Each question has a difficulty, tags, a model answer and follow-ups. Numbers in a model answer
are never typed in: the answer is a format string whose fields come from the question's
``compute()`` function, which calls qlearn (``"{kv_gib:.1f} GiB"`` with ``compute`` returning
``{"kv_gib": ...}``). A test renders every question, so a drifting number cannot survive.

Chapters register questions in ``qlearn/interview/<chapter>.py``::

    from qlearn.interview import question

    question(id="ch01.kv70b", chapter="ch01", difficulty="medium", tags=("kv-cache", "memory"),
             question="How big is the KV cache of Llama-2-70B at 4K context?",
             answer="{gib:.2f} GiB: 80 layers x 2 (K and V) x 8 KV heads x 128 x 4096 x 2 bytes.",
             follow_ups=("What if it had 64 KV heads?",),
             compute=lambda: {"gib": memory.kv_cache_bytes(...) / 2**30})

and notebooks show them with ``qlearn.interview.show("ch01")``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Question", "question", "bank", "show", "DIFFICULTIES"]

DIFFICULTIES = ("easy", "medium", "hard")


@dataclass(frozen=True)
class Question:
    id: str
    chapter: str
    difficulty: str
    tags: tuple[str, ...]
    question: str
    answer: str
    follow_ups: tuple[str, ...] = ()
    compute: Callable[[], dict] | None = field(default=None, compare=False, repr=False)

    def values(self) -> dict:
        """The numbers the model answer quotes, recomputed now."""
        return dict(self.compute()) if self.compute else {}

    def model_answer(self) -> str:
        """The model answer with every number filled in from :meth:`values`."""
        return self.answer.format(**self.values())

    def markdown(self, with_answer: bool = True) -> str:
        head = f"**[{self.difficulty}] {self.question}**  \n*tags: {', '.join(self.tags)}*"
        if not with_answer:
            return head
        fu = "".join(f"\n  - {f}" for f in self.follow_ups)
        return head + f"\n\n> {self.model_answer()}" + (f"\n\n  Follow-ups:{fu}" if fu else "")


_BANK: dict[str, Question] = {}
_LOADED = False


def question(*, id: str, chapter: str, difficulty: str, tags, question: str, answer: str,
             follow_ups=(), compute: Callable[[], dict] | None = None) -> Question:
    """Register a question (see the module docstring)."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if not id.startswith(chapter + "."):
        raise ValueError(f"question id must start with its chapter {chapter!r}, got {id!r}")
    if id in _BANK:
        raise ValueError(f"duplicate question id {id!r}")
    q = Question(id, chapter, difficulty, tuple(tags), question, answer, tuple(follow_ups), compute)
    _BANK[id] = q
    return q


def _load_all() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")


def bank(chapter: str | None = None, tag: str | None = None,
         difficulty: str | None = None) -> list[Question]:
    """Questions filtered by chapter prefix (``"ch01"``), tag and difficulty, in id order."""
    _load_all()
    out = []
    for q in sorted(_BANK.values(), key=lambda q: q.id):
        if chapter and q.chapter != chapter:
            continue
        if tag and tag not in q.tags:
            continue
        if difficulty and q.difficulty != difficulty:
            continue
        out.append(q)
    return out


def show(chapter: str, with_answers: bool = True):
    """Display a chapter's questions as Markdown (in Jupyter) and return that Markdown text."""
    qs = bank(chapter)
    if not qs:
        raise ValueError(f"no interview questions registered for chapter {chapter!r}")
    text = "\n\n".join(f"{i}. " + q.markdown(with_answers) for i, q in enumerate(qs, 1))
    try:
        from IPython.display import Markdown, display
        display(Markdown(text))
    except ImportError:  # plain Python: print it
        print(text)
    return None
