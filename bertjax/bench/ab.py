"""A/B runs: one workload measured two ways in one process, then the second against the first.

scripts/bench_packing.py, bench_ft_packing.py, bench_embed_packing.py and bench_prune.py each
run the same thing twice (one example per row, then packed; the whole last layer, then pruned)
and print what each run did and how many times faster one is. They take their command line, the
table of runs and the ratio's form from here, so the four read and print alike.

Only argparse: a script parses its flags (and answers --help) before jax starts.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterable, Sequence


def parse_args(doc: str, **flags: Any) -> argparse.Namespace:
    """Parses the command line of a script whose docstring is ``doc``.

    Args:
      doc: the script's docstring; its first line is the description --help prints.
      **flags: ``--NAME`` for each keyword, in order, as NAME=default (an int default makes an
        int flag, anything else a string) or NAME=(default, help).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, value in flags.items():
        default, help_text = value if isinstance(value, tuple) else (value, None)
        typed = {"type": int} if isinstance(default, int) else {}
        parser.add_argument(f"--{name}", default=default, help=help_text, **typed)
    return parser.parse_args()


def table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]]) -> str:
    """The runs as a text table: a header line, then a line per row.

    Args:
      columns: (title, cell format such as "{:8.3f}" or "{:7.1f}%"); a title is right-aligned
        over its cell's width (the width of the format applied to 0), columns one space apart.
      rows: a value per column, in order.
    """
    lines = [" ".join(f"{title:>{len(cell.format(0))}}" for title, cell in columns)]
    lines += [" ".join(cell.format(v) for (_, cell), v in zip(columns, row)) for row in rows]
    return "\n".join(lines)


def ratio(num: float, den: float) -> str:
    """``num / den`` as every A/B line prints it (x1.234): a rate of B over A's, or a time of A
    over B's."""
    return f"x{num / den:.3f}"
