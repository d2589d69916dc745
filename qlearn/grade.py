"""Grade exercise notebooks without trusting them: ``python -m qlearn.grade FOLDER [...]``.

Usage::

    python -m qlearn.grade submissions/ --csv grades.csv --feedback feedback/ --jobs 2
    python -m qlearn.grade submissions/ --chapter ch03      # the chapter, whatever the metadata says

**What is trusted.** Only this process (the grader) and the checkers in ``qlearn/exercises``,
imported here. A student's notebook only *produces answers*: its code runs in a worker process
(:mod:`qlearn.grade_worker`) that the grader never believes about anything but the return values
of the student's own functions, and those only as plain data.

**How an exercise is graded.**

1. The grader reads the notebook JSON itself (a file that is not JSON, or has no chapter, still
   gets a gradebook row), takes the source of its code cells (``%%time``-style magics run their code, other magics
   and shell escapes are no-ops) and
   never hands the file to student code.
2. The chapter's exercises are split into groups by their ``forbid`` set. For each group a fresh
   worker starts in its own sandbox (below), installs the forbidden-function traps, then executes
   the code cells one by one, each under a time limit. ``check(id, answer)`` in the worker only
   records the answer.
3. For each exercise the grader runs the checker from ``qlearn/exercises/chNN.py`` **in its own
   process**, on a proxy of the recorded answer. The checker generates fresh random inputs here;
   each call of the proxy sends them to the worker as plain data (JSON plus a numpy ``.npz``,
   never pickle), the worker calls the student's function, and the result comes back as plain
   data; the checker then compares it here with a reference it imported here. So a checker
   written as one function taking the answer (today's style) needs no change: the split into
   "make inputs", "run student function", "compare" happens at the call of the answer. The only
   contract is the one :mod:`qlearn.exercises` states: a checker only calls the answer with plain
   data, or uses a value answer as plain data. A value answer (``check("ch02.bf16_epsilon",
   eps)``) travels as plain data once.

   Why the checker runs here rather than in the worker: a checker run in the worker would run
   after the student's code, which could replace it, its reference or numpy first; re-deriving
   its verdict here from a trace of (inputs, outputs) the worker reports would let the student
   choose the inputs. With the proxy every trusted step -- drawing the inputs, the reference, the
   comparison -- happens in this process, and no exercise needs grading code of its own. The
   cost: one pipe round trip per call of the student's function, and the notebook's cells run
   once per forbid group.
4. The verdict never comes from a file, stream or message the student's code can write: a result
   is only the return value of their function, decoded without pickle, and every reply carries
   the random nonce of the grader's request. Patching numpy, the registry, the checkers or the
   references in the worker changes nothing here. Faking the protocol only lets a student send
   return values, which must then be right on inputs drawn after their code ran.
5. Forbidden functions (``@exercise(..., forbid=(...))``): the worker replaces each one's
   ``__code__`` with a trap before any student code runs and keeps no reference to the original,
   and its audit hook (which Python cannot remove) refuses to reload or read that module's source
   and refuses to import ``qlearn/exercises/chNN.py`` (where reference helpers live). A trapped
   call raises in the student's code and is reported by an audit event; the grader fails the
   exercise when the reply lists one. A student who defeats the report still gets no result from
   the trap, so cannot pass with it. In the ``unshare`` sandbox those source files also read as
   empty, even to a shell. Not covered: running another copy of qlearn's code (pasted into the
   notebook, or another checkout on the grading machine: that is copying, for a plagiarism
   check), and rewriting interpreter memory with ctypes.

**The sandbox of one submission** (``--sandbox auto`` picks the strongest that works here; the
console summary and the CSV say which ran):

* both modes: a private temporary directory holding a copy of the notebook and the worker's
  HOME, TMPDIR and caches; its own session and process group; a clean environment (none of the
  grader's variables, one thread per BLAS); limits via ``setrlimit`` on CPU seconds (the
  submission budget), address space (``--memory-mb``), file size (``--output-mb``: the output
  log and any file it writes; past it writes fail and later output is dropped), no core dumps;
  wall-clock limits per cell (``--timeout``) and per submission (``--budget``) enforced here;
  the worker is killed (its whole process group, and every process of its uid) when its group
  of exercises is graded, after a timeout, and at the end.
* ``unshare`` (root, util-linux ``unshare`` works): new mount, PID, network, IPC and UTS
  namespaces. The worker sees a fresh ``/proc`` with only its own processes (not the grader's
  stdout, not other workers), has no network, finds a small empty tmpfs over the submission and
  output folders and over everything else in their top-level folder (and in /home, /srv, /mnt,
  /media, /var/tmp) that its Python does not need, over root's home (except the Python install it needs), over ``/tmp`` (except
  its own directory) and ``/dev/shm``, gets a size-limited tmpfs (``--disk-mb``) as its own
  directory, HOME and TMPDIR, and runs as an unprivileged uid of its own (one per
  ``--jobs`` slot), so it can write only its own directory and cannot signal or trace anything
  of the grader's. When the worker dies, the kernel kills every process of its PID namespace,
  double-forked daemons included.
* ``plain`` (otherwise): the same limits, session and process group, the audit hook (which
  refuses Python-level opens of other processes' ``/proc`` entries), and, when the grader runs as
  root and the Python install is readable by others, an unprivileged uid of its own. It does not
  hide the file system: without a private uid the worker can read and write whatever the grader
  can, and a shell it spawns can write to the grader's terminal through ``/proc``; it does not
  cut the network. A process that leaves the group is still killed when it has the private uid or
  still carries the worker's ``QLEARN_SANDBOX_TOKEN`` in its environment; one that also replaced
  its environment survives. Use it only for trusted submissions; prefer ``unshare``.
  Bubblewrap is not used: it is not installed on the machines this was built on, and ``unshare``
  gives the same namespaces.

**Every submission gets a row**: an unreadable notebook, a missing or mismatched chapter
(``--chapter`` sets it; a mismatch is flagged in ``status``), a cell that times out (the worker
is restarted, the cells that ran are replayed, the timed-out cell is skipped, later exercises are
still graded), a worker that dies (same), a student function that never returns (that exercise
fails, the next one gets a fresh worker), the submission budget running out (exercises not yet
graded score 0). The exit status is 0 when the batch completed, 1 with ``--require-full`` when
someone is below full marks, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import queue
import re
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qlearn import exercises as E
from qlearn.grade_worker import ProtocolError, Unsendable, decode, encode

__all__ = ["grade_notebook", "grade_paths", "SubmissionGrade", "NotebookGrade", "Options",
           "sandbox_mode", "write_csv", "write_feedback", "main"]

DEFAULT_CELL_TIMEOUT_S = 300      # one code cell, or one call of a student's function
DEFAULT_BUDGET_S = 900            # one submission, all groups and restarts together
DEFAULT_MEMORY_MB = 4096          # address space of the worker (torch needs about 1.5 GB)
DEFAULT_OUTPUT_MB = 16            # the output log and any file the student's code writes
DEFAULT_DISK_MB = 256             # unshare: the worker's directory is a tmpfs of this size
MAX_PROCESSES = 256               # processes and threads of the worker's private uid
MAX_RESTARTS = 6                  # fresh workers per exercise group after timeouts and deaths
START_TIMEOUT_S = 120             # worker start: namespaces, imports, traps
UID_BASE = 200_000                # private uids: UID_BASE + UID_SLOTS * (grader pid % 50000) + slot
UID_SLOTS = 1024                  # the most --jobs
NS_FLAGS = ("--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc")
MAX_LISTED_CELL_ERRORS = 12
DATA_TOPS = ("/home", "/srv", "/mnt", "/media", "/var/tmp")   # unshare: covered but for what is needed
SYSTEM_TOPS = ("/", "/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev",
               "/run", "/boot", "/tmp", "/var", "/opt", "/nix")
MAX_REPLY = 64 * 2**20            # bytes of one reply (header or arrays) the grader accepts


class WorkerLost(BaseException):
    """The worker stopped answering (timeout, death, protocol violation); not an ``Exception``
    so that no checker's ``except Exception`` can swallow it."""

    KINDS = {"timeout": "cell-timeout", "budget": "budget-exceeded", "died": "crashed",
             "protocol": "protocol-violation", "restarts": "crashed",
             "start": "grader-error"}

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.reason, self.kind = reason, kind
        self.budget = kind == "budget"

    @property
    def status(self) -> str:
        return self.KINDS[self.kind]


class GraderError(BaseException):
    """A checker broke the checker contract (an argument that is not plain data)."""


@dataclass
class Options:
    """Limits and choices of one grading batch (see the module docstring)."""
    timeout: float = DEFAULT_CELL_TIMEOUT_S
    budget: float = DEFAULT_BUDGET_S
    memory_mb: int = DEFAULT_MEMORY_MB
    output_mb: int = DEFAULT_OUTPUT_MB
    disk_mb: int = DEFAULT_DISK_MB
    sandbox: str = "auto"
    chapter: str | None = None
    hide: tuple[str, ...] = ()      # folders the worker must not see (submissions, outputs)


@dataclass
class SubmissionGrade:
    """One gradebook row. ``results`` maps an exercise id to ``{"passed", "message", "points",
    "max"}``; ``status`` lists flags (empty: everything ran)."""
    path: str
    student: str
    chapter: str | None
    score: int = 0
    total: int = 0
    results: dict[str, dict] = field(default_factory=dict)
    status: list[str] = field(default_factory=list)
    error: str | None = None
    runtime_s: float = 0.0
    cpu_s: float = 0.0              # CPU seconds of the student's processes (approximate)
    sandbox: str = ""
    cell_errors: list[str] = field(default_factory=list)

    @property
    def full_marks(self) -> bool:
        return self.total > 0 and self.score == self.total

    @property
    def status_text(self) -> str:
        return ";".join(dict.fromkeys(self.status)) or "ok"

    def flag(self, status: str, error: str | None = None) -> None:
        self.status.append(status)
        if error and not self.error:
            self.error = _oneline(error)


NotebookGrade = SubmissionGrade  # the name of earlier versions


def _oneline(text: str, limit: int = 300) -> str:
    """``text`` on one line of printable characters (a notebook's metadata or file name can hold
    anything, and the grader's console lines must stay the grader's)."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --- sandbox -------------------------------------------------------------------------------------

_MODE_CACHE: dict[str, str] = {}


def sandbox_mode(requested: str = "auto") -> str:
    """``"unshare"`` or ``"plain"``: what ``requested`` (auto, unshare, plain) gives here."""
    if requested not in ("auto", "unshare", "plain"):
        raise ValueError(f"sandbox should be 'auto', 'unshare' or 'plain', got {requested!r}")
    if requested == "plain":
        return "plain"
    if "unshare" not in _MODE_CACHE:
        ok = False
        exe = shutil.which("unshare")
        if exe and os.geteuid() == 0:
            try:
                ok = subprocess.run([exe, *NS_FLAGS, "true"], capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
        _MODE_CACHE["unshare"] = "unshare" if ok else "plain"
    mode = _MODE_CACHE["unshare"]
    if requested == "unshare" and mode != "unshare":
        raise ValueError("--sandbox unshare: needs root and a working util-linux unshare "
                         "(mount, PID and network namespaces); use --sandbox auto or plain")
    return mode


def _needed_paths() -> list[str]:
    """Folders the worker's Python must read: the install, the virtual environment (also under
    the name ``sys.executable`` uses), site-packages, and the qlearn package -- not the rest of
    its repository (the solutions live there)."""
    qpkg = os.path.realpath(Path(E.__file__).parents[1])
    qroot = os.path.dirname(qpkg)
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)))}
    paths |= {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    paths = {p for p in paths if p != qroot and not p.startswith(qroot + os.sep)} | {qpkg}
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
    if os.path.exists(os.path.join(venv, "pyvenv.cfg")):
        paths.add(venv)  # maybe a link (.venv -> elsewhere): kept under this name too
    return sorted(paths)


def _other_qlearn_copies() -> list[str]:
    """qlearn packages other than this one that an import could reach (sys.path, an editable
    install's finder): the unshare sandbox covers them, so the worker sees one qlearn only."""
    own = os.path.realpath(Path(E.__file__).parents[1])
    found = {os.path.join(p, "qlearn") for p in sys.path if p and os.path.isdir(os.path.join(p, "qlearn"))}
    for name, mod in list(sys.modules.items()):
        mapping = getattr(mod, "MAPPING", None) if name.startswith("__editable__") else None
        if isinstance(mapping, dict) and isinstance(mapping.get("qlearn"), str):
            found.add(mapping["qlearn"])
    return sorted({os.path.realpath(f) for f in found} - {own})


def _closed_ancestors(paths: list[str]) -> dict[str, set[str]]:
    """For each folder others cannot enter (no o+x) above a needed path: the children to keep."""
    out: dict[str, set[str]] = {}
    for p in paths:
        parts = Path(p).parts
        for i in range(1, len(parts)):
            anc = str(Path(*parts[:i]))
            try:
                if not os.stat(anc).st_mode & 0o001:
                    out.setdefault(anc, set()).add(str(Path(*parts[:i + 1])))
                    break
            except OSError:
                break
    return out


def _group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system, with reaped children) of the live processes of a process group."""
    total = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(f) > 15 and f[2] == str(pgid):
                total += sum(int(v) for v in f[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def _kill_leftovers(uid: int | None, token: str) -> None:
    """SIGKILL every process of the private ``uid``, or whose environment carries ``token``
    (the worker's ``QLEARN_SANDBOX_TOKEN``: catches a daemon that left the process group in
    plain mode unless it also replaced its environment)."""
    mark = f"QLEARN_SANDBOX_TOKEN={token}".encode()
    for _ in range(10):
        found = False
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                status = (d / "status").read_text()
                line = next((ln for ln in status.splitlines() if ln.startswith("Uid:")), "")
                hit = uid is not None and line.split()[1:2] == [str(uid)]
                hit = hit or mark in (d / "environ").read_bytes()
            except OSError:
                continue
            if hit:
                found = True
                try:
                    os.kill(int(d.name), signal.SIGKILL)
                except OSError:
                    pass
        if not found:
            return
        time.sleep(0.05)


class _Submission:
    """The private directory, limits and deadline shared by the workers of one submission."""

    def __init__(self, path: Path, raw: bytes, opts: Options, mode: str, slot: int):
        self.opts, self.mode = opts, mode
        self.deadline = time.monotonic() + opts.budget
        self.work = Path(tempfile.mkdtemp(prefix="qlearn-grade-"))
        self.uid = None
        closed = _closed_ancestors(_needed_paths())
        if os.geteuid() == 0 and (mode == "unshare" or not closed):
            self.uid = UID_BASE + UID_SLOTS * (os.getpid() % 50_000) + slot
        for sub in ("home", "tmp", "cache"):
            (self.work / sub).mkdir()
        (self.work / path.name).write_bytes(raw)  # the private copy; the original is never used
        if self.uid is not None:
            for p in [self.work, *self.work.iterdir()]:
                os.chown(p, self.uid, self.uid)
        self.cover: list[tuple[str, list[str], str, str]] = []
        if mode == "unshare":
            needed = _needed_paths()
            for h in sorted(set(opts.hide) | set(_other_qlearn_copies())):
                h = os.path.realpath(h)
                if not any(n == h or n.startswith(h + os.sep) for n in needed + [str(self.work)]):
                    self.cover.append((h, [], "0000", "16k"))
            for anc, keep in sorted(closed.items()):
                self.cover.append((anc, sorted(keep), "0755", "1m"))
            keep = [os.path.realpath(self.work)] + needed  # qlearn itself may live under /tmp

            def inside(top: str) -> list[str]:
                under = [k for k in keep if k.startswith(top + os.sep)]
                return sorted({k for k in under if not any(k.startswith(o + os.sep) for o in under)})

            # the top-level folders where data lives (those of the batch's folders, /home, ...):
            # everything in them but what the worker needs is covered, so sibling folders of
            # the submissions (earlier batches, other courses) are out of sight too
            tops = {"/" + Path(os.path.realpath(h)).parts[1] for h in opts.hide if len(Path(h).parts) > 1}
            tops = (tops | set(DATA_TOPS)) - set(SYSTEM_TOPS) - set(closed)
            for top in sorted(t for t in tops if os.path.isdir(t) and not os.path.islink(t)):
                kept = inside(top)
                self.cover.append((top, kept, "0755" if kept else "0000", "1m"))
            for shared in ("/tmp", "/dev/shm"):
                self.cover.append((shared, inside(shared), "1777", "64m" if shared == "/tmp" else "16m"))
        self.starts = 0
        self.cpu_s = 0.0
        self.token = secrets.token_hex(16)

    def env(self) -> dict[str, str]:
        w = str(self.work)
        qroot = str(Path(E.__file__).resolve().parents[2])
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": f"{w}/home", "TMPDIR": f"{w}/tmp",
                "PYTHONPATH": qroot, "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8",
                "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{w}/cache/mpl", "XDG_CACHE_HOME": f"{w}/cache",
                "NUMBA_CACHE_DIR": f"{w}/cache/numba", "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "QLEARN_SANDBOX_TOKEN": self.token,
                # no C compiler runs inside the sandbox: qlearn.kernels uses its numba kernels
                "QLEARN_NO_CC": "1"}

    def config(self, forbid: tuple[str, ...]) -> dict:
        o = self.opts
        return {"mode": self.mode, "workdir": str(self.work), "uid": self.uid, "gid": self.uid,
                "forbid": list(forbid), "cover": self.cover,
                "work_size": f"{o.disk_mb}m" if self.mode == "unshare" else None,
                "limits": {"cpu_s": int(o.budget) + 5, "memory_bytes": int(o.memory_mb) * 2**20,
                           "file_bytes": int(o.output_mb) * 2**20,
                           "processes": MAX_PROCESSES if self.uid is not None else None}}

    def output_capped(self) -> bool:
        cap = self.opts.output_mb * 2**20
        return any(p.stat().st_size >= cap for p in self.work.glob("output-*.log"))

    def close(self) -> None:
        _kill_leftovers(self.uid, self.token)
        shutil.rmtree(self.work, ignore_errors=True)


class _Worker:
    """One sandboxed worker process and the two pipes to it."""

    def __init__(self, sub: _Submission, forbid: tuple[str, ...]):
        self.sub = sub
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        sub.starts += 1
        log = open(sub.work / f"output-{sub.starts}.log", "wb")
        argv = [sys.executable, "-m", "qlearn.grade_worker", str(cmd_r), str(res_w)]
        if sub.mode == "unshare":
            argv = [shutil.which("unshare") or "unshare", *NS_FLAGS, "--", *argv]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         pass_fds=(cmd_r, res_w), env=sub.env(), cwd=sub.work,
                                         start_new_session=True)
        finally:
            log.close()
            os.close(cmd_r)
            os.close(res_w)
        self.tx, self.rx = cmd_w, res_r
        fcntl.fcntl(self.tx, fcntl.F_SETFL, fcntl.fcntl(self.tx, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.alive = True
        try:  # no student code has run yet: a failure here is the grader's (or the machine's)
            self._send(sub.config(forbid), b"", time.monotonic() + START_TIMEOUT_S)
            ready, _ = self._recv(time.monotonic() + START_TIMEOUT_S)
            if not ready.get("ready"):
                raise ProtocolError("no ready message")
        except (TimeoutError, EOFError, OSError, ProtocolError) as e:
            self.kill()
            log = (sub.work / f"output-{sub.starts}.log").read_bytes()[-300:].decode(errors="replace")
            raise WorkerLost(f"the worker did not start ({type(e).__name__}; its output ends: {log!r})",
                             "start") from None

    # frames with deadlines (a student's code can stall, close or flood the pipes)
    def _send(self, header: dict, blob: bytes, deadline: float) -> None:
        head = json.dumps(header).encode()
        data = memoryview(struct.pack("<QQ", len(head), len(blob)) + head + blob)
        while data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            _, w, _ = select.select([], [self.tx], [], left)
            if w:
                data = data[os.write(self.tx, data[:65536]):]

    def _read(self, n: int, deadline: float) -> bytes:
        chunks, left = [], n
        while left:
            t = deadline - time.monotonic()
            if t <= 0:
                raise TimeoutError
            r, _, _ = select.select([self.rx], [], [], t)
            if r:
                b = os.read(self.rx, min(left, 1 << 20))
                if not b:
                    raise EOFError
                chunks.append(b)
                left -= len(b)
        return b"".join(chunks)

    def _recv(self, deadline: float) -> tuple[dict, bytes]:
        n_head, n_blob = struct.unpack("<QQ", self._read(16, deadline))
        if n_head > MAX_REPLY or n_blob > MAX_REPLY:
            raise ProtocolError(f"a reply of {n_head + n_blob} bytes, more than {MAX_REPLY}")
        try:
            header = json.loads(self._read(n_head, deadline))
        except (ValueError, RecursionError):
            raise ProtocolError("bad frame header") from None
        if not isinstance(header, dict):
            raise ProtocolError("bad frame header")
        return header, self._read(n_blob, deadline)

    def request(self, msg: dict, blob: bytes = b"", timeout: float | None = None) -> tuple[dict, bytes]:
        """Send one request and wait for its reply; raise :class:`WorkerLost` on any failure."""
        sub = self.sub
        timeout = sub.opts.timeout if timeout is None else timeout
        now = time.monotonic()
        budget = now + timeout >= sub.deadline
        deadline = min(now + timeout, sub.deadline)
        nonce = secrets.token_hex(16)
        try:
            self._send({**msg, "nonce": nonce}, blob, deadline)
            reply, rblob = self._recv(deadline)
        except TimeoutError:
            self.kill()
            raise WorkerLost(f"the submission's time budget ({sub.opts.budget:g} s) ran out" if budget
                             else f"it did not finish within {timeout:g} s", "budget" if budget else "timeout") from None
        except (EOFError, OSError):
            code = self.kill()
            raise WorkerLost(f"the process running the notebook died ({_exit_text(code)})", "died") from None
        except ProtocolError as e:
            self.kill()
            raise WorkerLost(f"the worker broke the protocol ({e})", "protocol") from None
        if reply.get("nonce") != nonce:
            self.kill()
            raise WorkerLost("the worker sent a reply the grader did not ask for", "protocol")
        return reply, rblob

    def kill(self) -> int | None:
        """Kill the worker's process group (and with it its PID namespace); return its status."""
        if self.alive:
            self.alive = False
            self.sub.cpu_s += _group_cpu_s(self.proc.pid)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            for fd in (self.tx, self.rx):
                try:
                    os.close(fd)
                except OSError:
                    pass
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            return None


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0 or code > 128:
        sig = -code if code < 0 else code - 128
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        extra = {"SIGXCPU": ": CPU-time limit", "SIGKILL": ": killed, e.g. by the memory limit",
                 "SIGSEGV": ": crashed"}.get(name, "")
        return f"{name}{extra}"
    return f"exit status {code}"


# --- grading ------------------------------------------------------------------------------------

class _RemoteFunction:
    """The grader-side stand-in for a student's function: each call runs in the worker."""

    def __init__(self, runner: "_GroupRunner", exercise_id: str):
        self._runner, self._id = runner, exercise_id
        self.forbidden: list[str] = []

    def __call__(self, *args, **kwargs):
        try:
            tree, blob = encode({"args": list(args), "kwargs": kwargs}, strict=True)
        except Unsendable as e:
            raise GraderError(f"checker of {self._id} broke the checker contract: {e}") from None
        worker = self._runner.worker()
        reply, rblob = worker.request({"op": "call", "id": self._id, "args": tree}, blob)
        self.forbidden += [str(n) for n in reply.get("forbidden", [])][:20]
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise E.StudentError(str(err.get("type", "Exception"))[:100], str(err.get("message", ""))[:2000],
                                 str(err.get("where", ""))[:200])
        try:
            return decode(reply.get("result"), rblob)
        except ProtocolError as e:
            worker.kill()
            raise WorkerLost(f"the worker broke the protocol ({e})", "protocol") from None

    def __repr__(self) -> str:
        return f"<your function for {self._id}>"


def _code_cells(nb: dict) -> list[str]:
    """The source of each code cell, IPython syntax (``%magic``, ``!cmd``) turned into Python."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        transform = TransformerManager().transform_cell
    except ImportError:
        transform = None
    cells = []
    for c in nb.get("cells", []) if isinstance(nb.get("cells"), list) else []:
        if not isinstance(c, dict) or c.get("cell_type") != "code":
            continue
        src = c.get("source", "")
        src = "".join(s for s in src if isinstance(s, str)) if isinstance(src, list) else str(src)
        if transform is not None:
            try:
                src = transform(src)
            except Exception:
                pass  # a syntax error is reported when the cell runs
        cells.append(src)
    return cells


class _GroupRunner:
    """Runs the cells of one submission in a worker with one forbid set, then grades exercises."""

    def __init__(self, sub: _Submission, grade: SubmissionGrade, cells: list[str],
                 forbid: tuple[str, ...], report_cells: bool):
        self.sub, self.grade, self.cells, self.forbid = sub, grade, cells, forbid
        self.report_cells = report_cells
        self.done: list[int] = []
        self._worker: _Worker | None = None
        self.restarts = 0

    def _cell_error(self, i: int, text: str) -> None:
        if self.report_cells:
            self.grade.cell_errors.append(f"code cell {i + 1}: {text}")

    def worker(self) -> _Worker:
        """The live worker, starting a fresh one and replaying the cells that ran if needed."""
        while self._worker is None or not self._worker.alive:
            if time.monotonic() >= self.sub.deadline:
                raise WorkerLost(f"the submission's time budget ({self.sub.opts.budget:g} s) ran out", "budget")
            if self.restarts > MAX_RESTARTS:
                raise WorkerLost(f"the notebook's process was restarted {MAX_RESTARTS} times; giving up",
                                 "restarts")
            self.restarts += 1
            self._worker = _Worker(self.sub, self.forbid)
            for i in list(self.done):
                try:
                    self._worker.request({"op": "cell", "index": i, "source": self.cells[i]})
                except WorkerLost as e:
                    if e.budget:
                        raise
                    self.done.remove(i)
                    self._cell_error(i, f"skipped after it failed on a replay: {e.reason}")
                    break
        return self._worker

    def run_cells(self) -> None:
        for i, src in enumerate(self.cells):
            try:
                reply, _ = self.worker().request({"op": "cell", "index": i, "source": src})
            except WorkerLost as e:
                self._cell_error(i, f"stopped: {e.reason}; the grader restarted the notebook's process "
                                    "and skipped this cell")
                if self.report_cells or e.budget:
                    self.grade.flag(e.status, e.reason)
                if e.budget:
                    return
                continue
            self.done.append(i)
            if not reply.get("ok"):
                err = reply.get("error") or {}
                self._cell_error(i, f"{err.get('type')}: {str(err.get('message'))[:300]}")

    def grade_exercise(self, ex: E.Exercise) -> E.CheckResult:
        try:
            reply, blob = self.worker().request({"op": "describe", "id": ex.id})
            if not reply.get("captured"):
                return E.CheckResult(ex.id, False, f"[not yet] {ex.id}: never checked (no "
                                     f"check(\"{ex.id}\", ...) call ran in the notebook)")
            if reply.get("callable"):
                answer: Any = _RemoteFunction(self, ex.id)
            else:
                try:
                    answer = decode(reply.get("value"), blob)
                except ProtocolError as e:
                    raise WorkerLost(f"the worker broke the protocol ({e})", "protocol") from None
            result = E.evaluate(ex, answer)
            forbidden = getattr(answer, "forbidden", [])
            if forbidden:
                result = E.CheckResult(ex.id, False, E.forbidden_message(ex.id, forbidden))
            return result
        except WorkerLost as e:
            if self._worker is not None:
                self._worker.kill()
            if e.kind in ("budget", "restarts"):
                self.grade.flag(e.status, e.reason)
                return E.CheckResult(ex.id, False, f"[not yet] {ex.id}: not graded: {e.reason}")
            return E.CheckResult(ex.id, False, f"[not yet] {ex.id}: your code was stopped: {e.reason}")
        except GraderError as e:
            self.grade.flag("grader-error", str(e))
            return E.CheckResult(ex.id, False, f"[grader error] {ex.id}: {e}")

    def close(self) -> None:
        if self._worker is not None:
            self._worker.kill()


def _student_id(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.relative_to(root).with_suffix(""))
        except ValueError:
            pass
    return path.stem


def _group_key(ex: E.Exercise) -> tuple[str, ...]:
    return tuple(sorted(n for n in ex.forbid if not n.startswith("qlearn.exercises.")))


def grade_submission(path: str | os.PathLike, opts: Options | None = None, slot: int = 0,
                     root: Path | None = None) -> SubmissionGrade:
    """Grade one notebook; never raises for anything the notebook does (see the module docstring)."""
    opts = opts or Options()
    path = Path(path)
    t0 = time.monotonic()
    grade = SubmissionGrade(str(path), _oneline(_student_id(path, root)), None)
    mode = sandbox_mode(opts.sandbox)
    grade.sandbox = mode
    try:
        raw = path.read_bytes()
        nb = json.loads(raw)
        if not isinstance(nb, dict):
            raise ValueError("the top level is not a JSON object")
    except (OSError, ValueError, RecursionError) as e:
        grade.flag("invalid-notebook", f"cannot read the notebook: {type(e).__name__}: {str(e)[:200]}")
        nb, raw = None, b""
    meta = nb.get("metadata") if nb else None
    meta_chapter = ((meta or {}).get("qlearn") or {}).get("chapter") if isinstance(meta, dict) else None
    meta_chapter = meta_chapter if isinstance(meta_chapter, str) else None
    grade.chapter = opts.chapter or meta_chapter
    if opts.chapter and meta_chapter and meta_chapter != opts.chapter:
        grade.flag("chapter-mismatch", f"the notebook says chapter {meta_chapter!r}, graded as {opts.chapter}")
    elif opts.chapter and nb is not None and not meta_chapter:
        grade.flag("no-chapter-metadata")
    expected = E.exercises_for(grade.chapter) if grade.chapter else []
    if not grade.chapter:
        grade.flag("no-chapter", "no metadata.qlearn.chapter in the notebook; pass --chapter chNN")
    elif not expected:
        grade.flag("unknown-chapter", f"chapter {grade.chapter!r} has no registered exercises")
    grade.total = sum(ex.points for ex in expected)
    results: dict[str, E.CheckResult] = {}
    if nb is not None and expected:
        cells = _code_cells(nb)
        sub = None
        try:
            sub = _Submission(path, raw, opts, mode, slot)
            groups: dict[tuple[str, ...], list[E.Exercise]] = {}
            for ex in expected:
                groups.setdefault(_group_key(ex), []).append(ex)
            for gi, (forbid, exs) in enumerate(groups.items()):
                for name in forbid:
                    E.resolve_qualname(name)  # a typo in a forbid list is the course's error
                runner = _GroupRunner(sub, grade, cells, forbid, report_cells=gi == 0)
                try:
                    runner.run_cells()
                    for ex in exs:
                        results[ex.id] = runner.grade_exercise(ex)
                finally:
                    runner.close()
            if sub.output_capped():
                grade.flag("output-capped", f"output past {opts.output_mb} MB was dropped")
        except WorkerLost as e:
            grade.flag(e.status, e.reason)
        except Exception as e:  # the grader's own failure must not cost the batch
            grade.flag("grader-error", f"{type(e).__name__}: {e}")
        finally:
            if sub is not None:
                sub.close()
                grade.cpu_s = round(sub.cpu_s, 2)
    for ex in expected:
        r = results.get(ex.id) or E.CheckResult(ex.id, False, f"[not yet] {ex.id}: not graded ({grade.error})")
        pts = ex.points if r.passed else 0
        grade.results[ex.id] = {"passed": r.passed, "message": r.message, "points": pts, "max": ex.points}
        grade.score += pts
    grade.runtime_s = round(time.monotonic() - t0, 2)
    return grade


def grade_notebook(path: str | os.PathLike, timeout: float = DEFAULT_CELL_TIMEOUT_S, **options) -> SubmissionGrade:
    """Grade one notebook (``options``: the fields of :class:`Options`)."""
    return grade_submission(path, Options(timeout=timeout, **options))


def _collect(paths: list[str]) -> list[tuple[Path, Path | None]]:
    files: list[tuple[Path, Path | None]] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [(q, p) for q in sorted(p.rglob("*.ipynb")) if ".ipynb_checkpoints" not in q.parts]
        elif p.suffix == ".ipynb" and p.exists():
            files.append((p, None))
        else:
            raise ValueError(f"expected a .ipynb file or a folder, got {p}")
    if not files:
        raise ValueError(f"no notebooks found under {paths}")
    return files


def grade_paths(paths: list[str], timeout: float = DEFAULT_CELL_TIMEOUT_S, jobs: int = 1,
                opts: Options | None = None) -> list[SubmissionGrade]:
    """Grade every notebook named, or found under a named folder (sorted), ``jobs`` at a time."""
    if not (isinstance(jobs, int) and 1 <= jobs <= UID_SLOTS):
        raise ValueError(f"jobs should be an int from 1 to {UID_SLOTS}, got {jobs!r}")
    opts = opts or Options(timeout=timeout)
    files = _collect(paths)
    hide = {str(p.resolve()) for p in map(Path, paths) if p.is_dir()}
    hide |= {str(f.resolve().parent) for f, _ in files}
    opts = Options(**{**asdict(opts), "hide": tuple(sorted(hide | set(opts.hide)))})
    sandbox_mode(opts.sandbox)
    slots: queue.Queue[int] = queue.Queue()
    for s in range(jobs):
        slots.put(s)

    def one(item: tuple[Path, Path | None]) -> SubmissionGrade:
        slot = slots.get()
        try:
            return grade_submission(item[0], opts, slot, item[1])
        finally:
            slots.put(slot)

    if jobs == 1:
        return [one(f) for f in files]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, files))


# --- reports -------------------------------------------------------------------------------------

def _cell(value: Any) -> Any:
    """A CSV field a spreadsheet shows as text: one that starts like a formula gets a quote."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def write_csv(grades: list[SubmissionGrade], path: str | os.PathLike) -> None:
    """One row per submission: student, file, chapter, points per exercise, total, max, status,
    error, runtime (exercise columns: the union over the batch; empty where not applicable)."""
    ids = sorted({k for g in grades for k in g.results})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "file", "chapter", *ids, "total", "max", "status", "error", "runtime_s", "cpu_s",
                    "sandbox"])
        for g in grades:
            w.writerow([_cell(v) for v in [g.student, g.path, g.chapter or "",
                                           *[g.results[k]["points"] if k in g.results else "" for k in ids],
                                           g.score, g.total, g.status_text, _oneline(g.error or ""),
                                           g.runtime_s, g.cpu_s, g.sandbox]])


def _feedback_text(g: SubmissionGrade) -> str:
    lines = [f"# Feedback for {g.student}", "",
             f"Chapter {g.chapter or '?'}: **{g.score} / {g.total}** points. Status: `{g.status_text}`."]
    if g.error:
        lines += ["", f"Note: {g.error}"]
    for ex_id, r in g.results.items():
        fence = "`" * max(3, 1 + max((len(m) for m in re.findall("`+", r["message"])), default=0))
        lines += ["", f"## {ex_id}: {r['points']} / {r['max']}", "", fence + "text", r["message"], fence]
    if g.cell_errors:
        lines += ["", "## Cells that raised or were stopped", ""]
        lines += [f"- {e}" for e in g.cell_errors[:MAX_LISTED_CELL_ERRORS]]
        if len(g.cell_errors) > MAX_LISTED_CELL_ERRORS:
            lines.append(f"- ... and {len(g.cell_errors) - MAX_LISTED_CELL_ERRORS} more")
    return "\n".join(lines) + "\n"


def write_feedback(grades: list[SubmissionGrade], folder: str | os.PathLike) -> list[Path]:
    """One Markdown file per student (``<student>.md``, ``/`` in the id becomes ``__``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for g in grades:
        p = folder / (g.student.replace(os.sep, "__") + ".md")
        p.write_text(_feedback_text(g))
        out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qlearn.grade",
                                 description="Grade exercise notebooks in a sandbox (see the module docstring).")
    ap.add_argument("paths", nargs="+", help="notebooks or folders of notebooks")
    ap.add_argument("--csv", help="write the gradebook (one row per submission) to this file")
    ap.add_argument("--feedback", help="write one Markdown feedback file per student into this folder")
    ap.add_argument("--json", help="write the full report to this file")
    ap.add_argument("--chapter", help="grade every notebook as this chapter (e.g. ch03); a mismatch is flagged")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="submissions graded in parallel (default 1)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_CELL_TIMEOUT_S,
                    help=f"seconds per cell or per call of a student function (default {DEFAULT_CELL_TIMEOUT_S})")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                    help=f"seconds per submission, everything included (default {DEFAULT_BUDGET_S})")
    ap.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB, help=f"address-space limit of a worker (default {DEFAULT_MEMORY_MB})")
    ap.add_argument("--output-mb", type=int, default=DEFAULT_OUTPUT_MB, help=f"limit on output and on any file written (default {DEFAULT_OUTPUT_MB})")
    ap.add_argument("--disk-mb", type=int, default=DEFAULT_DISK_MB,
                    help=f"unshare sandbox: size of the worker's private directory (default {DEFAULT_DISK_MB})")
    ap.add_argument("--sandbox", default="auto", choices=["auto", "unshare", "plain"],
                    help="auto: unshare when it works here (root + util-linux), else plain")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every exercise's feedback")
    ap.add_argument("--require-full", action="store_true", help="exit 1 unless every notebook has full marks")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        if args.jobs < 1 or args.timeout <= 0 or args.budget <= 0:
            raise ValueError("--jobs, --timeout and --budget must be positive")
        opts = Options(timeout=args.timeout, budget=args.budget, memory_mb=args.memory_mb,
                       output_mb=args.output_mb, disk_mb=args.disk_mb, sandbox=args.sandbox, chapter=args.chapter,
                       hide=tuple(str(Path(p).resolve().parent) for p in (args.csv, args.json) if p)
                       + ((str(Path(args.feedback).resolve()),) if args.feedback else ()))
        mode = sandbox_mode(args.sandbox)
        grades = grade_paths(args.paths, jobs=args.jobs, opts=opts)
    except ValueError as e:
        print(f"qlearn.grade: error: {e}", file=sys.stderr)
        return 2
    for g in grades:
        print(f"{g.score:3d}/{g.total:<3d} {g.status_text:<18} {g.student}" + (f"  [{g.error}]" if g.error else ""))
        if args.verbose:
            for r in g.results.values():
                print("      " + r["message"].replace("\n", "\n      "))
    if args.csv:
        write_csv(grades, args.csv)
    if args.feedback:
        write_feedback(grades, args.feedback)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(g) for g in grades], indent=1))
    full = sum(g.full_marks for g in grades)
    print(f"qlearn.grade: {len(grades)} submissions, {full} with full marks, "
          f"{time.monotonic() - t0:.1f} s, sandbox {mode}, jobs {args.jobs}")
    return 1 if args.require_full and full < len(grades) else 0


if __name__ == "__main__":
    sys.exit(main())
