"""Every ipywidgets explorer builds and redraws under ipywidgets 8 (installed) and 7.x (Colab's).

Colab ships ipywidgets 7.7.1, and qlearn's lower bound (>= 7.6) lets a `pip install qlearn` keep
it, so each explorer must work on both. The 7.x run happens in a subprocess whose path puts a
copy of ipywidgets 7.7.1 (installed once with pip into .cache/ipywidgets7) first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IPYW7 = ROOT / ".cache" / "ipywidgets7"
# what Colab ships next to ipywidgets 7.7.1
IPYW7_PACKAGES = ["ipywidgets==7.7.1", "widgetsnbextension==3.6.10", "jupyterlab_widgets==1.1.11",
                  "ipython_genutils==0.2.0"]

# Builds each explorer on small inputs, redraws it once with a changed control, and prints
# "ok <name>" per explorer; any exception fails the run.
SCRIPT = textwrap.dedent('''
    import matplotlib
    matplotlib.use("Agg")
    import numpy as np, torch, ipywidgets
    from qlearn.explorers import (awq, calibration, formats, gptq, kquants, nf4,
                                  uniform)
    rng = np.random.default_rng(0)
    W = rng.standard_normal((16, 256)).astype(np.float32)
    X = rng.standard_normal((64, 256)).astype(np.float32)
    cases = {
        "formats": lambda: formats.explorer("0.1"),
        "uniform": lambda: uniform.explore(W, group_size=64),
        "calibration": lambda: calibration.explore(X[:, 0] * 3),
        "gptq": lambda: gptq.explore(W, X),
        "awq": lambda: awq.explore(torch.from_numpy(W), torch.from_numpy(X),
                                   group_size=64),
        "nf4": lambda: nf4.explore(W),
        "kquants": lambda: kquants.block_explorer(W[:2]),
    }
    for name, make in cases.items():
        w = make()
        assert isinstance(w, ipywidgets.Widget), (name, type(w))
        controls = [c for c in w.children
                    if isinstance(c, ipywidgets.ValueWidget)
                    and not isinstance(c, ipywidgets.Output)]
        assert controls, name
        w.update()  # draws the default setting
        c = controls[0]
        options = getattr(c, "options", None)
        if options:
            values = [o[1] if isinstance(o, tuple) else o for o in options]
            c.value = values[-1]
        elif isinstance(c.value, bool):
            c.value = not c.value
        elif isinstance(c.value, (int, float)):
            c.value = getattr(c, "max", c.value)
        w.update()
        print("ok", name, ipywidgets.__version__)
''')


def _run(extra_path: Path | None = None) -> str:
    env = dict(os.environ, MPLBACKEND="Agg")
    paths = [str(ROOT)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if extra_path:  # the 7.x copy must come before the venv's 8.x
        code = f"import sys; sys.path.insert(0, {str(extra_path)!r})\n" + SCRIPT
    else:
        code = SCRIPT
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout


def test_explorers_under_installed_ipywidgets():
    import ipywidgets

    out = _run()
    assert out.count("ok ") == 7
    assert f" {ipywidgets.__version__}" in out


@pytest.mark.slow
def test_explorers_under_colab_ipywidgets_7():
    if not (IPYW7 / "ipywidgets" / "__init__.py").exists():
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                               "--target", str(IPYW7), *IPYW7_PACKAGES],
                              capture_output=True, text=True, timeout=600,
                              env={k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"})
        if proc.returncode != 0:
            pytest.skip("could not install ipywidgets 7.7.1 from PyPI: "
                        + proc.stderr.strip().splitlines()[-1])
    out = _run(IPYW7)
    assert out.count("ok ") == 7 and " 7.7.1" in out, out
