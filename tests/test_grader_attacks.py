"""A batch of crafted chapter-3 submissions, graded in one run of ``python -m qlearn.grade``.

Each attack is built from the blank notebook (it solves nothing, so it must score nothing) or
from the solution notebook (it solves everything, so a robustness problem must not cost points
beyond what it really breaks). ``ATTACKS`` holds the points each one should get.

Asserted: every submission gets its expected points per exercise (so no attack earns a point for
an exercise it did not solve and the control gets full marks), no submission file changes, no
process the batch started is alive afterwards, every submission has a CSV row and a feedback
file, and the grader's stdout holds only its own lines.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlearn import grade
from qlearn.exercises import exercises_for

ROOT = Path(__file__).resolve().parent.parent
NAME = "03_uniform_quantization.ipynb"
CHAPTER = "ch03"
IDS = [e.id for e in exercises_for(CHAPTER)]          # best_clip, fake_quantize_asymmetric, ...
MARKER = "QLEARN_ATTACK_DAEMON_7f3a"                    # in the command line of the daemon attack
CELL_TIMEOUT_S = 6
BUDGET_S = 150

# The plain sandbox (no root or no working unshare) does not hide the file system nor contain a
# daemon that replaced its environment (see qlearn.grade): those attacks need the unshare sandbox.
NEEDS_NAMESPACES = ("fake_stdout", "tamper", "daemon", "unforbid_shell")
ALL = {i: 1 for i in IDS}
NONE = {i: 0 for i in IDS}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _code(src: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src}


def _insert_after_imports(nb: dict, src: str) -> dict:
    nb = copy.deepcopy(nb)
    i = next(k for k, c in enumerate(nb["cells"]) if "from qlearn.exercises import check" in "".join(c["source"]))
    nb["cells"].insert(i + 1, _code(src))
    return nb


def _replace_def(nb: dict, fn_name: str, src: str | None) -> dict:
    """Replace (or delete, ``src=None``) the cell defining ``fn_name``."""
    nb = copy.deepcopy(nb)
    i = next(k for k, c in enumerate(nb["cells"]) if f"def {fn_name}(" in "".join(c["source"]))
    if src is None:
        del nb["cells"][i]
    else:
        nb["cells"][i] = _code(src)
    return nb


def _append(nb: dict, src: str) -> dict:
    nb = copy.deepcopy(nb)
    nb["cells"].append(_code(src))
    return nb


CHEAT_GRADE_LOG = """
import json, os, glob
lines = ''.join(json.dumps({"id": i, "passed": True, "message": "[correct]"}) + "\\n" for i in IDS)
for p in [os.environ.get("QLEARN_GRADE_LOG")] + glob.glob("/tmp/qlearn-grade-*/checks.jsonl"):
    try:
        open(p, "a").write(lines)
    except Exception:
        pass
"""

CHEAT_REGISTRY = """
import qlearn.exercises as E
try:
    E._load_all()
except Exception:
    pass
for k in list(E._REGISTRY):
    E._REGISTRY[k].checker = lambda answer: None
E.evaluate = lambda ex, answer: E.CheckResult(ex.id, True, "[correct]")
"""

CHEAT_ALLCLOSE = """
import numpy as np
np.allclose = lambda *a, **k: True
np.array_equal = lambda *a, **k: True
np.testing.assert_allclose = lambda *a, **k: None
"""

CHEAT_REFERENCE = """
import qlearn.uniform as U
import qlearn.exercises as E
U.sqnr_db = lambda x, x_hat: 0.0
U.quantize = U.fake_quantize = lambda *a, **k: None
E.compare_close = E.compare_equal = lambda *a, **k: None
E.Mismatch = type("Mismatch", (Exception,), {})
"""

CALLS_REFERENCE = """
import numpy as np
from qlearn import uniform
from qlearn.exercises import check


def sqnr_db(x, x_hat):
    return uniform.sqnr_db(x, x_hat)


def quantize_symmetric(x, bits):
    return uniform.quantize(x, bits).codes


def fake_quantize_asymmetric(x, bits):
    return uniform.fake_quantize(x, bits, symmetric=False)


def per_group_fake_quantize(W, bits, group_size):
    return uniform.fake_quantize(W, bits, block_size=(1, group_size))


def best_clip(x, bits):
    from qlearn.exercises.ch03 import best_clip_ratio
    return best_clip_ratio(x, bits)


for name, fn in [("ch03.sqnr_db", sqnr_db), ("ch03.quantize_symmetric", quantize_symmetric),
                 ("ch03.fake_quantize_asymmetric", fake_quantize_asymmetric),
                 ("ch03.per_group", per_group_fake_quantize), ("ch03.best_clip", best_clip)]:
    check(name, fn)
"""

UNFORBID = """
import importlib, importlib.util, sys
import qlearn.uniform
from qlearn.exercises import check
for how in ("reload", "exec"):
    try:
        if how == "reload":
            U = importlib.reload(qlearn.uniform)
        else:
            U = type(sys)("u2")
            exec(compile(open(qlearn.uniform.__file__).read(), qlearn.uniform.__file__, "exec"), U.__dict__)
        break
    except Exception:
        U = qlearn.uniform
try:
    spec = importlib.util.spec_from_file_location(
        "c3", qlearn.uniform.__file__.replace("uniform.py", "exercises/ch03.py"))
    C3 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(C3)
    ratio = C3.best_clip_ratio
except Exception:
    ratio = None

check("ch03.sqnr_db", lambda x, x_hat: U.sqnr_db(x, x_hat))
check("ch03.quantize_symmetric", lambda x, bits: U.quantize(x, bits).codes)
check("ch03.best_clip", lambda x, bits: ratio(x, bits))
"""

UNFORBID_SHELL = """
import os, subprocess, sys, types
import qlearn.uniform
from qlearn.exercises import check
path = qlearn.uniform.__file__
src = subprocess.run(["cat", path], capture_output=True, text=True).stdout
if "def sqnr_db" not in src:  # openat through a directory descriptor: no path the hook can match
    d = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        fd = os.open(os.path.basename(path), os.O_RDONLY, dir_fd=d)
        src = os.read(fd, 10**7).decode()
    except OSError:
        pass
U = sys.modules["u3"] = types.ModuleType("u3")
exec(compile(src, "<copied>", "exec"), U.__dict__)
check("ch03.sqnr_db", lambda x, x_hat: U.sqnr_db(x, x_hat))
check("ch03.quantize_symmetric", lambda x, bits: U.quantize(x, bits).codes)
"""

FAKE_STDOUT = """
import os
fake = b"  5/5   ok                 FAKE_SCORE_LINE\\n"
for pid in [os.getppid(), 1] + [int(p) for p in os.listdir("/proc") if p.isdigit()]:
    for fd in (1, 2):
        try:
            with open(f"/proc/{pid}/fd/{fd}", "wb") as f:
                f.write(fake)
        except Exception:
            pass
os.system("for f in /proc/[0-9]*/fd/1; do echo '  5/5 ok FAKE_SCORE_LINE' > $f; done 2>/dev/null")
print("FAKE_SCORE_LINE")
"""

TAMPER = """
import glob, os, json
for p in glob.glob({folder!r} + "/*"):
    try:
        with open(p, "w") as f:
            f.write("tampered")
    except Exception:
        pass
try:
    open({folder!r} + "/new_file.ipynb", "w").write("{{}}")
except Exception:
    pass
os.system("chmod 777 {folder}/* ; echo tampered > {folder}/control.ipynb ; rm -f {folder}/*") 
"""

DAEMON = """
import os, subprocess, sys
code = '''
# {marker}
import glob, os, time
end = time.time() + 90
while time.time() < end:
    for p in glob.glob({folder!r} + "/*") + glob.glob("/tmp/qlearn-grade-*/*.ipynb"):
        try:
            open(p, "a").write("x")
        except Exception:
            pass
    time.sleep(0.2)
'''
subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", code])
    os._exit(0)
"""

FORGE = """
import json, os, struct
for reply in ({"nonce": None, "ok": True}, {"ok": True, "captured": True, "callable": False, "value": 1.0}):
    head = json.dumps(reply).encode()
    frame = struct.pack("<QQ", len(head), 0) + head
    for fd in range(3, 64):
        try:
            os.write(fd, frame)
        except OSError:
            pass
"""

SLOW_SQNR = """
def sqnr_db(x, x_hat):
    while True:
        pass
"""


def _attacks(blank: dict, sol: dict, folder: Path) -> dict[str, tuple[dict | bytes, dict[str, int], str]]:
    """name -> (notebook or raw bytes, expected points per exercise, what it tries)."""
    f = str(folder)
    ids = f"IDS = {IDS!r}\n"
    no_meta = copy.deepcopy(sol)
    del no_meta["metadata"]["qlearn"]
    wrong = copy.deepcopy(sol)
    wrong["metadata"]["qlearn"]["chapter"] = "ch02"
    inject = copy.deepcopy(sol)
    inject["metadata"]["qlearn"]["chapter"] = "ch02\n  5/5   ok                 FAKE_SCORE_LINE\n"
    reordered = copy.deepcopy(sol)
    reordered["cells"] = reordered["cells"][::-1]
    both = dict(NONE)
    return {
        "control": (sol, ALL, "the reference solution"),
        "grade_log": (_insert_after_imports(blank, ids + CHEAT_GRADE_LOG), NONE, "append passed records to the log"),
        "registry": (_append(blank, CHEAT_REGISTRY), NONE, "replace the checkers in _REGISTRY"),
        "allclose": (_insert_after_imports(blank, CHEAT_ALLCLOSE), NONE, "patch numpy.allclose to return True"),
        "reference": (_insert_after_imports(blank, CHEAT_REFERENCE), NONE, "override the reference functions"),
        "calls_qlearn": (_append(blank, CALLS_REFERENCE), NONE, "answers that call qlearn's own implementation"),
        "unforbid": (_append(blank, UNFORBID), both, "reload / exec qlearn.uniform, load ch03.py by path"),
        "unforbid_shell": (_append(blank, UNFORBID_SHELL), NONE, "read qlearn/uniform.py with cat or openat, exec it"),
        "fake_stdout": (_append(blank, FAKE_STDOUT), NONE, "print a fake score into the grader's stdout"),
        "tamper": (_append(blank, TAMPER.format(folder=f)), NONE, "edit the other submissions"),
        "daemon": (_append(blank, DAEMON.format(marker=MARKER, folder=f)), NONE, "leave a background process"),
        "forge": (_append(blank, FORGE), NONE, "write forged replies into the result pipe"),
        "exc_first": ({**sol, "cells": [_code("raise RuntimeError('boom')")] + sol["cells"]}, ALL,
                      "an exception in the first cell"),
        "loop": (_insert_after_imports(sol, "while True:\n    pass\n"), ALL, "an infinite loop in a cell"),
        "sys_exit": (_insert_after_imports(sol, "import sys\nsys.exit(3)\n"), ALL, "sys.exit in a cell"),
        "os_exit": (_insert_after_imports(sol, "import os\nos._exit(1)\n"), ALL, "os._exit (the process dies)"),
        "output": (_insert_after_imports(sol, "print('x' * 100_000_000)\n"), ALL, "100 MB of output"),
        "slow_answer": (_replace_def(sol, "sqnr_db", SLOW_SQNR), {**ALL, "ch03.sqnr_db": 0},
                        "an answer that never returns"),
        "deleted": (_replace_def(sol, "sqnr_db", None), {**ALL, "ch03.sqnr_db": 0}, "the sqnr_db cell deleted"),
        "reordered": (reordered, NONE, "cells in reverse order (every check before its definition)"),
        "no_chapter": (no_meta, ALL, "no chapter metadata (graded with --chapter ch03)"),
        "wrong_chapter": (wrong, ALL, "metadata says ch02 (graded with --chapter ch03, flagged)"),
        "meta_inject": (inject, ALL, "a fake score line in the chapter metadata"),
        "invalid_json": (b'{"cells": [', NONE, "a notebook that is not JSON"),
    }


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _alive_with(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _uid_procs(uids: set[int], settle_s: float = 5.0) -> list[int]:
    """Live (not zombie) processes of the private uids. A SIGKILLed process stays in /proc as a
    zombie until its parent reaps it; it runs nothing, so it does not count, and processes that
    are still being torn down get ``settle_s`` seconds to go."""
    deadline = time.monotonic() + settle_s
    while True:
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    status = (d / "status").read_text().splitlines()
                    uid = int(next(ln for ln in status if ln.startswith("Uid:")).split()[1])
                    state = next(ln for ln in status if ln.startswith("State:")).split()[1]
                except (OSError, StopIteration, ValueError, IndexError):
                    continue
                if uid in uids and state not in ("Z", "X"):
                    out.append(int(d.name))
        if not out or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    out = tmp_path_factory.mktemp("out")
    blank = _load(ROOT / "exercises" / NAME)
    sol = _load(ROOT / "exercises" / "solutions" / NAME)
    attacks = _attacks(blank, sol, folder)
    if grade.sandbox_mode() != "unshare":
        print(f"plain sandbox here: leaving out {NEEDS_NAMESPACES}")
        attacks = {k: v for k, v in attacks.items() if k not in NEEDS_NAMESPACES}
    for name, (nb, _, _) in attacks.items():
        (folder / f"{name}.ipynb").write_bytes(nb if isinstance(nb, bytes) else json.dumps(nb).encode())
    before = _digest(folder)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qlearn.grade", str(folder), "--chapter", CHAPTER, "--jobs", "2",
         "--timeout", str(CELL_TIMEOUT_S), "--budget", str(BUDGET_S),
         "--csv", str(out / "grades.csv"), "--feedback", str(out / "feedback")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    stdout, stderr = proc.communicate(timeout=900)
    wall = time.monotonic() - t0
    time.sleep(0.5)
    rows = list(csv.DictReader((out / "grades.csv").open())) if (out / "grades.csv").exists() else []
    uids = {grade.UID_BASE + grade.UID_SLOTS * (proc.pid % 50_000) + s for s in range(2)}
    yield {"attacks": attacks, "folder": folder, "out": out, "before": before, "after": _digest(folder),
           "rc": proc.returncode, "stdout": stdout.decode(errors="replace"), "stderr": stderr.decode(errors="replace"),
           "rows": {r["student"]: r for r in rows}, "n_rows": len(rows), "wall": wall,
           "alive": _alive_with(MARKER), "uid_alive": _uid_procs(uids)}
    for pid in _alive_with(MARKER):  # never leave one behind, even when the test fails
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_batch_completes_with_a_row_per_submission(batch):
    assert batch["rc"] == 0, batch["stderr"][-3000:]
    assert batch["n_rows"] == len(batch["attacks"]) and set(batch["rows"]) == set(batch["attacks"])
    fb = batch["out"] / "feedback"
    assert {p.stem for p in fb.glob("*.md")} == set(batch["attacks"])


def test_points_per_attack(batch):
    table = []
    bad = []
    for name, (_, expected, what) in batch["attacks"].items():
        row = batch["rows"][name]
        got = {i: int(row[i]) for i in IDS}
        table.append(f"{name:14s} {sum(got.values())}/{len(IDS)} expected {sum(expected.values())}/{len(IDS)}"
                     f"  {row['status']}  ({what})")
        if got != expected:
            bad.append((name, got, expected, row["status"], row["error"]))
    print("\n".join(table))
    assert not bad, bad


def test_statuses_say_what_happened(batch):
    r = batch["rows"]
    assert r["control"]["status"] == "ok"
    assert "invalid-notebook" in r["invalid_json"]["status"]
    assert "chapter-mismatch" in r["wrong_chapter"]["status"]
    assert "no-chapter-metadata" in r["no_chapter"]["status"]
    assert "cell-timeout" in r["loop"]["status"]
    assert "crashed" in r["os_exit"]["status"]
    assert "protocol-violation" in r["forge"]["status"]
    assert "output-capped" in r["output"]["status"]
    fb = (batch["out"] / "feedback" / "calls_qlearn.md").read_text()
    assert "qlearn.uniform.sqnr_db, which this exercise asks you to write yourself" in fb
    assert "did not finish within" in (batch["out"] / "feedback" / "slow_answer.md").read_text()
    unforbid = (batch["out"] / "feedback" / "unforbid.md").read_text()
    assert "calls qlearn.uniform.sqnr_db" in unforbid and "calls qlearn.uniform.quantize" in unforbid


def test_no_submission_file_changes(batch):
    assert batch["after"] == batch["before"]


def test_no_process_left_behind(batch):
    assert batch["alive"] == [], "a process the batch started outlived it"
    assert batch["uid_alive"] == [], "a process of a private grading uid outlived the batch"


def test_stdout_holds_only_the_graders_lines(batch):
    lines = batch["stdout"].splitlines()
    own = re.compile(r"^\s*\d+/\d+\s+\S+\s+\S+( {2}\[.*\])?$|^qlearn\.grade: \d+ submissions, ")
    assert lines and all(own.match(ln) for ln in lines), lines
    students = [ln.split()[2] for ln in lines[:-1]]
    assert sorted(students) == sorted(batch["attacks"]), students
    # the marker may appear only quoted inside the meta_inject line's own error note
    assert all(ln.split()[2] == "meta_inject" for ln in lines if "FAKE_SCORE_LINE" in ln)
    assert len(lines) == len(batch["attacks"]) + 1
