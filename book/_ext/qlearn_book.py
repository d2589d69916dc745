"""Sphinx tweaks for the qlearn book (a local extension, loaded from _config.yml).

- Each page lists every script once. Jupyter Book 1 runs sphinx-thebe's and
  sphinx-togglebutton's setup twice, so their inline scripts appear twice (once with filename
  None, once with ''), and the second ``const THEBE_JS_URL`` throws a SyntaxError in every
  reader's console.
- A first visit has no colour mode stored: pydata-sphinx-theme then logs "Got invalid theme
  mode" as a console error unless the page names a default mode.
"""

DEFAULT_MODE = "auto"  # light or dark, following the reader's system setting


def _html_page_context(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for js in context.get("script_files", []):
        key = (getattr(js, "filename", None) or "",
               tuple(sorted((k, str(v)) for k, v in getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"][:] = unique
    if not context.get("default_mode"):
        context["default_mode"] = DEFAULT_MODE


def setup(app):
    app.connect("html-page-context", _html_page_context, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
