"""The one exception type the data side raises for bad inputs.

A `DataError` message is meant for a person and fits on one line: the value that was wrong, what
was expected, and how to fix it. Entry points print it without a traceback and exit with status 2.
"""

from __future__ import annotations


class DataError(ValueError):
    """A bad input to tokenizer training, preparation or the input pipeline."""
