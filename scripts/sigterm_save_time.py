#!/usr/bin/env python3
"""How long a pre-training run takes from SIGTERM to its exit: the rest of the current step,
the save of the full state, the exit. What a launcher's grace period (Kubernetes'
terminationGracePeriodSeconds, SLURM's --signal lead time) must cover.

    python scripts/sigterm_save_time.py --config=configs/bert_base.py --workdir=/tmp/save_time

Starts ``python -m bertjax.pretrain`` on synthetic data (no corpus needed) with a small batch,
waits until three steps are logged, times two more, sends SIGTERM and times until the process
exits; prints one JSON line with the times, the exit status and the checkpoint's size. The
workdir must not exist (a fresh run); it is left for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_steps(metrics: str) -> int:
    if not os.path.exists(metrics):
        return 0
    with open(metrics) as f:
        return sum(json.loads(line).get("split") == "train" for line in f if line.strip())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/bert_base.py")
    p.add_argument("--workdir", required=True)
    p.add_argument("--devices", type=int, default=1, help="fake CPU devices")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    args = p.parse_args()
    if os.path.exists(args.workdir):
        print(f"error: --workdir={args.workdir} exists; give a new directory", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
    cmd = [sys.executable, "-m", "bertjax.pretrain", f"--config={args.config}",
           f"--workdir={args.workdir}", "--config.data.source=synthetic",
           f"--config.global_batch_size={args.batch}", "--config.accum_steps=1",
           f"--config.eval_batch_size={args.batch}", f"--config.max_seq_length={args.seq}",
           f"--config.max_predictions={max(1, args.seq * 15 // 100)}",
           "--config.total_steps=1000000", "--config.checkpoint_every=1000000",
           "--config.eval_every=1000000", "--config.log_every=1", "--config.progress_bar=False"]
    log_path = args.workdir.rstrip("/") + ".log"
    metrics = os.path.join(args.workdir, "metrics.jsonl")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        while _train_steps(metrics) < 3:
            if proc.poll() is not None:
                print(f"error: the run ended early ({proc.returncode}); see {log_path}",
                      file=sys.stderr)
                return 1
            time.sleep(0.2)
        n, t0 = _train_steps(metrics), time.time()
        while _train_steps(metrics) < n + 2:
            time.sleep(0.05)
        step_s = (time.time() - t0) / 2
        t1 = time.time()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait()
        stop_s = time.time() - t1
    size = sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(os.path.join(args.workdir, "checkpoints")) for f in files)
    print(json.dumps({"config": args.config, "devices": args.devices, "exit": code,
                      "sigterm_to_exit_s": round(stop_s, 1), "step_s": round(step_s, 2),
                      "checkpoint_bytes": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
