"""The newcomer's path: how torch is chosen, Colab compatibility, and the documented commands.

The install tests run ``scripts/install.sh`` as a fresh machine would (no pip configuration, no
local wheels, an interpreter without torch) in dry-run mode: pip resolves torch from an index and
reports what it would download, and downloads nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VPY = Path(sys.executable)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# What Colab ships (the versions a `pip install qlearn` there must leave alone).
COLAB = {"numpy": "1.26.4", "matplotlib": "3.8.4", "ipywidgets": "7.7.1"}


def _fresh_env(tmp_path: Path) -> dict:
    """Environment of a machine with no pip configuration and no local wheels."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_RETRIES="0", PIP_TIMEOUT="10",
               PIP_DISABLE_PIP_VERSION_CHECK="1", HOME=str(tmp_path / "home"))
    return env


def _base_python() -> str:
    """An interpreter without torch, to play the fresh machine (the venv's base interpreter)."""
    base = getattr(sys, "_base_executable", None) or shutil.which("python3")
    probe = subprocess.run([base, "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip(f"{base} has torch installed; cannot play a machine without torch")
    return base


def _dry_run(tmp_path: Path, **env_extra) -> subprocess.CompletedProcess:
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "install.sh", clone / "scripts" / "install.sh")
    env = _fresh_env(tmp_path)
    env.update(PYTHON=_base_python(), QLEARN_INSTALL_DRY_RUN="1", **env_extra)
    return subprocess.run(["bash", "scripts/install.sh"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=300)


def _fake_torch_index(root: Path) -> Path:
    """A PEP 503 index holding one (empty) torch 2.13.0+cpu wheel."""
    name = "torch-2.13.0+cpu-py3-none-any.whl"
    pkg = root / "simple" / "torch"
    pkg.mkdir(parents=True)
    dist = "torch-2.13.0+cpu.dist-info"
    with zipfile.ZipFile(pkg / name, "w") as z:
        z.writestr("torch/__init__.py", "")
        z.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                    "Tag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    (pkg / "index.html").write_text(f'<html><body><a href="{name}">{name}</a></body></html>')
    return root / "simple"


def _report(stdout: str) -> dict:
    start = stdout.index("{")
    return json.loads(stdout[start:])


def test_fresh_machine_takes_torch_from_the_cpu_index(tmp_path):
    proc = _dry_run(tmp_path)
    out = proc.stdout + proc.stderr
    assert f"would resolve torch==2.13.0 from {CPU_INDEX}" in out, out
    if proc.returncode == 0:  # the CPU index was reachable: the wheel pip chose comes from it
        item = _report(proc.stdout)["install"][0]
        assert item["download_info"]["url"].startswith("https://download.pytorch.org/"), item
        assert item["metadata"]["version"].endswith("+cpu")
    else:  # offline: pip looked nowhere else (no PyPI, whose Linux torch pulls CUDA packages)
        assert "pypi.org" not in out and "No matching distribution found for torch" in out, out


def test_torch_index_can_be_overridden(tmp_path):
    index = _fake_torch_index(tmp_path / "index")
    proc = _dry_run(tmp_path, QLEARN_TORCH_INDEX=index.as_uri())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"from {index.as_uri()}" in proc.stdout
    item = _report(proc.stdout)["install"][0]
    assert item["metadata"]["name"] == "torch" and item["metadata"]["version"] == "2.13.0+cpu"
    assert item["download_info"]["url"].startswith(index.as_uri())


@pytest.mark.slow
def test_pip_install_on_colab_changes_none_of_its_packages(tmp_path):
    """Resolve `pip install qlearn` with Colab's numpy, matplotlib, ipywidgets and the local torch
    pinned: a solution exists, so pip has no reason to change any of them."""
    import importlib.metadata as md

    pins = dict(COLAB, torch=md.version("torch").split("+")[0])
    cons = tmp_path / "colab.txt"
    cons.write_text("".join(f"{k}=={v}\n" for k, v in pins.items()))
    env = {k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"}
    proc = subprocess.run([str(VPY), "-m", "pip", "install", "--dry-run", "--ignore-installed",
                           "--quiet", "--report", str(tmp_path / "r.json"), "-c", str(cons),
                           str(ROOT)], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0 and ("Could not fetch" in proc.stderr or "connection" in proc.stderr.lower()):
        pytest.skip("PyPI is not reachable: " + proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"]
              for i in json.loads((tmp_path / "r.json").read_text())["install"]}
    for name, version in pins.items():
        assert chosen[name].split("+")[0] == version, (name, chosen[name], version)


def test_dependency_bounds_admit_colab_versions():
    """Offline half of the check above: every lower bound in pyproject admits Colab's version."""
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = {Requirement(d).name.lower(): Requirement(d) for d in deps}
    for name, version in COLAB.items():
        assert reqs[name].specifier.contains(version), (name, str(reqs[name].specifier), version)


def test_environment_yml_is_the_pip_install():
    """conda provides Python and pip only; its pip lines are the README's install."""
    import yaml

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert sorted(d.split(">")[0].split("=")[0] for d in conda) == ["pip", "python"]
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert f"--extra-index-url {CPU_INDEX}" in pip_lines and '-e ".[dev]"' in pip_lines


def test_documented_commands_exist():
    """The commands README.md and book/how_to_use.md tell a newcomer to run."""
    readme = (ROOT / "README.md").read_text()
    guide = (ROOT / "book" / "how_to_use.md").read_text()
    for cmd in ("bash scripts/build_book.sh", "bash scripts/test.sh"):
        assert cmd in readme
    for script in ("scripts/install.sh", "scripts/build_book.sh", "scripts/test.sh"):
        assert (ROOT / script).is_file()
    assert ".venv/bin/jupyter lab" in readme + guide
    venv_bin = VPY.parent
    jupyter = venv_bin / "jupyter"
    if jupyter.exists():  # the lab extra is part of dev
        proc = subprocess.run([str(jupyter), "lab", "--version"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_grader_runs_from_outside_the_clone(tmp_path):
    """`python -m qlearn.grade --help` works from any folder (the instructor's documented call)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(VPY), "-m", "qlearn.grade", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


def test_readme_links_follow_the_repository_url():
    """The Colab badge and the book link are derived from _config.yml's repository url."""
    import re

    import yaml

    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    owner, repo = re.match(r"https://github.com/([^/]+)/([^/]+?)/?$", url).groups()
    readme = (ROOT / "README.md").read_text()
    assert f"https://colab.research.google.com/github/{owner}/{repo}/blob/main/notebooks/" in readme
    assert f"https://{owner}.github.io/{repo}/" in readme
