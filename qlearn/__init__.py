"""qlearn: quantizing large language models, from the bits up.

One module per algorithm; each chapter of the book imports the module it teaches.
"""

__version__ = "0.1.0"
