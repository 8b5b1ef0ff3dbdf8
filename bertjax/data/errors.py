"""The one exception type the data side raises for bad inputs.

A `DataError` message is meant for a person and fits on one line: the value that was wrong, what
was expected, and how to fix it. Entry points print it without a traceback and exit with status 2.
"""

from __future__ import annotations


class DataError(ValueError):
    """A bad input to tokenizer training, preparation or the input pipeline."""


def import_tfds():
    """tensorflow_datasets, an optional extra: a one-line DataError naming the install when it
    is absent (only the tfds: sources and readers need it)."""
    try:
        import tensorflow_datasets
    except ImportError:
        raise DataError("TFDS is not installed; a tfds: source needs it: pip install "
                        "'bertjax[tfds]' (or pip install -c constraints.txt -r "
                        "requirements-tfds.txt in a checkout)") from None
    return tensorflow_datasets
