"""Running bertjax commands as a user does, and checking what a bad input leaves behind.

``run`` starts ``python -m bertjax.<command>`` in a subprocess (8 fake CPU devices, TensorFlow
quiet); ``assert_one_error`` checks the contract every command keeps for bad input: a non-zero
exit, exactly one ``error:`` line naming what is wrong, no traceback; ``checksums`` fingerprints
a directory so a test can show that a refused command wrote or overwrote nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from tests import envs

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def run(command: str, *args: str, cwd: str | None = None, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m bertjax.<command> args...`` with the repository importable from ``cwd``."""
    full_env = {**os.environ, "XLA_FLAGS": envs.xla_flags(8), "TF_CPP_MIN_LOG_LEVEL": "3",
                "PYTHONPATH": REPO, **(env or {})}
    return subprocess.run([sys.executable, "-m", f"bertjax.{command}", *args], cwd=cwd or REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_one_error(result: subprocess.CompletedProcess, *fragments: str,
                     code: int = 2) -> str:
    """The command failed with exit ``code``, printed one ``error:`` line containing every
    fragment, and no traceback; returns that line."""
    out = result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == code, (result.returncode, out[-3000:])
    assert len(errors) == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def checksums(path: str) -> dict[str, str]:
    """{relative path: sha256} of every file under ``path`` ({} when it does not exist); a
    file ``path`` gives {"": sha256}."""
    def digest(p: str) -> str:
        with open(p, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    if os.path.isfile(path):
        return {"": digest(path)}
    found = {}
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            found[os.path.relpath(p, path)] = digest(p)
    return found
