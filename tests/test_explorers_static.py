"""Precomputed interactive figures (qlearn.explorers.static) and the uniform explorer's."""

import json
import re

import numpy as np
import pytest

go = pytest.importorskip("plotly.graph_objects")

from qlearn.explorers import static  # noqa: E402
from qlearn.explorers import uniform as ux  # noqa: E402


def _spec(html: str) -> dict:
    return json.loads(re.search(r"var spec = (\{.*?\});\n", html, re.S).group(1))


def _fig_and_frames():
    fig = go.Figure([go.Scatter(x=[0, 1], y=[0, 1])])
    controls = [static.Control("a", "a", [1, 2], 1),
                static.Control("b", "b", ["x", "y"], "y")]
    frames = {f"{a}|{b}": {"traces": [{"x": [0, a], "y": [0, ord(b)]}], "title": f"{a}{b}"}
              for a in (1, 2) for b in ("x", "y")}
    return fig, controls, frames


def test_html_holds_every_setting_and_one_copy_of_repeated_traces():
    fig, controls, frames = _fig_and_frames()
    frames["2|y"]["traces"] = frames["1|x"]["traces"]  # a repeated trace is stored once
    html = static.html(fig, controls, frames, "t1")
    spec = _spec(html)
    assert set(spec["frames"]) == set(frames)
    assert len(spec["pool"]) == 3
    assert spec["frames"]["2|y"]["t"] == spec["frames"]["1|x"]["t"]
    assert '<input type="range" name="a"' in html and '<select name="b">' in html
    assert 'id="t1-controls"' in html and 'id="t1"' in html


def test_bad_input_is_a_value_error():
    fig, controls, frames = _fig_and_frames()
    with pytest.raises(ValueError, match="lack 1 settings"):
        static.html(fig, controls, {k: v for k, v in frames.items() if k != "2|x"}, "t")
    with pytest.raises(ValueError, match="expected 1 traces"):
        static.html(fig, controls, {**frames, "1|x": {"traces": []}}, "t")
    with pytest.raises(ValueError, match="HTML id"):
        static.html(fig, controls, frames, "not an id")
    with pytest.raises(ValueError, match="default"):
        static.Control("a", "a", [1, 2], 3)
    with pytest.raises(ValueError, match="identifier"):
        static.Control("a b", "a", [1], 1)
    heat = go.Figure([go.Heatmap(z=[[1, 2]])])
    with pytest.raises(ValueError, match="basic bundle"):
        static.html(heat, controls, {k: {"traces": [{}]} for k in frames}, "t")


def test_the_page_loads_plotly_basic_once_per_figure():
    fig, controls, frames = _fig_and_frames()
    html = static.html(fig, controls, frames, "t2")
    assert html.count("<script charset=\"utf-8\" src=") == 1
    assert static.plotly_js_url() in html and "plotly-basic.min.js" in html
    assert "cdn.plot.ly" not in html


def test_uniform_interactive_frames_agree_with_the_static_figure():
    W = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    spec = _spec(ux.interactive(W, div_id="u").data)
    assert len(spec["frames"]) == 7 * 3 * len(ux.CLIPS)
    for bits, gran, clip in [(4, "per_channel", 1.0), (2, "per_tensor", 0.4)]:
        info = ux.grid_summary(W, bits, gran, clip=clip)
        f = spec["frames"][f"{bits}|{gran}|{clip}"]
        assert f"SQNR {info['sqnr_db']:.2f} dB" in f["title"]
        levels = spec["pool"][f["t"][1]]["x"][::3]
        np.testing.assert_allclose(levels, info["levels"], atol=1e-5)
        counts = spec["pool"][f["t"][0]]["y"]
        assert sum(counts) == info["block"].size


def test_nf4_interactive_frames_agree_with_the_summary():
    from qlearn.explorers import nf4 as nx

    W = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    spec = _spec(nx.interactive(W, div_id="n").data)
    sizes = [bs for bs in nx.nf4.BLOCKSIZES if bs <= W.size]
    assert len(spec["frames"]) == len(sizes) * 3 * 2
    info = nx.summary(W, 128, "fp4", True)
    f = spec["frames"]["128|fp4|yes"]
    assert f"rel. MSE {info['rel_mse']:.4f}" in f["title"]
    star = spec["pool"][f["t"][5]]
    assert star["x"] == [info["bits"]]
    np.testing.assert_allclose(spec["pool"][f["t"][1]]["x"][::3], info["levels"], atol=1e-5)
