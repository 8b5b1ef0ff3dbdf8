#!/usr/bin/env python3
"""Fault soak: SIGKILL a pre-training run at random moments, resume it each time, and check the
final parameters are bitwise those of an uninterrupted run.

    python scripts/fault_soak.py [--kills 20] [--steps 60] [--seed 0] [--workdir DIR]

Runs bert_tiny on a small slice of the embedded corpus (the real tf.data pipeline, whose
iterator state is checkpointed) on 8 fake CPU devices, checkpointing every 2 steps. Prints one
summary line and exits non-zero on any difference. Outside the fast test suite: about
20 s per restart on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

# The comparison at the end restores 8-device checkpoints in this process: same device count.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config.model.vocab_size=1000", "--config.data.max_documents=120",
         "--config.global_batch_size=16", "--config.eval_batch_size=16",
         "--config.max_seq_length=64", "--config.max_predictions=10", "--config.log_every=1",
         "--config.progress_bar=False", "--config.optim.warmup_steps=2",
         "--config.checkpoint_every=2", "--config.eval_every=1000000"]


def start(workdir: str, steps: int, cache: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT, BERTJAX_CACHE=cache,
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    return subprocess.Popen([sys.executable, "-m", "bertjax.pretrain", f"--workdir={workdir}",
                             f"--config.total_steps={steps}", *FLAGS], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def last_step(workdir: str) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        steps = [json.loads(line)["step"] for line in f if '"train"' in line]
    return max(steps, default=0)


def final_params(workdir: str):
    import orbax.checkpoint as ocp
    ckdir = os.path.join(workdir, "checkpoints")
    step = max(int(p) for p in os.listdir(ckdir) if p.isdigit())
    return step, ocp.PyTreeCheckpointer().restore(f"{ckdir}/{step}/state")["params"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    rng = random.Random(args.seed)
    root = args.workdir or tempfile.mkdtemp(prefix="bertjax_soak_")
    cache, straight, broken = (os.path.join(root, n) for n in ("cache", "straight", "broken"))
    t0 = time.time()
    if start(straight, args.steps, cache).wait() != 0:
        print(f"fault soak: FAILED: the uninterrupted run failed (workdir {straight})")
        return 1
    kills = 0
    while kills < args.kills:
        proc = start(broken, args.steps, cache)
        # kill at a random moment: while starting, compiling, stepping or saving
        deadline = time.time() + rng.uniform(3.0, 40.0)
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        if proc.poll() is not None:
            if last_step(broken) >= args.steps:
                break  # finished before this kill: fewer kills than asked
            print(f"fault soak: FAILED: run exited with {proc.returncode} before being killed")
            return 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    if start(broken, args.steps, cache).wait() != 0:
        print("fault soak: FAILED: the final resume failed")
        return 1
    import numpy as np
    import jax
    sa, pa = final_params(straight)
    sb, pb = final_params(broken)
    same = sa == sb and all(np.array_equal(np.asarray(x), np.asarray(y))
                            for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))
    print(f"fault soak: {kills} SIGKILLs, resumed each time, final step {sb}: parameters "
          f"{'bitwise equal to' if same else 'DIFFERENT from'} the uninterrupted run "
          f"({time.time() - t0:.0f} s, workdir {root})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
