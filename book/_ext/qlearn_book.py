"""Sphinx tweaks for the qlearn book (a local extension, loaded from _config.yml).

- Each page lists every script once. Jupyter Book 1 runs sphinx-thebe's and
  sphinx-togglebutton's setup on every read pass, so their inline scripts appear twice and the
  second ``const THEBE_JS_URL`` throws a SyntaxError in every reader's console.
"""


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for js in context.get("script_files", []):
        key = (str(js), tuple(sorted((k, str(v)) for k, v in
                                     getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"][:] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
