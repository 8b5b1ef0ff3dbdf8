"""Environments for the commands the tests start as subprocesses."""

import os
import re


def xla_flags(devices: int) -> str:
    """This process's XLA_FLAGS with the fake CPU device count set to ``devices``.

    Other flags are kept, so a suite run under e.g. ``XLA_FLAGS=--xla_cpu_max_isa=AVX2`` runs
    its subprocesses on the same instruction set.
    """
    rest = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                  os.environ.get("XLA_FLAGS", "")).split()
    return " ".join(rest + [f"--xla_force_host_platform_device_count={devices}"])
