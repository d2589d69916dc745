"""The browser check (scripts/browser_check.py) on a tiny fake site: a good page passes, and a
page with a wide code cell, a dead widget, a broken image or a broken link fails (a test of
the test). Needs chromium + chromium-driver + selenium; skipped with a reason without them."""

import struct
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import browser_check as bc  # noqa: E402

HEAD = ("<!doctype html><html><head><meta charset='utf-8'><title>t</title>"
        "<link rel='icon' href='data:,'></head><body>")
STYLE = "<style>main{width:600px} pre{overflow:auto;margin:0}</style>"
WIDGET = ('<div class="cell"><div class="cell_output"><script '
          'type="application/vnd.jupyter.widget-view+json">{"model_id": "abc", '
          '"version_major": 2, "version_minor": 0}</script></div></div>')


def _png(width: int, height: int) -> bytes:
    """A grey RGB PNG of the given size (no imaging library needed)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _page(body: str) -> str:
    return HEAD + STYLE + "<main>" + body + "</main></body></html>"


PAGES = {
    "good.html": _page('<h1 id="top">Fine</h1><div class="cell"><pre>x = 1</pre></div>'
                       '<img src="fig.png" alt="a figure" width="200">'
                       '<a href="wide.html">next</a> <a href="good.html#top">top</a>'),
    "wide.html": _page("<div class='cell'><pre>" + "y = 1 + " * 40 + "1</pre></div>"),
    "widget.html": _page("<p>sliders:</p>" + WIDGET + "<div class='cell'><pre>z</pre></div>"),
    "widget_with_figure.html": _page(
        WIDGET + '<div class="cell"><img src="fig.png" alt="static" width="200"></div>'),
    "image.html": _page('<img src="missing.png" alt="gone">'),
    "link.html": _page('<a href="nowhere.html">dead</a> <a href="good.html#nope">x</a>'),
    "shrunk.html": _page('<img src="big.png" alt="big" style="width:300px">'),
    "notebooks/01_a.html": _page('<h1><span class="section-number">1. </span>A</h1>'),
    "notebooks/02_b.html": _page('<h1><span class="section-number">3. </span>B</h1>'),
    "notebooks/03_c.html": _page("<h1>C</h1>"),
}


def _have_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed"
    for group in (bc.CHROMIUM, bc.CHROMEDRIVER):
        if not any(Path(p).exists() for p in group):
            return f"none of {group}: apt-get install chromium chromium-driver"
    return None


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    reason = _have_browser()
    if reason:
        pytest.skip(reason)
    site = tmp_path_factory.mktemp("site")
    (site / "notebooks").mkdir()
    for name, html in PAGES.items():
        (site / name).write_text(html)
    (site / "fig.png").write_bytes(_png(200, 100))
    (site / "big.png").write_bytes(_png(900, 50))
    shots = tmp_path_factory.mktemp("shots")
    out = {r.page: r for r in bc.check_site(site, tmp_path_factory.mktemp("vendor"), shots)}
    out["_shots"] = sorted(p.name for p in shots.iterdir())
    return out


def test_good_page_passes(reports):
    assert reports["good.html"].problems == []
    assert reports["widget_with_figure.html"].problems == []


def test_wide_code_cell_fails(reports):
    assert any(p.startswith("wider than its column: pre") for p in reports["wide.html"].problems)


def test_dead_widget_fails(reports):
    assert any(p.startswith("widget area without a static figure")
               for p in reports["widget.html"].problems)


def test_broken_image_fails(reports):
    problems = reports["image.html"].problems
    assert any(p == "broken image: missing.png" for p in problems), problems
    assert any(p.startswith("console error") for p in problems), problems


def test_broken_links_fail(reports):
    problems = reports["link.html"].problems
    assert "broken link: nowhere.html" in problems
    assert "broken link: good.html#nope" in problems


def test_shrunk_figure_fails(reports):
    assert any(p.startswith("figure shrunk: big.png: 900 px shown at 300 px")
               for p in reports["shrunk.html"].problems)


def test_chapters_must_be_numbered_in_order(reports):
    assert reports["notebooks/01_a.html"].problems == []
    assert reports["notebooks/02_b.html"].problems == [
        "chapter numbered '3.', expected 2. in file order"]
    assert reports["notebooks/03_c.html"].problems == ["chapter title carries no number"]


def test_a_screenshot_per_page(reports):
    assert reports["_shots"] == sorted(n[:-5].replace("/", "__") + ".png" for n in PAGES)


def test_cdn_urls_map_to_local_copies(tmp_path):
    url = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"
    assert bc.vendor_path(url, tmp_path) == tmp_path / "mathjax/es5/tex-mml-chtml.js"
    assert bc.vendor_path("https://example.org/x.js", tmp_path) is None
    html = f'<script integrity="sha256-x" src="{url}"></script>'
    assert bc.rewrite_cdn(html) == (
        '<script src="/__vendor__/cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js">'
        "</script>")


def test_main_exits_1_on_a_failing_site(tmp_path):
    if _have_browser():
        pytest.skip(_have_browser())
    (tmp_path / "index.html").write_text(PAGES["image.html"])
    assert bc.main([str(tmp_path), "--shots", str(tmp_path / "s"),
                    "--vendor", str(tmp_path / "v")]) == 1
    assert (tmp_path / "s" / "index.png").exists()
