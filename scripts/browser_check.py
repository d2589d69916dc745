"""Open every page of the built book in headless Chromium and fail on what a reader would see.

    python scripts/browser_check.py [SITE] [--shots DIR] [--vendor DIR] [--width PX]

SITE defaults to _build/html. Each page is served from a local HTTP server; the CDN scripts the
pages load (MathJax 3, RequireJS, the widget manager, plotly.js's basic bundle) are served from
the copies that scripts/install.sh puts under VENDOR (default .cache/browser/node_modules,
from npm), and every other host is unreachable (Chromium's host resolver maps them to
nothing), so the check runs offline and sees what an offline reader would. A page fails on:

- a console error (a script that threw, a resource that failed to load);
- a broken image, or a local link to a missing page or a missing #anchor;
- a page wider than the window, or a code cell, output or table wider than its column
  (it scrolls, and hides what it printed);
- a figure shrunk to less than 1/MAX_SHRINK of its size (its labels become unreadable);
- a widget area: the saved page has no kernel, so a widget is dead controls (a widget view
  counts only if no static figure follows it in the same or the next cell);
- math that did not typeset (a formula left as TeX, or a MathJax error box);
- a chapter page (under CHAPTER_DIR) whose title carries no number, or chapter numbers that do
  not run 1, 2, 3, ... in file order.

A screenshot of every page (the top WINDOW_HEIGHT pixels, PNG) goes to --shots (default
_build/screenshots). Exit status 1 if any page fails. Needs `chromium`, `chromium-driver` and
`selenium` (scripts/install.sh installs them).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

ROOT = Path(__file__).resolve().parent.parent
WINDOW_WIDTH = 1280   # a laptop: the book theme shows the sidebar and a ~800 px column
WINDOW_HEIGHT = 900
MAX_SHRINK = 1.5      # a figure drawn at > 1.5x its displayed width has ~6 px labels at 9 pt
OVERFLOW_SLACK = 2    # px of scrollWidth over clientWidth tolerated (sub-pixel rounding)
PAGE_TIMEOUT = 30     # s for a page (and its MathJax) to finish
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")

# CDN url prefixes -> (npm package folder under VENDOR, path inside it). A url under a prefix is
# served from VENDOR/<package>/<rest of the url>, or from the fixed file when one is given.
CDN = (
    ("https://cdn.jsdelivr.net/npm/mathjax@3/", "mathjax", None),
    ("https://cdnjs.cloudflare.com/ajax/libs/require.js/", "requirejs", "require.js"),
    ("https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@",
     "@jupyter-widgets/html-manager", "dist/embed-amd.js"),
    ("https://cdn.jsdelivr.net/npm/plotly.js-basic-dist-min@", "plotly.js-basic-dist-min",
     "plotly-basic.min.js"),
)
VENDOR_PREFIX = "/__vendor__/"
CHAPTER_DIR = "notebooks/"  # the numbered chapters

# What the page reports about itself, run in the browser after load (and after MathJax).
PAGE_PROBE = r"""
const out = {images: [], overflow: [], shrunk: [], widgets: [], math: [], links: [],
             anchors: [], pageWidth: document.documentElement.scrollWidth,
             windowWidth: window.innerWidth};
const label = el => (el.id ? '#' + el.id : '') + ' ' +
    (el.innerText || el.alt || el.src || '').trim().split('\n')[0].slice(0, 70);
for (const img of document.images) {
  if (!img.complete || img.naturalWidth === 0) out.images.push(img.getAttribute('src'));
  else if (img.clientWidth > 0 && img.naturalWidth > arguments[0] * img.clientWidth)
    out.shrunk.push(img.getAttribute('src') + ': ' + img.naturalWidth + ' px shown at ' +
                    img.clientWidth + ' px');
}
const main = document.querySelector('main, article, [role=main]') || document.body;
// inline math overflows its span by design; display math must fit
for (const el of main.querySelectorAll('pre, table, div.output, div.cell_output, div.math')) {
  if (el.clientWidth > 0 && el.scrollWidth > el.clientWidth + arguments[1])
    out.overflow.push(el.tagName.toLowerCase() + '.' + el.className.split(' ')[0] + ' ' +
                      el.scrollWidth + ' > ' + el.clientWidth + ' px: ' + label(el));
}
const cellOf = el => el.closest('.cell, .cell_output, .output') || el.parentElement;
const widgetViews = main.querySelectorAll(
    'script[type="application/vnd.jupyter.widget-view+json"], .jupyter-widgets, .widget-area');
const seen = new Set();
for (const w of widgetViews) {
  const cell = w.closest('.cell') || cellOf(w);
  if (seen.has(cell)) continue;
  seen.add(cell);
  let next = cell.nextElementSibling;
  while (next && !next.matches('.cell')) next = next.nextElementSibling;
  const figure = cell.querySelector('img, svg.main-svg') ||
                 (next && next.querySelector('img, svg.main-svg'));
  if (!figure) out.widgets.push(label(cell));
}
for (const m of main.querySelectorAll('.math')) {
  if (!m.querySelector('mjx-container') && !m.matches('mjx-container'))
    out.math.push('not typeset: ' + m.textContent.trim().slice(0, 60));
}
for (const e of main.querySelectorAll('mjx-merror, [data-mjx-error]'))
  out.math.push('MathJax error: ' + (e.getAttribute('data-mjx-error') || e.textContent));
const num = document.querySelector('h1 .section-number');
out.chapter = num ? num.textContent.trim() : null;
for (const a of document.querySelectorAll('a[href]')) out.links.push(a.href);
for (const el of document.querySelectorAll('[id]')) out.anchors.push(el.id);
return out;
"""


@dataclass
class PageReport:
    page: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    chapter: str | None = None


def vendor_path(url: str, vendor: Path) -> Path | None:
    """The local copy of a CDN url, or None if ``url`` is not one the check vendors."""
    for prefix, package, fixed in CDN:
        if url.startswith(prefix):
            rest = fixed or url[len(prefix):].split("?")[0]
            return vendor / package / rest
    return None


def rewrite_cdn(html: str) -> str:
    """Point the CDN urls of a page at the local server's /__vendor__/ (same path scheme)."""
    for prefix, _, _ in CDN:
        html = html.replace(prefix, VENDOR_PREFIX + prefix[len("https://"):])
    # a local copy may be another patch release: its bytes differ from the CDN's digest
    return re.sub(r"<script\b[^>]*/__vendor__/[^>]*>",
                  lambda m: re.sub(r'\sintegrity="[^"]*"', "", m.group(0)), html)


class _Handler(http.server.SimpleHTTPRequestHandler):
    vendor: Path = Path()

    def log_message(self, *args):  # quiet
        pass

    def _send(self, body: bytes, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = unquote(urlparse(self.path).path)
        if path.startswith(VENDOR_PREFIX):
            local = vendor_path("https://" + path[len(VENDOR_PREFIX):], self.vendor)
            if local is None or not local.is_file():
                self.send_error(404, f"not vendored: {path}")
                return
            self._send(local.read_bytes(), self.guess_type(str(local)))
            return
        local = Path(self.translate_path(self.path))
        if local.is_dir():
            local = local / "index.html"
        if local.suffix == ".html" and local.is_file():
            self._send(rewrite_cdn(local.read_text(encoding="utf-8")).encode(),
                       "text/html; charset=utf-8")
            return
        super().do_GET()


def serve(site: Path, vendor: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = type("Handler", (_Handler,), {"vendor": vendor})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def _first(paths) -> str:
    for p in paths:
        if Path(p).exists():
            return p
    raise FileNotFoundError(f"none of {paths}: apt-get install chromium chromium-driver")


def start_browser(width: int = WINDOW_WIDTH, height: int = WINDOW_HEIGHT):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _first(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars",
                # offline: every host but the local server resolves to nothing
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(_first(CHROMEDRIVER)), options=opts)


def _wait_loaded(driver) -> None:
    deadline = time.time() + PAGE_TIMEOUT
    while time.time() < deadline:
        done = driver.execute_script(
            "return document.readyState === 'complete' && (!window.MathJax || "
            "!MathJax.startup || !MathJax.startup.promise || window.__mjx_done === true)")
        if done:
            return
        driver.execute_script(
            "if (window.MathJax && MathJax.startup && MathJax.startup.promise && "
            "!window.__mjx_wait) { window.__mjx_wait = true; "
            "MathJax.startup.promise.then(() => { window.__mjx_done = true; }); }")
        time.sleep(0.1)


def _fragment_ok(url: str, base: str, site: Path, anchors_of) -> str | None:
    """A problem with a same-site link, or None."""
    u = urlparse(url)
    if not url.startswith(base) or u.path.startswith(VENDOR_PREFIX):
        return None
    rel = unquote(u.path[len(urlparse(base).path):]) or "index.html"
    target = site / rel
    if target.is_dir():
        target = target / "index.html"
    if not target.exists():
        return f"broken link: {rel}"
    if u.fragment and target.suffix == ".html" and u.fragment not in anchors_of(target):
        return f"broken link: {rel}#{u.fragment}"
    return None


def check_site(site: Path, vendor: Path, shots: Path | None,
               width: int = WINDOW_WIDTH) -> list[PageReport]:
    site = site.resolve()
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                   if not p.relative_to(site).parts[0].startswith(("_", ".")))
    if not pages:
        raise ValueError(f"{site}: no HTML pages; build the book first")
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)

    @functools.lru_cache(maxsize=None)
    def anchors_of(target: Path) -> frozenset:
        return frozenset(re.findall(r'\sid="([^"]+)"', target.read_text(encoding="utf-8")))

    server, base = serve(site, vendor)
    driver = start_browser(width)
    reports = []
    try:
        for page in pages:
            t = time.time()
            rep = PageReport(page)
            driver.get_log("browser")  # drop what the previous page left
            driver.get(urljoin(base, page))
            _wait_loaded(driver)
            info = driver.execute_script(PAGE_PROBE, MAX_SHRINK, OVERFLOW_SLACK)
            for entry in driver.get_log("browser"):
                if entry.get("level") == "SEVERE":
                    rep.problems.append(f"console error: {entry.get('message', '')[:200]}")
            rep.problems += [f"broken image: {src}" for src in info["images"]]
            if info["pageWidth"] > info["windowWidth"] + OVERFLOW_SLACK:
                rep.problems.append(f"page {info['pageWidth']} px wide in a "
                                    f"{info['windowWidth']} px window")
            rep.problems += [f"wider than its column: {o}" for o in info["overflow"]]
            rep.problems += [f"figure shrunk: {s}" for s in info["shrunk"]]
            rep.problems += [f"widget area without a static figure: {w}"
                             for w in info["widgets"]]
            rep.problems += info["math"]
            for url in sorted(set(info["links"])):
                problem = _fragment_ok(url, base, site, anchors_of)
                if problem:
                    rep.problems.append(problem)
            if shots is not None:
                driver.save_screenshot(str(shots / (page.replace("/", "__")[:-5] + ".png")))
            rep.seconds = time.time() - t
            rep.chapter = info.get("chapter")
            reports.append(rep)
    finally:
        driver.quit()
        server.shutdown()
    chapters = [r for r in reports if r.page.startswith(CHAPTER_DIR)]
    for n, r in enumerate(chapters, 1):
        if not r.chapter:
            r.problems.append("chapter title carries no number")
        elif r.chapter.rstrip(".") != str(n):
            r.problems.append(f"chapter numbered {r.chapter!r}, expected {n}. in file order")
    return reports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("site", nargs="?", default=str(ROOT / "_build" / "html"))
    ap.add_argument("--shots", default=str(ROOT / "_build" / "screenshots"))
    ap.add_argument("--vendor", default=str(ROOT / ".cache" / "browser" / "node_modules"))
    ap.add_argument("--width", type=int, default=WINDOW_WIDTH)
    ap.add_argument("--json", help="also write the per-page report to this file")
    args = ap.parse_args(argv)
    t = time.time()
    reports = check_site(Path(args.site), Path(args.vendor), Path(args.shots), args.width)
    bad = [r for r in reports if r.problems]
    for r in reports:
        status = "FAIL" if r.problems else "ok"
        print(f"{status:4} {r.page} ({r.seconds:.1f} s)")
        for p in r.problems:
            print(f"       {p}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"page": r.page, "problems": r.problems, "seconds": round(r.seconds, 2)}
             for r in reports], indent=1))
    print(f"browser check: {len(reports)} pages, {len(bad)} failing, "
          f"{time.time() - t:.1f} s; screenshots in {args.shots}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
