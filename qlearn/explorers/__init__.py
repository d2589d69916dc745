"""Interactive explorers and figure helpers used by the book's chapters (one module per chapter topic)."""
