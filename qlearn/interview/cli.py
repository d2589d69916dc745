"""``python -m qlearn.interview``: drill the bank in a terminal, or export it.

Drill: questions filtered by chapter/tag/difficulty, in a random order fixed by ``--seed``. Each
question is shown; Enter reveals the model answer and follow-ups; you grade yourself
(``y`` knew it, ``p`` partly, ``n`` did not, ``q`` quit). A summary closes the session. With
``--progress FILE`` every grade is saved as it is given, and the next run with the same file
resumes where you stopped (same filters and seed), skipping questions already graded.
Scripted input works: end of input stops the drill like ``q``.

Export: ``--export anki FILE.apkg`` (one note per question, tags kept; needs ``genanki``) or
``--export markdown FILE.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

from qlearn.interview import DIFFICULTIES, bank
from qlearn.interview.render import answer_text, markdown_export, question_text

GRADES = {"y": "knew it", "p": "partly", "n": "did not know"}
QUIT = "q"
PROGRESS_VERSION = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qlearn.interview",
                                description="Drill the qlearn interview questions, or export them.")
    p.add_argument("--chapter", action="append", help="chNN (repeatable)")
    p.add_argument("--tag", action="append", help="a tag (repeatable: any of them)")
    p.add_argument("--difficulty", action="append", choices=DIFFICULTIES, help="repeatable")
    p.add_argument("--seed", type=int, default=0, help="order of the questions (default 0)")
    p.add_argument("--limit", type=int, default=None, help="at most this many questions")
    p.add_argument("--progress", type=Path, default=None,
                   help="JSON file that records grades and resumes an interrupted drill")
    p.add_argument("--list", action="store_true", help="list the matching questions and exit")
    p.add_argument("--export", nargs=2, metavar=("FORMAT", "FILE"),
                   help="write the matching questions: 'anki FILE.apkg' or 'markdown FILE.md'")
    return p


def select(args) -> list:
    qs = bank(chapter=args.chapter, tag=args.tag, difficulty=args.difficulty)
    if not qs:
        raise SystemExit("no question matches these filters")
    return qs


def drill_order(qs: list, seed: int, limit: int | None) -> list[str]:
    ids = [q.id for q in qs]
    random.Random(seed).shuffle(ids)
    return ids[:limit] if limit is not None else ids


def _load_progress(path: Path | None, order: list[str], filters: dict) -> dict:
    fresh = {"version": PROGRESS_VERSION, "filters": filters, "order": order, "grades": {}}
    if path is None or not path.exists():
        return fresh
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"progress file {path} is not valid JSON ({e}); delete it to start over")
    if state.get("version") != PROGRESS_VERSION or state.get("filters") != filters:
        raise SystemExit(f"progress file {path} belongs to another drill (filters/seed "
                         f"{state.get('filters')}, now {filters}); use another file or delete it")
    return state


def _save(path: Path | None, state: dict) -> None:
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(path)


def _ask(prompt: str, out) -> str | None:
    out.write(prompt)
    out.flush()
    line = sys.stdin.readline()
    if not line:  # end of input
        out.write("\n")
        return None
    return line.strip().lower()


def drill(qs: list, args, out=None) -> dict:
    """Run the drill; returns the progress state (grades by question id)."""
    out = out or sys.stdout
    filters = {"chapter": args.chapter, "tag": args.tag, "difficulty": args.difficulty,
               "seed": args.seed, "limit": args.limit}
    state = _load_progress(args.progress, drill_order(qs, args.seed, args.limit), filters)
    by_id = {q.id: q for q in qs}
    todo = [i for i in state["order"] if i not in state["grades"] and i in by_id]
    done_before = len(state["order"]) - len(todo)
    if done_before:
        out.write(f"Resuming: {done_before} of {len(state['order'])} already graded.\n")
    for k, qid in enumerate(todo, done_before + 1):
        q = by_id[qid]
        out.write("\n" + "=" * 79 + "\n" + question_text(q, k, with_answer=False) + "\n")
        if _ask("[Enter] reveal the answer, q quit > ", out) in (None, QUIT):
            break
        out.write("\n" + answer_text(q) + "\n\n")
        grade = None
        while grade is None:
            g = _ask("Grade yourself: y knew it / p partly / n did not / q quit > ", out)
            if g is None or g == QUIT:
                break
            grade = g if g in GRADES else None
        if grade is None:
            break
        state["grades"][qid] = grade
        _save(args.progress, state)
    _save(args.progress, state)
    out.write(summary(state, by_id) + "\n")
    return state


def summary(state: dict, by_id: dict) -> str:
    grades = state["grades"]
    n, total = len(grades), len(state["order"])
    c = Counter(grades.values())
    lines = ["", f"Summary: {n} of {total} questions graded: " +
             ", ".join(f"{c[g]} {GRADES[g]}" for g in GRADES)]
    if n:
        score = (c["y"] + 0.5 * c["p"]) / n
        lines.append(f"Score {100 * score:.0f} % (partly counts half).")
        by_level = Counter(by_id[i].difficulty for i, g in grades.items() if g != "y" and i in by_id)
        if by_level:
            lines.append("To review: " + ", ".join(f"{by_level[d]} {d}" for d in DIFFICULTIES if by_level[d]))
        review = sorted(i for i, g in grades.items() if g == "n")
        if review:
            lines.append("Did not know: " + ", ".join(review))
    return "\n".join(lines)


def export(qs: list, fmt: str, path: Path, out=None) -> None:
    out = out or sys.stdout
    if fmt == "markdown":
        path.write_text(markdown_export(qs))
    elif fmt == "anki":
        from qlearn.interview.anki import write_apkg
        write_apkg(qs, path)
    else:
        raise SystemExit(f"--export FORMAT must be 'anki' or 'markdown', got {fmt!r}")
    out.write(f"wrote {len(qs)} questions to {path}\n")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"--limit must be a positive number of questions, got {args.limit}")
    qs = select(args)
    if args.export:
        export(qs, args.export[0], Path(args.export[1]))
    elif args.list:
        for q in qs:
            print(f"{q.id:32s} {q.difficulty:6s} {', '.join(q.tags)}")
    else:
        drill(qs, args)
    return 0
