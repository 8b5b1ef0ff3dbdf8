"""One kind of progress bar for every long job (pretrain, finetune, glue, embed, prepare,
convert, bench), so they all look alike: tqdm's line with the count, the rate, the time spent
and the time left (ETA), plus the figure that matters for the job (loss, dev metric, tokens).

When a bar is drawn (``shown``):
  * only when the job wants one (``wanted``: ``config.progress_bar``, a command's choice);
  * only on the chief process (``chief``): several processes of one job draw one bar;
  * only when ``sys.stderr`` is a terminal: output captured to a file or a pipe (logs, the
    tests' subprocesses) gets the job's own lines and summaries, never '\\r' updates;
  * ``BERTJAX_PROGRESS=0`` turns every bar off, ``BERTJAX_PROGRESS=1`` draws them even when
    stderr is not a terminal (still only where wanted, on the chief).

Bars write to ``sys.stderr``, which a quiet console (bertjax.console) keeps on the terminal.
A job's own lines printed while a bar is open go through ``echo``, which clears the bar, prints
the line on stdout and redraws the bar below it. Standard library only; tqdm is imported when a
bar is drawn.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

PROGRESS_ENV = "BERTJAX_PROGRESS"


def shown(wanted: bool = True, chief: bool = True, stream: TextIO | None = None) -> bool:
    """Whether a bar is drawn (the rules in the module docstring).

    Args:
      wanted: the job's own setting (e.g. ``config.progress_bar``).
      chief: whether this is the process that prints (bertjax.multihost.is_chief()).
      stream: where the bar would go (default ``sys.stderr``).
    """
    if not wanted or not chief:
        return False
    setting = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


class Off:
    """The bar that is not drawn: counts, and takes every call a drawn bar takes."""

    def __init__(self, initial: int = 0):
        self.n = initial

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def close(self) -> None:
        pass

    def __enter__(self) -> "Off":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def bar(total: float | None, unit: str, desc: str = "", *, initial: float = 0,
        wanted: bool = True, chief: bool = True, unit_scale: bool = False,
        leave: bool | None = None, position: int | None = None, delay: float = 0.0) -> Any:
    """A progress bar, or ``Off`` when it is not shown.

    Args:
      total: the count at the end (None: unknown, no ETA).
      unit: what is counted ("step", "shard", "sentence", "task", "round", "B").
      desc: the job, shown first ("pretrain", "[scratch] finetune", ...).
      initial: the count already done (a resumed run).
      wanted, chief: see ``shown``.
      unit_scale: print large counts as 1.2M (bytes, sentences).
      leave: keep the finished bar on screen (default: only when it is the top one; a task's
        bar inside a suite's goes when it is done).
      position: the line of a nested bar (default: the first free line).
      delay: seconds before the bar first shows (at an ``update``): a job that ends, or is
        refused, sooner draws nothing.

    Returns:
      An object with tqdm's ``update``, ``set_postfix``, ``set_postfix_str``,
      ``set_description`` and ``close`` (and a context manager).
    """
    if not shown(wanted, chief):
        return Off(int(initial))
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc or None, file=sys.stderr,
                dynamic_ncols=True, unit_scale=unit_scale, leave=leave, position=position,
                delay=delay)


def echo(text: str) -> None:
    """Prints a line of the job's own on stdout; an open bar is cleared first and drawn again
    below it (a plain ``print`` would land in the middle of the bar's line)."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None and len(getattr(tqdm_module.tqdm, "_instances", ())):
        tqdm_module.tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()
    else:
        print(text, flush=True)
