"""TFRecord files: finding them (globs checked for directories and empty files, without
TensorFlow), reading every record of one (CRC-checked), counting a dataset's elements, and
TensorFlow's error text for DataError messages.

The bottom of the TensorFlow side's file handling: `prepare` (its --verify) and `pretraining`
(finding the corrupt file after a failed read) build on it, and it knows nothing of what the
records hold. TensorFlow is imported only inside `read_all_records`, so that importing
`prepare` stays free of TensorFlow (its shard writers import it themselves, after setting up
their process).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Sequence

import numpy as np

from bertjax.data import fs
from bertjax.data.errors import DataError

if TYPE_CHECKING:
    import tensorflow as tf


def expand_files(data: str | Sequence[str]) -> list[str]:
    """The TFRecord files ``data`` names (globs or paths), sorted; DataError names the first
    pattern that matches nothing or the first match that is a directory, empty or unreadable.

    Cheap (globs and stats, no TensorFlow): pre-training calls it before it compiles.
    """
    patterns = [data] if isinstance(data, str) else list(data)
    if not patterns:
        raise DataError("no data files given (an empty list); pass a glob of TFRecord files or a "
                        "prepared directory")
    files = []
    for pattern in patterns:
        # a literal name may hold glob characters ([1]): as itself when it exists
        matches = fs.glob(pattern) or ([pattern] if fs.lexists(pattern) else [])
        if not matches:
            raise DataError(f"data {pattern!r} matches no file (expected google-research/bert "
                            "TFRecord files, or a directory prepared by python -m bertjax.prepare)"
                            "; check the path, and quote the glob so the shell leaves it alone")
        files += matches
    files.sort()
    for path in files:
        if fs.path(path).is_dir():
            raise DataError(f"{path} is a directory (expected TFRecord files); name the files "
                            f"inside it, e.g. {os.path.join(path, '*.tfrecord')}, or pass a "
                            "prepared directory by itself")
        if not fs.is_file(path):
            raise DataError(f"{path} is not a regular file (expected a TFRecord file); leave it "
                            "out of the glob")
        if fs.size(path) == 0:
            raise DataError(f"{path} is empty (0 bytes; expected TFRecords: an incomplete copy?); "
                            "copy it again or leave it out of the glob")
        if not fs.readable(path):
            raise DataError(f"{path} cannot be read (permission denied; expected a readable "
                            "TFRecord file); fix its permissions")
    return files


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
