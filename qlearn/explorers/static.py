"""Interactive figures that work in the static book: every setting is precomputed in Python,
and a few lines of JavaScript swap the precomputed traces when a control moves (Plotly draws
them). No kernel is needed, so an online reader can move the sliders too.

Use it where the parameter space is small: ``html(fig, controls, frames)`` takes a Plotly
figure (its traces show the default setting), the controls (name, label, values, default) and
one entry per combination of control values, keyed ``"v1|v2|..."`` (values as ``str``), each a
dict with ``traces`` (a list of ``{"x": [...], "y": [...]}`` replacing the figure's traces in
order) and an optional ``title``.
"""

from __future__ import annotations

import itertools
import json
import re

__all__ = ["Control", "html", "plotly_js_url"]

# plotly.js's "basic" bundle (scatter, bar, pie: all these figures use) is a quarter of the full
# one (~1.2 MB instead of ~4.8 MB); pinned to the plotly.js version the Python package targets.
BASIC_BUNDLE = "https://cdn.jsdelivr.net/npm/plotly.js-basic-dist-min@{}/plotly-basic.min.js"


def plotly_js_url() -> str:
    """Where the page loads plotly.js from (the basic bundle of the matching version)."""
    from plotly.offline import get_plotlyjs_version

    return BASIC_BUNDLE.format(get_plotlyjs_version())


class Control:
    """A slider over ``values`` (numbers) or a drop-down (strings), starting at ``default``."""

    def __init__(self, name: str, label: str, values, default):
        values = list(values)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"control name must be an identifier, got {name!r}")
        if default not in values:
            raise ValueError(f"default {default!r} of {name!r} is not one of {values}")
        self.name, self.label, self.values, self.default = name, label, values, default

    @property
    def is_slider(self) -> bool:
        return all(isinstance(v, (int, float)) for v in self.values)


def _key(values) -> str:
    return "|".join(str(v) for v in values)


def html(fig, controls: list[Control], frames: dict[str, dict], div_id: str) -> str:
    """HTML (a ``<div>`` with the figure, its controls and the script) for
    ``IPython.display.HTML``. ``frames`` must hold every combination of control values."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", div_id):
        raise ValueError(f"div_id must be an HTML id, got {div_id!r}")
    missing = [_key(c) for c in itertools.product(*(ctl.values for ctl in controls))
               if _key(c) not in frames]
    if missing:
        raise ValueError(f"frames lack {len(missing)} settings, e.g. {missing[0]!r}")
    n_traces = len(fig.data)
    for k, f in frames.items():
        if len(f.get("traces", [])) != n_traces:
            raise ValueError(f"frame {k!r}: expected {n_traces} traces, "
                             f"got {len(f.get('traces', []))}")
    for trace in fig.data:
        if trace.type not in ("scatter", "bar", "pie"):
            raise ValueError(f"trace type {trace.type!r} is not in plotly.js's basic bundle")
    plot = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displayModeBar": False, "responsive": True})
    plot = f'<script charset="utf-8" src="{plotly_js_url()}"></script>{plot}'
    inputs = []
    for ctl in controls:
        i = ctl.values.index(ctl.default)
        if ctl.is_slider:
            widget = (f'<input type="range" name="{ctl.name}" min="0" '
                      f'max="{len(ctl.values) - 1}" step="1" value="{i}">')
        else:
            opts = "".join(f'<option value="{j}"{" selected" if j == i else ""}>{v}</option>'
                           for j, v in enumerate(ctl.values))
            widget = f'<select name="{ctl.name}">{opts}</select>'
        inputs.append(f'<label style="margin-right:1.2em">{ctl.label} {widget} '
                      f'<output name="{ctl.name}-value">{ctl.default}</output></label>')
    # identical traces (a histogram that only one control changes) are stored once
    pool, index, packed = [], {}, {}
    for k, f in frames.items():
        ids = []
        for t in f["traces"]:
            text = json.dumps(t, separators=(",", ":"))
            if text not in index:
                index[text] = len(pool)
                pool.append(t)
            ids.append(index[text])
        packed[k] = {"t": ids, "title": f.get("title", "")}
    spec = {"values": {c.name: [str(v) for v in c.values] for c in controls},
            "order": [c.name for c in controls], "pool": pool, "frames": packed}
    script = f"""<script>
(function () {{
  var spec = {json.dumps(spec, separators=(",", ":"))};
  var box = document.getElementById("{div_id}-controls");
  function update() {{
    var key = spec.order.map(function (n) {{
      var v = spec.values[n][box.querySelector('[name="' + n + '"]').value];
      box.querySelector('[name="' + n + '-value"]').textContent = v;
      return v;
    }}).join("|");
    var f = spec.frames[key];
    var traces = f.t.map(function (i) {{ return spec.pool[i]; }});
    Plotly.restyle("{div_id}", {{
      x: traces.map(function (t) {{ return t.x; }}),
      y: traces.map(function (t) {{ return t.y; }})}},
      traces.map(function (_, i) {{ return i; }}));
    if (f.title) Plotly.relayout("{div_id}", {{"title.text": f.title}});
  }}
  box.addEventListener("input", update);
}})();
</script>"""
    return (f'<div class="qlearn-interactive">'
            f'<div id="{div_id}-controls" style="font-size:0.9em">{"".join(inputs)}</div>'
            f"{plot}{script}</div>")
