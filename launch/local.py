#!/usr/bin/env python3
"""Start N bertjax processes on this machine, as a pod would, and watch them.

    python launch/local.py --num_processes 2 --devices_per_process 4 -- \
        --config=configs/bert_tiny.py:runlocal --workdir=runs/mp

Each process gets M fake CPU devices, the coordinator on 127.0.0.1 and gloo collectives (the
same JAX multi-controller runtime a TPU pod or GPU cluster uses; only the transport differs).
Logs go to <logdir>/process_<i>.log; process 0's is also echoed here. The first process to fail
stops the others and its exit status becomes the launcher's. --dry_run prints the commands.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def xla_flags(devices: int) -> str:
    """The caller's XLA_FLAGS (kept: e.g. an instruction-set limit) with ``devices`` fake CPU
    devices per process."""
    rest = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                  os.environ.get("XLA_FLAGS", "")).split()
    return " ".join(rest + [f"--xla_force_host_platform_device_count={devices}"])


def commands(args: argparse.Namespace, port: int) -> list[tuple[dict, list[str]]]:
    out = []
    for i in range(args.num_processes):
        env = {"BERTJAX_COORDINATOR": f"127.0.0.1:{port}",
               "BERTJAX_NUM_PROCESSES": str(args.num_processes), "BERTJAX_PROCESS_ID": str(i),
               "XLA_FLAGS": xla_flags(args.devices_per_process),
               "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
        out.append((env, [sys.executable, "-m", args.module, *args.rest]))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_processes", type=int, default=2)
    p.add_argument("--devices_per_process", type=int, default=4)
    p.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    p.add_argument("--logdir", default="runs/local_logs")
    p.add_argument("--module", default="bertjax.pretrain")
    p.add_argument("--grace_s", type=float, default=10.0,
                   help="after a failure, how long the others get to stop before SIGKILL")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- then the module's flags")
    args = p.parse_args()
    args.rest = [a for a in args.rest if a != "--"]
    if args.num_processes < 1 or args.devices_per_process < 1:
        print(f"error: --num_processes={args.num_processes} --devices_per_process="
              f"{args.devices_per_process}; both must be >= 1", file=sys.stderr)
        return 2
    port = args.port or free_port()
    cmds = commands(args, port)
    if args.dry_run:
        for env, cmd in cmds:
            print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(cmd))
        return 0

    os.makedirs(args.logdir, exist_ok=True)
    procs, logs = [], []
    for i, (env, cmd) in enumerate(cmds):
        log = open(os.path.join(args.logdir, f"process_{i}.log"), "w")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, env={**os.environ, **env}, cwd=os.getcwd(),
                                      stdout=log, stderr=subprocess.STDOUT))
    echo = open(os.path.join(args.logdir, "process_0.log"))
    status = 0
    try:
        while True:
            sys.stdout.write(echo.read())
            sys.stdout.flush()
            codes = [proc.poll() for proc in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, status = failed[0]
                print(f"launch: process {i} exited with status {status}; stopping the others "
                      f"(logs in {args.logdir})", file=sys.stderr)
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        status = 130
    for proc in procs:  # stop the rest: SIGTERM lets them save, SIGKILL after the grace time
        if proc.poll() is None:
            proc.terminate()
    deadline = time.time() + args.grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
    sys.stdout.write(echo.read())
    for log in logs:
        log.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
