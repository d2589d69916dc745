"""Interactive explorers for the book: ipywidgets controls over qlearn's algorithms.

Each explorer module offers a plain plotting function (used for the static figure the rendered
book shows, since it has no kernel) and a widget built on it with ``ipywidgets.interactive``.
"""
