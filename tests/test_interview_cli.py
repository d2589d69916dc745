"""``python -m qlearn.interview``: the drill under scripted input, resume, exports (Anki read back
from the SQLite inside the .apkg), and the self-test script in a real browser when one is here."""

import io
import json
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from qlearn import interview
from qlearn.interview import cli, render

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = "ch01"  # cheap to compute


def run(argv, stdin_text, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin_text))
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_drill_reveals_grades_summarises_and_resumes(tmp_path, monkeypatch, capsys):
    prog = tmp_path / "p.json"
    args = ["--chapter", CHAPTER, "--seed", "7", "--limit", "4", "--progress", str(prog)]
    # two questions: Enter reveals, then a bad grade is asked again, then y / n; then input ends
    out = run(args, "\nmaybe\ny\n\nn\n", monkeypatch, capsys)
    state = json.loads(prog.read_text())
    first_two = state["order"][:2]
    assert state["grades"] == {first_two[0]: "y", first_two[1]: "n"}
    q0 = {q.id: q for q in interview.bank(CHAPTER)}[first_two[0]]
    assert q0.model_answer()[:40] in out.replace("\n", " ")  # the revealed answer, computed
    assert "Summary: 2 of 4 questions graded: 1 knew it, 0 partly, 1 did not know" in out
    assert f"Did not know: {first_two[1]}" in out
    # resume: the same filters continue with the third question; q quits
    out = run(args, "\np\n\nq\n", monkeypatch, capsys)
    assert "Resuming: 2 of 4 already graded." in out
    state = json.loads(prog.read_text())
    assert state["grades"][state["order"][2]] == "p" and len(state["grades"]) == 3
    assert "Summary: 3 of 4" in out
    # same seed, same order; another seed is another drill and is refused
    assert cli.drill_order(interview.bank(CHAPTER), 7, 4) == state["order"]
    with pytest.raises(SystemExit, match="another drill"):
        run(["--chapter", CHAPTER, "--seed", "8", "--limit", "4", "--progress", str(prog)], "", monkeypatch,
            capsys)


def test_filters_and_bad_arguments(monkeypatch, capsys):
    out = run(["--list", "--difficulty", "hard", "--tag", "kv-cache"], "", monkeypatch, capsys)
    listed = [line.split()[0] for line in out.splitlines()]
    assert listed and all(q.difficulty == "hard" and "kv-cache" in q.tags
                          for q in interview.bank() if q.id in listed)
    with pytest.raises(SystemExit, match="no question matches"):
        run(["--tag", "no-such-tag"], "", monkeypatch, capsys)
    with pytest.raises(SystemExit, match="positive"):
        run(["--limit", "0"], "", monkeypatch, capsys)


def test_module_entry_point_runs_as_a_program():
    r = subprocess.run([sys.executable, "-m", "qlearn.interview", "--list", "--chapter", "ch03"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ch03.rule_of_thumb" in r.stdout


def test_markdown_export(tmp_path, monkeypatch, capsys):
    path = tmp_path / "bank.md"
    run(["--chapter", CHAPTER, "--export", "markdown", str(path)], "", monkeypatch, capsys)
    text = path.read_text()
    for q in interview.bank(CHAPTER):
        assert q.question in text and q.model_answer() in text


def test_anki_export_reads_back_from_its_sqlite(tmp_path, monkeypatch, capsys):
    pytest.importorskip("genanki")
    path = tmp_path / "deck.apkg"
    run(["--chapter", CHAPTER, "--export", "anki", str(path)], "", monkeypatch, capsys)
    with zipfile.ZipFile(path) as z:
        (tmp_path / "c.anki2").write_bytes(z.read("collection.anki2"))
    con = sqlite3.connect(tmp_path / "c.anki2")
    notes = con.execute("select flds, tags from notes").fetchall()
    cards = con.execute("select count(*) from cards").fetchone()[0]
    con.close()
    qs = interview.bank(CHAPTER)
    assert len(notes) == len(qs) == cards
    by_id = {f.split("\x1f")[0]: (f.split("\x1f"), t.split()) for f, t in notes}
    from qlearn.interview.anki import anki_tag
    for q in qs:
        fields, tags = by_id[q.id]
        assert render.html.escape(q.model_answer()) == fields[2]
        assert set(tags) >= {anki_tag(t) for t in q.tags} | {q.chapter, q.difficulty}
    with pytest.raises(ValueError, match=".apkg"):
        from qlearn.interview.anki import write_apkg
        write_apkg(qs, tmp_path / "deck.zip")


def _browser():
    try:
        from selenium import webdriver
    except ImportError:
        return None
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chrome or not shutil.which("chromedriver"):
        return None
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=opts)
    except Exception:  # noqa: BLE001 - no usable browser here: the test skips
        return None


def test_quiz_works_in_a_browser_without_console_errors(tmp_path):
    By = pytest.importorskip("selenium.webdriver.common.by").By

    quizzed = [q for q in interview.bank() if q.quiz and q.chapter in ("ch01", "ch02", "ch09")]
    kinds = {q.quiz.kind for q in quizzed}
    assert kinds == {"numeric", "choice"}
    page = tmp_path / "quiz.html"
    sheet = interview.quiz(quizzed)._repr_html_()
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>q</title></head>"
                    f"<body>{sheet}{sheet}</body></html>")  # twice: the script must install once
    drv = _browser()
    if drv is None:
        pytest.skip("no headless Chromium + chromedriver + selenium here")
    try:
        drv.get(page.as_uri())
        boxes = drv.find_elements(By.CSS_SELECTOR, ".qlearn-quiz")[:len(quizzed)]
        for q, box in zip(quizzed, boxes):
            fb = box.find_element(By.CSS_SELECTOR, ".qlearn-feedback")
            if q.quiz.kind == "numeric":
                inp = box.find_element(By.CSS_SELECTOR, "input.qlearn-number")
                inp.send_keys(repr(q.quiz_answer() * (1 + q.quiz.rel_tol / 2)))
                box.find_element(By.CSS_SELECTOR, ".qlearn-check").click()
                assert fb.text == "Right.", q.id
                inp.clear()
                inp.send_keys(repr(q.quiz_answer() * (1 + 3 * q.quiz.rel_tol) + 1))
                box.find_element(By.CSS_SELECTOR, ".qlearn-check").click()
                assert fb.text.startswith("Not quite"), q.id
                inp.clear()
                inp.send_keys("abc")
                box.find_element(By.CSS_SELECTOR, ".qlearn-check").click()
                assert fb.text.startswith("Type a number"), q.id
            else:
                opts = box.find_elements(By.CSS_SELECTOR, ".qlearn-option")
                opts[(q.quiz.correct + 1) % len(opts)].click()
                assert fb.text.startswith("Not this one"), q.id
                opts[q.quiz.correct].click()
                assert fb.text == "Right.", q.id
        errors = [e for e in drv.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
    finally:
        drv.quit()
