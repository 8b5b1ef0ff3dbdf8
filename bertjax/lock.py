"""One writer at a time: a lock on a workdir (or an output) for as long as a command writes it.

A second bertjax process asking for the same lock is refused with one line naming the holder
(command, process id, host, start time). The lock is the kernel's (``flock`` on a small file),
so a holder killed by SIGKILL releases it and a stale lock file never blocks the next run.
Paths that are not local files (gs://) are not locked. On several hosts only the chief locks:
the other processes write their shards of the same run.

Standard library only: the data-preparation command, which never imports JAX, uses it too.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from typing import Iterator

LOCK_FILE = ".lock"  # inside a workdir; an output that appears in one rename: ".<name>.lock"


class Busy(RuntimeError):
    """Another process holds the lock; the message names it and what to do."""


@contextlib.contextmanager
def hold(path: str, inside: bool = True, what: str = "--workdir",
         chief: bool = True) -> Iterator[None]:
    """Holds the lock of ``path`` inside the ``with`` block.

    Args:
      path: a workdir (the lock file goes inside; the directory is created), or, with
        ``inside=False``, an output written beside (its lock file lives next to it and is
        removed afterwards; an output whose parent directory does not exist is not locked).
      what: the flag that named ``path``, for the message.
      chief: False on every process but the first of a multi-host job: no lock there.

    Raises:
      Busy: another process holds it.
    """
    import fcntl

    if not chief or not path or "://" in os.fspath(path):
        yield
        return
    path = os.path.abspath(path)
    if inside:
        os.makedirs(path, exist_ok=True)
        file = os.path.join(path, LOCK_FILE)
    else:
        parent, name = os.path.split(path.rstrip(os.sep))
        if not os.path.isdir(parent):  # nothing can be writing there yet; create nothing
            yield
            return
        file = os.path.join(parent, f".{name}.lock")
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise Busy(f"{what}={path} is in use by another bertjax run ({_holder(file)}); wait "
                       "for it to finish, stop it, or use another path") from None
        holder = {"command": " ".join(["python -m", _command()] + sys.argv[1:])[:300],
                  "pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            if not inside:  # no litter beside the output; a workdir keeps its lock file
                os.unlink(file)
    finally:
        os.close(fd)  # releases the lock


def _holder(file: str) -> str:
    """Who holds the lock, as its holder wrote it."""
    try:
        with open(file) as f:
            h = json.load(f)
        return f"{h['command']}, process {h['pid']} on {h['host']}, since {h['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _command() -> str:
    """The running command's module name (bertjax.pretrain, ...) or the script's name."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else os.path.basename(sys.argv[0] or "python")
