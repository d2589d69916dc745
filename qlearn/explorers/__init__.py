"""Interactive explorers (ipywidgets) used by the book's chapters, one module per chapter topic.

Each explorer also has a plain matplotlib drawing of its default setting, because the rendered
book has no kernel to run the widget.
"""
