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

Optional keywords:

* ``chain="name"`` and ``after="chNN.id"``: mock-interview chains, where this question builds on
  the answer to ``after`` (the interviewer's next step). ``chain(name)`` lists one in order.
* ``quiz=Quiz(...)``: a self-test item (multiple choice, or a number checked with a tolerance
  against one of the values ``compute()`` returns), shown by :func:`quiz` and in chapter 15.

Notebooks show a chapter's questions, answers folded, with ``qlearn.interview.show("ch01")``;
``python -m qlearn.interview`` drills them in a terminal and exports Anki or Markdown.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Question", "Quiz", "question", "bank", "chain", "chains", "show", "quiz", "sheet",
           "DIFFICULTIES", "CHAPTER_TITLES", "QUIZ_KINDS"]

DIFFICULTIES = ("easy", "medium", "hard")
QUIZ_KINDS = ("choice", "numeric")
_CHAPTER_MODULE = re.compile(r"ch\d\d$")  # chapter modules; __main__, cli, render... are not

CHAPTER_TITLES = {
    "ch01": "Why quantize", "ch02": "Number formats", "ch03": "Uniform quantization",
    "ch04": "Calibration", "ch05": "Weight-only PTQ", "ch06": "GPTQ", "ch07": "AWQ",
    "ch08": "SmoothQuant and LLM.int8()", "ch09": "NF4 and QLoRA", "ch10": "GGUF k-quants",
    "ch11": "Quantization-aware training", "ch12": "KV-cache quantization",
    "ch13": "CPU inference speed", "ch14": "Choosing and deploying a quantization",
    "ch15": "Across the book: interview classics and system design",
}
"""Topic of each chapter's questions (chapter 15 gathers the cross-cutting ones)."""


@dataclass(frozen=True)
class Quiz:
    """A self-test item attached to a question.

    ``kind="choice"``: ``options`` (texts) and ``correct`` (index of the right one).
    ``kind="numeric"``: the right number is ``values()[value]`` of the question; an answer within
    ``rel_tol`` (relative) of it counts as right; ``unit`` is shown after the input box.
    ``prompt`` is the short question the quiz asks (the bank question is usually longer).
    """

    prompt: str
    kind: str = "numeric"
    value: str = ""
    rel_tol: float = 0.02
    unit: str = ""
    options: tuple[str, ...] = ()
    correct: int = 0

    def __post_init__(self):
        if self.kind not in QUIZ_KINDS:
            raise ValueError(f"quiz kind must be one of {QUIZ_KINDS}, got {self.kind!r}")
        if self.kind == "choice":
            if len(self.options) < 2 or not 0 <= self.correct < len(self.options):
                raise ValueError(f"a choice quiz needs >= 2 options and a correct index among them, got "
                                 f"{len(self.options)} options and correct={self.correct}")
        elif not self.value or not self.rel_tol > 0:
            raise ValueError(f"a numeric quiz needs value= (a key of compute()'s result) and rel_tol > 0, "
                             f"got value={self.value!r}, rel_tol={self.rel_tol}")


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
    chain: str | None = None
    after: str | None = None
    quiz: Quiz | None = field(default=None, compare=False)

    def values(self) -> dict:
        """The numbers the model answer quotes, recomputed now."""
        return dict(self.compute()) if self.compute else {}

    def model_answer(self) -> str:
        """The model answer with every number filled in from :meth:`values`."""
        return self.answer.format(**self.values())

    def quiz_answer(self) -> float | int:
        """The right answer of :attr:`quiz`: a number (numeric quiz) or an option index."""
        if self.quiz is None:
            raise ValueError(f"{self.id} has no quiz")
        if self.quiz.kind == "choice":
            return self.quiz.correct
        return float(self.values()[self.quiz.value])

    def markdown(self, with_answer: bool = True) -> str:
        head = f"**[{self.difficulty}] {self.question}**  \n*tags: {', '.join(self.tags)}*"
        if not with_answer:
            return head
        fu = "".join(f"\n  - {f}" for f in self.follow_ups)
        return head + f"\n\n> {self.model_answer()}" + (f"\n\n  Follow-ups:{fu}" if fu else "")


_BANK: dict[str, Question] = {}
_LOADED = False


def _strings(name: str, v) -> tuple[str, ...]:
    if isinstance(v, str) or not all(isinstance(t, str) and t.strip() for t in v):
        raise TypeError(f"{name} must be a sequence of non-empty strings, got {v!r}")
    return tuple(v)


def question(*, id: str, chapter: str, difficulty: str, tags, question: str, answer: str,
             follow_ups=(), compute: Callable[[], dict] | None = None, chain: str | None = None,
             after: str | None = None, quiz: Quiz | None = None) -> Question:
    """Register a question (see the module docstring)."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if not id.startswith(chapter + "."):
        raise ValueError(f"question id must start with its chapter {chapter!r}, got {id!r}")
    if id in _BANK:
        raise ValueError(f"duplicate question id {id!r}")
    tags = _strings("tags", tags)
    if not tags:
        raise ValueError(f"{id}: give at least one tag")
    if not (question.strip() and answer.strip()):
        raise ValueError(f"{id}: question and answer must be non-empty text")
    if after is not None and chain is None:
        raise ValueError(f"{id}: after={after!r} needs chain= (the name of the mock-interview chain)")
    if quiz is not None and not isinstance(quiz, Quiz):
        raise TypeError(f"{id}: quiz must be a qlearn.interview.Quiz, got {type(quiz).__name__}")
    if compute is not None and not callable(compute):
        raise TypeError(f"{id}: compute must be a function returning a dict, got {type(compute).__name__}")
    q = Question(id, chapter, difficulty, tags, question, answer, _strings("follow_ups", follow_ups),
                 compute, chain, after, quiz)
    _BANK[id] = q
    return q


def _load_all() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for mod in pkgutil.iter_modules(__path__):
            if _CHAPTER_MODULE.match(mod.name):
                importlib.import_module(f"{__name__}.{mod.name}")


def _as_set(name: str, v, allowed=None) -> set[str] | None:
    if v is None:
        return None
    vals = {v} if isinstance(v, str) else set(v)
    if allowed is not None and not vals <= set(allowed):
        raise ValueError(f"{name} must be among {tuple(allowed)}, got {sorted(vals - set(allowed))}")
    return vals


def bank(chapter=None, tag=None, difficulty=None) -> list[Question]:
    """Questions filtered by chapter (``"ch01"``), tag and difficulty, in id order.

    Each filter is one string or a collection of them (any of which may match).
    """
    _load_all()
    chapters, tags = _as_set("chapter", chapter), _as_set("tag", tag)
    levels = _as_set("difficulty", difficulty, DIFFICULTIES)
    out = []
    for q in sorted(_BANK.values(), key=lambda q: q.id):
        if chapters and q.chapter not in chapters:
            continue
        if tags and not tags & set(q.tags):
            continue
        if levels and q.difficulty not in levels:
            continue
        out.append(q)
    return out


def chains() -> dict[str, list[Question]]:
    """Every mock-interview chain by name, each in interview order (first question first)."""
    names = sorted({q.chain for q in bank() if q.chain})
    return {n: chain(n) for n in names}


def chain(name: str) -> list[Question]:
    """The questions of one chain in order: the one with no ``after``, then each follow-on."""
    members = [q for q in bank() if q.chain == name]
    if not members:
        raise ValueError(f"no chain named {name!r}; known: {sorted({q.chain for q in bank() if q.chain})}")
    by_after = {q.after: q for q in members}
    out, prev = [], None
    while prev in by_after:
        out.append(by_after[prev])
        prev = out[-1].id
    if len(out) != len(members):
        raise ValueError(f"chain {name!r} is not one line from a first question: "
                         f"{sorted(q.id for q in members)} with after={[q.after for q in members]}")
    return out


def sheet(questions, title: str | None = None, with_answers: bool = True, start: int = 1,
          by_difficulty: bool = False):
    """A displayable list of questions: HTML with each answer folded in ``<details>`` (Jupyter
    and the static book), plain text in a terminal (``print`` it). ``by_difficulty`` orders
    them easy, medium, hard under a heading each."""
    from qlearn.interview.render import Sheet

    return Sheet(list(questions), title=title, with_answers=with_answers, start=start,
                 by_difficulty=by_difficulty)


def show(chapter: str, with_answers: bool = True, by_difficulty: bool = False):
    """Display a chapter's questions (answers folded until clicked) in Jupyter; print them as
    text in plain Python. Returns None."""
    qs = bank(chapter)
    if not qs:
        raise ValueError(f"no interview questions registered for chapter {chapter!r}")
    _display(sheet(qs, with_answers=with_answers, by_difficulty=by_difficulty))


def quiz(questions=None, *, title: str | None = None):
    """A self-test of the given questions' quizzes (default: every question that has one):
    multiple choice and numeric answers checked in the browser with no kernel, each with a
    folded static answer as fallback. Returns an object that Jupyter displays as HTML."""
    from qlearn.interview.render import QuizSheet

    qs = [q for q in (bank() if questions is None else questions) if q.quiz is not None]
    if not qs:
        raise ValueError("none of these questions has a quiz")
    return QuizSheet(qs, title=title)


def _display(obj) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # no IPython at all
        print(obj)
        return
    if get_ipython() is None:  # plain Python: print it
        print(obj)
    else:
        display(obj)
