"""Anki export of the bank: one note per question, its tags kept (needs ``genanki``).

Note and deck ids are derived from fixed names, so re-exporting updates the same notes in a
collection (genanki's ``guid_for(question id)``) instead of duplicating them.
"""

from __future__ import annotations

import hashlib
import html
import re
from pathlib import Path

DECK_NAME = "qlearn interview"
MODEL_NAME = "qlearn interview question"
FIELDS = ("Id", "Question", "Answer", "FollowUps", "Difficulty")


def _stable_id(name: str) -> int:
    """A 31-bit id from a name (Anki wants a fixed positive integer per model and deck)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") >> 1


def anki_tag(tag: str) -> str:
    """Anki tags cannot hold spaces: 'group size' -> 'group_size'."""
    return re.sub(r"\s+", "_", tag.strip())


def _model():
    import genanki

    return genanki.Model(
        _stable_id(MODEL_NAME), MODEL_NAME, fields=[{"name": f} for f in FIELDS],
        templates=[{"name": "Card 1",
                    "qfmt": "<div class=q>{{Question}}</div><div class=meta>{{Id}} · {{Difficulty}}</div>",
                    "afmt": "{{FrontSide}}<hr id=answer><div>{{Answer}}</div>"
                            "{{#FollowUps}}<p><i>Follow-ups</i></p><ul>{{FollowUps}}</ul>{{/FollowUps}}"}],
        css=".card { font-family: sans-serif; font-size: 18px; text-align: left; }"
            " .meta { color: #666; font-size: 13px; }")


def notes(questions):
    """genanki notes, one per question, fields HTML-escaped, tags = question tags + chapter +
    difficulty."""
    import genanki

    model = _model()
    out = []
    for q in questions:
        fu = "".join(f"<li>{html.escape(f)}</li>" for f in q.follow_ups)
        fields = [q.id, html.escape(q.question), html.escape(q.model_answer()),
                  fu, q.difficulty]
        tags = sorted({anki_tag(t) for t in q.tags} | {q.chapter, q.difficulty})
        out.append(genanki.Note(model=model, fields=fields, tags=tags, guid=genanki.guid_for(q.id)))
    return out


def write_apkg(questions, path) -> Path:
    """Write an Anki package (.apkg) holding one note per question."""
    try:
        import genanki
    except ImportError as e:
        raise ImportError("Anki export needs genanki: pip install 'qlearn[interview]'") from e
    path = Path(path)
    if path.suffix != ".apkg":
        raise ValueError(f"an Anki package file name ends in .apkg, got {path.name!r}")
    deck = genanki.Deck(_stable_id(DECK_NAME), DECK_NAME,
                        description="Interview questions of the qlearn book; numbers computed by qlearn.")
    for n in notes(questions):
        deck.add_note(n)
    genanki.Package(deck).write_to_file(str(path))
    return path
