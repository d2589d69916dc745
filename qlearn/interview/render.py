"""How the bank is shown: folded HTML for notebooks and the static book, text for terminals,
Markdown for export, and self-test quizzes that run in the browser with no kernel.

Nothing here computes a number: every value comes from ``Question.values()``.
"""

from __future__ import annotations

import html
import math
import textwrap

from qlearn.interview import CHAPTER_TITLES, Question

WRAP = 79  # text width in terminals and exports

# The quiz script: one delegated click/keydown handler for every quiz on the page, installed
# once however many quiz outputs carry it. It only reads data- attributes, so a page without
# quizzes, or a quiz before the script, cannot raise.
QUIZ_JS = """
(function () {
  if (window.qlearnQuizReady) { return; }
  window.qlearnQuizReady = true;
  function say(box, ok, text) {
    var fb = box.querySelector(".qlearn-feedback");
    if (!fb) { return; }
    fb.textContent = text;
    fb.style.color = ok ? "#1a7f37" : "#b42318";
  }
  function checkNumber(box) {
    var input = box.querySelector("input.qlearn-number");
    if (!input) { return; }
    var raw = String(input.value).trim().replace(",", ".");
    var got = Number(raw);
    if (raw === "" || !isFinite(got)) {
      say(box, false, "Type a number (use a dot for decimals).");
      return;
    }
    var want = Number(box.getAttribute("data-answer"));
    var tol = Number(box.getAttribute("data-tol"));
    var ok = Math.abs(got - want) <= tol * Math.abs(want) + 1e-12;
    say(box, ok, ok ? "Right." : "Not quite: open the answer below.");
  }
  function choose(box, button) {
    var ok = button.getAttribute("data-index") === box.getAttribute("data-correct");
    var all = box.querySelectorAll(".qlearn-option");
    for (var i = 0; i < all.length; i++) { all[i].style.outline = ""; }
    button.style.outline = ok ? "2px solid #1a7f37" : "2px solid #b42318";
    say(box, ok, ok ? "Right." : "Not this one: try again or open the answer.");
  }
  document.addEventListener("click", function (ev) {
    var t = ev.target;
    if (!t || !t.closest) { return; }
    var box = t.closest(".qlearn-quiz");
    if (!box) { return; }
    if (t.classList.contains("qlearn-option")) { choose(box, t); }
    else if (t.classList.contains("qlearn-check")) { checkNumber(box); }
  });
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (ev.key !== "Enter" || !t || !t.closest || !t.classList.contains("qlearn-number")) { return; }
    var box = t.closest(".qlearn-quiz");
    if (box) { ev.preventDefault(); checkNumber(box); }
  });
})();
"""

QUIZ_CSS = """
.qlearn-quiz { border: 1px solid #d0d7de; border-radius: 6px; padding: 0.5em 0.8em; margin: 0.6em 0; }
.qlearn-quiz .qlearn-option { display: block; margin: 0.25em 0; text-align: left; }
.qlearn-quiz input.qlearn-number { width: 9em; }
.qlearn-quiz .qlearn-feedback { margin-left: 0.6em; font-weight: bold; }
"""


def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def _anchor(q: Question) -> str:
    return "q-" + q.id.replace(".", "-").replace("_", "-")


def question_html(q: Question, number: int | None = None, with_answer: bool = True) -> str:
    """One question as HTML; the model answer and follow-ups folded in ``<details>``."""
    num = f"{number}. " if number is not None else ""
    meta = f"{q.id} &middot; {_esc(q.difficulty)} &middot; tags: {_esc(', '.join(q.tags))}"
    if q.after:
        meta += f" &middot; follows {_esc(q.after)}"
    out = [f'<div class="qlearn-question" id="{_anchor(q)}">',
           f"<p><b>{num}</b>{_esc(q.question)}<br><small>{meta}</small></p>"]
    if with_answer:
        out.append("<details><summary>Model answer</summary>")
        out.append(f"<p>{_esc(q.model_answer())}</p>")
        if q.follow_ups:
            out.append("<p><i>Follow-ups:</i></p><ul>" +
                       "".join(f"<li>{_esc(f)}</li>" for f in q.follow_ups) + "</ul>")
        out.append("</details>")
    out.append("</div>")
    return "\n".join(out)


def question_text(q: Question, number: int | None = None, with_answer: bool = True,
                  width: int = WRAP) -> str:
    """One question as wrapped plain text (terminal, Anki fallback)."""
    head = f"{number}. " if number is not None else ""
    lines = textwrap.wrap(f"{head}[{q.difficulty}] {q.question}", width)
    lines.append(f"   ({q.id}; tags: {', '.join(q.tags)})")
    if with_answer:
        lines += [""] + textwrap.wrap("Answer: " + q.model_answer(), width)
        for f in q.follow_ups:
            lines += textwrap.wrap("- " + f, width, subsequent_indent="  ")
    return "\n".join(lines)


def answer_text(q: Question, width: int = WRAP) -> str:
    """The model answer and follow-ups only, wrapped (what the drill reveals)."""
    lines = textwrap.wrap(q.model_answer(), width)
    if q.follow_ups:
        lines += ["", "Follow-ups:"]
        for f in q.follow_ups:
            lines += textwrap.wrap("- " + f, width, subsequent_indent="  ")
    return "\n".join(lines)


DIFFICULTY_ORDER = {"easy": 0, "medium": 1, "hard": 2}


class Sheet:
    """Questions to display: ``_repr_html_`` folds the answers; ``str`` is plain text; ``repr``
    (Jupyter's text/plain fallback) is one line. ``by_difficulty`` orders easy, medium, hard
    under a small heading each."""

    def __init__(self, questions: list[Question], title: str | None = None, with_answers: bool = True,
                 start: int = 1, by_difficulty: bool = False):
        self.questions, self.title, self.with_answers, self.start = questions, title, with_answers, start
        self.by_difficulty = by_difficulty
        if by_difficulty:
            self.questions = sorted(questions, key=lambda q: (DIFFICULTY_ORDER[q.difficulty], q.id))

    def _numbered(self):
        prev = None
        for i, q in enumerate(self.questions, self.start):
            yield (q.difficulty if self.by_difficulty and q.difficulty != prev else None), i, q
            prev = q.difficulty

    def _repr_html_(self) -> str:
        parts = [f"<p><b>{_esc(self.title)}</b></p>"] if self.title else []
        for head, i, q in self._numbered():
            if head:
                parts.append(f'<p class="qlearn-level"><i>{head.capitalize()}</i></p>')
            parts.append(question_html(q, i, self.with_answers))
        return "\n".join(parts)

    def __str__(self) -> str:
        parts = [self.title] if self.title else []
        for head, i, q in self._numbered():
            if head:
                parts.append(f"-- {head} --")
            parts.append(question_text(q, i, self.with_answers))
        return "\n\n".join(parts)

    def __repr__(self) -> str:
        return f"<{len(self.questions)} interview questions: {', '.join(q.id for q in self.questions[:3])}...>"


def _fmt_number(v: float) -> str:
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        return f"{v:.4g}"
    return f"{v:.3e}"


def quiz_html(q: Question, number: int) -> str:
    """One self-test item: buttons or a number box, a feedback line and a folded answer."""
    z = q.quiz
    right = q.quiz_answer()
    head = f"<p><b>Q{number}.</b> {_esc(z.prompt)} <small>({_esc(q.id)})</small></p>"
    if z.kind == "choice":
        body = "\n".join(f'<button type="button" class="qlearn-option" data-index="{i}">{_esc(o)}</button>'
                         for i, o in enumerate(z.options))
        attrs = f'data-kind="choice" data-correct="{z.correct}"'
        solution = z.options[z.correct]
    else:
        if not math.isfinite(right):
            raise ValueError(f"{q.id}: quiz value {z.value!r} is not a finite number: {right}")
        body = (f'<input type="text" class="qlearn-number" inputmode="decimal" '
                f'aria-label="your answer to Q{number}"> {_esc(z.unit)} '
                f'<button type="button" class="qlearn-check">Check</button>')
        attrs = f'data-kind="numeric" data-answer="{right!r}" data-tol="{z.rel_tol!r}"'
        solution = f"{_fmt_number(right)} {z.unit}".strip() + f" (within {z.rel_tol:.0%} counts)"
    return (f'<div class="qlearn-quiz" {attrs}>\n{head}\n{body}\n'
            f'<span class="qlearn-feedback" role="status"></span>\n'
            f"<details><summary>Answer</summary><p><b>{_esc(solution)}</b></p>"
            f"<p>{_esc(q.model_answer())}</p></details>\n</div>")


class QuizSheet:
    """Self-test items. In a browser: checked by a small script (no kernel); without scripts
    each item still folds its answer in ``<details>``. ``str`` gives questions and answers."""

    def __init__(self, questions: list[Question], title: str | None = None):
        self.questions, self.title = questions, title

    def _repr_html_(self) -> str:
        parts = [f"<style>{QUIZ_CSS}</style>"]
        if self.title:
            parts.append(f"<p><b>{_esc(self.title)}</b></p>")
        parts += [quiz_html(q, i) for i, q in enumerate(self.questions, 1)]
        parts.append(f"<script>{QUIZ_JS}</script>")
        return "\n".join(parts)

    def __str__(self) -> str:
        out = []
        for i, q in enumerate(self.questions, 1):
            z, right = q.quiz, q.quiz_answer()
            sol = z.options[z.correct] if z.kind == "choice" else f"{_fmt_number(right)} {z.unit}".strip()
            opts = "".join(f"\n   {chr(97 + j)}) {o}" for j, o in enumerate(z.options))
            out.append(f"Q{i}. {z.prompt}{opts}\n   answer: {sol}")
        return "\n\n".join(out)

    def __repr__(self) -> str:
        return f"<self-test of {len(self.questions)} questions>"


def markdown_export(questions: list[Question]) -> str:
    """The bank as one Markdown document, by chapter then difficulty, answers in ``<details>``."""
    out = ["# qlearn interview questions", "",
           f"{len(questions)} questions; every number was computed by qlearn when this file was written.",
           ""]
    order = {d: i for i, d in enumerate(("easy", "medium", "hard"))}
    for ch in sorted({q.chapter for q in questions}):
        out += [f"## {ch}: {CHAPTER_TITLES.get(ch, ch)}", ""]
        for q in sorted((q for q in questions if q.chapter == ch), key=lambda q: (order[q.difficulty], q.id)):
            out += [f"### {q.question}", "", f"`{q.id}` · {q.difficulty} · tags: {', '.join(q.tags)}"
                    + (f" · follows `{q.after}`" if q.after else ""), "",
                    "<details><summary>Model answer</summary>", "", q.model_answer(), ""]
            if q.follow_ups:
                out += ["Follow-ups:", ""] + [f"- {f}" for f in q.follow_ups] + [""]
            out += ["</details>", ""]
    return "\n".join(out)


