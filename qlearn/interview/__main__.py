"""``python -m qlearn.interview``: see :mod:`qlearn.interview.cli`."""

import sys

from qlearn.interview.cli import main

sys.exit(main())
