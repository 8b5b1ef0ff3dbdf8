"""TFRecord files: reading every record of one (CRC-checked), counting a dataset's elements, and
TensorFlow's error text for DataError messages.

The bottom of the TensorFlow side's file handling: `prepare` (its --verify) and `pretraining`
(finding the corrupt file after a failed read) build on it, and it knows nothing of what the
records hold. TensorFlow is imported only inside `read_all_records`, so that importing
`prepare` stays free of TensorFlow (its shard writers import it themselves, after setting up
their process).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from bertjax.data.errors import DataError

if TYPE_CHECKING:
    import tensorflow as tf


def reason(error: tf.errors.OpError) -> str:
    """The first line of a TensorFlow error without its graph-function and op decorations."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", str(error.message)).strip().splitlines()[0]
    return re.sub(r"\s*\[Op:.*$", "", text)[:160]


def count(ds: tf.data.Dataset) -> int:
    """Number of elements of a finite dataset (one pass, in the TF runtime)."""
    return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def read_all_records(path: str) -> int:
    """Reads every record of a TFRecord file (CRC-checked); DataError names the file if corrupt.

    Args:
      path: a TFRecord file.

    Returns:
      The number of records.
    """
    import tensorflow as tf

    try:
        return count(tf.data.TFRecordDataset(path))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
        raise DataError(f"TFRecord file {path} is corrupt or unreadable ({reason(e)}); expected "
                        "intact records: delete it and rerun prepare (or copy it again)") from None
