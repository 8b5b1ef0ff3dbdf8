"""File systems, local and gs:// alike: the one path layer the data, fine-tuning and embedding
code reaches files through.

It is etils.epath (what pre-training's workdir, rundir and orbax use too) plus the few things
epath does not do the way the os module did for a local path: a glob of a whole pattern (``**``
across directories, locally), a regular-file test and a size that need no owner lookup, the
nearest existing directory of an output still to be created, and writing a file whole (a
temporary name, then a rename). Locally these keep the os module's semantics exactly, so every
one-line error about a local path reads as before; a path with a scheme (``gs://``) goes
through epath only. With TensorFlow installed, as wherever the tf.data pipeline runs, epath
reaches gs:// through TensorFlow's file systems, the ones tf.data's TFRecord readers and
writers and tf.summary use as well (and sentencepiece is handed a model's bytes, not its
path), so one path string serves all of them.

Neither JAX nor TensorFlow is imported here (epath imports TensorFlow itself, at the first
gs:// operation).
"""

from __future__ import annotations

import contextlib
import glob as glob_lib
import os
import re
from typing import IO, Any, Iterator

from etils import epath

from bertjax.data.errors import DataError

_MAGIC = re.compile(r"[*?[]")  # what makes a path component a glob pattern


def is_remote(path: Any) -> bool:
    """Whether ``path`` names a file system by scheme (``gs://bucket/...``) rather than a
    local path."""
    return "://" in os.fspath(path)


def path(p: Any) -> epath.Path:
    """``p`` as an epath.Path; a scheme epath does not know is one DataError line."""
    try:
        return epath.Path(p)
    except KeyError:  # epath's table of schemes
        scheme = os.fspath(p).split("://", 1)[0]
        raise DataError(f"{os.fspath(p)!r}: no file system for {scheme}:// (expected a local "
                        "path or gs://bucket/...); check the path") from None


def is_file(p: Any) -> bool:
    """A regular file locally (os.path.isfile: a socket or device is not one); on gs:// an
    object that is not a directory."""
    if not is_remote(p):
        return os.path.isfile(p)
    q = path(p)
    return q.exists() and not q.is_dir()


def lexists(p: Any) -> bool:
    """Whether anything is there, a broken local symbolic link included."""
    return os.path.lexists(p) if not is_remote(p) else path(p).exists()


def read_bytes(p: Any) -> bytes:
    """The whole file: locally with the os module (TFDS's test mocks replace TensorFlow's file
    functions, which epath may use for local paths too), else through epath."""
    if not is_remote(p):
        with open(p, "rb") as f:
            return f.read()
    return path(p).read_bytes()


def size(p: Any) -> int:
    """The file's size in bytes (OSError when it is missing)."""
    # epath's local stat also looks up the owner's name, which fails for a uid without one
    return os.path.getsize(p) if not is_remote(p) else path(p).stat().length


def readable(p: Any) -> bool:
    """Locally, whether this process may read ``p``; on gs:// permissions show at the first
    read, so True."""
    return os.access(p, os.R_OK) if not is_remote(p) else True


def writable_dir(p: Any) -> bool:
    """Locally, whether this process may create files in directory ``p``; on gs:// True (a
    refusal shows at the first write)."""
    return os.access(p, os.W_OK | os.X_OK) if not is_remote(p) else True


def nearest_existing(p: Any) -> str | None:
    """The closest of ``p`` and its ancestors that exists locally (absolute), where a new
    directory ``p`` would be created; None for gs://, which has no directories to create."""
    if is_remote(p):
        return None
    parent = os.path.abspath(p)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return parent


def absolute(p: Any) -> str:
    """A local path made absolute; a gs:// path as it is (absolute already)."""
    return os.fspath(p) if is_remote(p) else os.path.abspath(p)


def real(p: Any) -> str:
    """A local path with its symbolic links resolved, for telling two names of one directory
    apart; a gs:// path as it is."""
    return os.fspath(p) if is_remote(p) else os.path.realpath(p)


def glob(pattern: str, recursive: bool = False) -> list[str]:
    """The paths ``pattern`` matches, unsorted.

    Locally this is glob.glob (``recursive``: ``**`` spans directories). On gs:// the
    components up to the first one holding ``*``, ``?`` or ``[`` name where to list, and the
    rest is matched by the file system; ``**`` is refused there (each directory level would be
    a listing request): DataError, one line.
    """
    pattern = os.fspath(pattern)
    if not is_remote(pattern):
        return glob_lib.glob(pattern, recursive=recursive)
    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    first = next((i for i, part in enumerate(parts) if _MAGIC.search(part)), None)
    if first is None:
        return [pattern] if path(pattern).exists() else []
    if "**" in rest:
        raise DataError(f"{pattern!r}: ** (any depth) works for local paths only; on "
                        f"{scheme}:// name each directory level, e.g. with */*")
    if first == 0:  # a pattern in the bucket's name: nothing to list
        return []
    base = path(f"{scheme}://" + "/".join(parts[:first]))
    return [os.fspath(m) for m in base.glob("/".join(parts[first:]))]


@contextlib.contextmanager
def atomic_write(p: Any, mode: str = "w", tmp: str | None = None) -> Iterator[IO[Any]]:
    """A file to write ``p`` through: written under a temporary name (``tmp``, default
    ``<p>.tmp``), renamed over ``p`` when the block ends; removed instead if the block raises,
    so ``p`` is either its old self or whole.

    Locally the rename is os.replace within one directory: atomic. On gs:// an object becomes
    visible only once its upload completes, so no reader sees part of the temporary object
    either; the rename there is a copy and a delete, so a process killed between the two
    leaves the temporary object beside a complete ``p``.
    """
    dest = path(p)
    staged = path(tmp if tmp is not None else f"{os.fspath(p)}.tmp")
    try:
        with staged.open(mode) as f:
            yield f
    except BaseException:
        with contextlib.suppress(OSError):
            staged.unlink(missing_ok=True)
        raise
    staged.replace(dest)


def write_atomic(p: Any, data: str | bytes, tmp: str | None = None) -> None:
    """Writes ``data`` (text as UTF-8) to ``p`` whole, through ``atomic_write``."""
    with atomic_write(p, "wb" if isinstance(data, bytes) else "w", tmp) as f:
        f.write(data)
