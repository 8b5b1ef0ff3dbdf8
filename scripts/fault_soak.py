#!/usr/bin/env python3
"""Fault soak: SIGKILL a pre-training run in every phase, resume it each time, and check it ends
bitwise where an uninterrupted run ends.

    python scripts/fault_soak.py [--kills 20] [--steps 60] [--seed 0] [--workdir DIR]

Runs bert_tiny on a small slice of the embedded corpus (the real tf.data pipeline, whose
iterator state is checkpointed) on 8 fake CPU devices, checkpointing every 2 steps.

An uninterrupted run goes first; its timeline (when the step finished compiling, how long the
compile took, how long a step takes) places the kills, so they land on any machine speed. Each
kill aims at one phase, in a shuffled rotation:

- start-up: before the step is compiled (imports, data set-up, checkpoint restore);
- compile:  while the train step compiles (the last ``compile`` seconds before it is done);
- step:     between training steps, after one to three new steps of this start, at a moment
            when no checkpoint is being written;
- save:     while an asynchronous checkpoint is being written (its temporary directory exists).

Where each kill landed is what was observed at that moment, printed one line per kill; when a
run has few steps left, kills go to start-up and compile so that every kill asked for is
delivered. The soak fails (exit 1) on fewer kills than asked, a run that exits by itself before
its kill, a loss at any step that differs from the uninterrupted run's, or final parameters that
are not bitwise equal. About 20 s per restart on a 2-core machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

# The comparison at the end restores 8-device checkpoints in this process: same device count.
# Flags already set (e.g. an instruction-set limit) are kept, here and in the runs.
XLA_FLAGS = (re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                    os.environ.get("XLA_FLAGS", "")) + " --xla_force_host_platform_device_count=8"
             ).strip()
os.environ["XLA_FLAGS"] = XLA_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config.model.vocab_size=1000", "--config.data.max_documents=120",
         "--config.global_batch_size=16", "--config.eval_batch_size=16",
         "--config.max_seq_length=64", "--config.max_predictions=10", "--config.log_every=1",
         "--config.progress_bar=False", "--config.optim.warmup_steps=2",
         "--config.checkpoint_every=2", "--config.eval_every=1000000"]
COMPILED = re.compile(r"train step compiled in ([0-9.]+) s")
PHASES = ("start-up", "compile", "step", "save")
WAIT_LIMIT_S = 300.0  # no phase of a tiny run takes this long; waiting longer means it hung
POLL_S = 0.005  # an async save of the tiny model lasts tens of milliseconds


class SoakError(RuntimeError):
    pass


class Run:
    """One start of ``bertjax.pretrain`` on a workdir, its console in a log file."""

    def __init__(self, workdir: str, steps: int, cache: str, log: str):
        env = dict(os.environ, PYTHONPATH=ROOT, BERTJAX_CACHE=cache, XLA_FLAGS=XLA_FLAGS)
        self.workdir, self.log = workdir, log
        # half-written step directories of earlier kills: not this start's saves
        self.stale = set(checkpoint_entries(workdir)[1])
        self.rows_before = len(train_rows(workdir))  # earlier starts' lines stay in the file
        self.compiled_at = self.compile_s = None  # seconds after start; the printed compile time
        self.t0 = time.monotonic()
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bertjax.pretrain", f"--workdir={workdir}",
                 f"--config.total_steps={steps}", *FLAGS],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def compiled(self) -> bool:
        """Whether the run has printed its compile line (noting when it was first seen)."""
        if self.compiled_at is None:
            with open(self.log, errors="replace") as f:
                m = COMPILED.search(f.read())
            if m:
                self.compiled_at, self.compile_s = self.elapsed(), float(m.group(1))
        return self.compiled_at is not None

    def last_step(self) -> int:
        """The last step this start has logged (0 before its first)."""
        return max((r["step"] for r in train_rows(self.workdir)[self.rows_before:]), default=0)

    def saving(self) -> list[str]:
        """Step directories this start is writing (orbax's temporary names)."""
        return [n for n in checkpoint_entries(self.workdir)[1] if n not in self.stale]

    def wait_for(self, what: str, ready) -> None:
        """Polls ``ready()`` until true; a run that exits or hangs first is an error."""
        while not ready():
            self.compiled()
            if self.proc.poll() is not None:
                raise SoakError(f"the run exited ({self.proc.returncode}) while the soak waited "
                                f"for {what} (log: {self.log})")
            if self.elapsed() > WAIT_LIMIT_S:
                raise SoakError(f"no {what} after {WAIT_LIMIT_S:.0f} s (log: {self.log})")
            time.sleep(POLL_S)

    def kill(self) -> None:
        if self.proc.poll() is not None:
            raise SoakError(f"the run exited ({self.proc.returncode}) before its kill "
                            f"(log: {self.log})")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def train_rows(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if row.get("split") == "train":
            rows.append(row)
    return rows


def checkpoint_entries(workdir: str) -> tuple[list[int], list[str]]:
    """(committed step numbers, names of step directories still being written)."""
    d = os.path.join(workdir, "checkpoints")
    names = os.listdir(d) if os.path.isdir(d) else []
    return sorted(int(n) for n in names if n.isdigit()), [n for n in names if "tmp" in n]


def final_params(workdir: str):
    import warnings

    import orbax.checkpoint as ocp
    warnings.filterwarnings("ignore", message="Sharding info not provided")  # one device here
    steps, _ = checkpoint_entries(workdir)
    return steps[-1], ocp.PyTreeCheckpointer().restore(
        f"{workdir}/checkpoints/{steps[-1]}/state")["params"]


def timeline(straight: str, steps: int, cache: str, root: str) -> dict[str, float]:
    """Runs the uninterrupted reference and measures its phases (its start-up includes the
    first preparation of the corpus: the kills' own starts refine it)."""
    run = Run(straight, steps, cache, os.path.join(root, "straight.log"))
    run.wait_for("the compiled step", run.compiled)
    if run.proc.wait() != 0:
        raise SoakError(f"the uninterrupted run failed (log: {run.log})")
    step_s = (run.elapsed() - run.compiled_at) / steps
    return {"start-up": max(run.compiled_at - run.compile_s, 0.5), "compile": run.compile_s,
            "step": max(step_s, 0.01)}


def kill_once(run: Run, phase: str, spans: dict[str, float], rng: random.Random,
              resumed_at: int) -> tuple[str, str]:
    """Kills ``run`` aiming at ``phase``; returns (the phase it was seen to land in, details)."""
    if phase in ("start-up", "compile"):
        lo = 0.0 if phase == "start-up" else spans["start-up"]
        at = lo + rng.uniform(0.1, 0.9) * spans[phase]
        run.wait_for(f"{at:.1f} s", lambda: run.elapsed() >= at or run.compiled())
    elif phase == "step":
        target = resumed_at + rng.randint(1, 3)
        run.wait_for(f"step {target}", lambda: run.last_step() >= target)
        # saves overlap the steps (every 2 steps here): wait for a moment with none in flight
        run.wait_for("a moment with no save in flight", lambda: not run.saving())
    else:  # save: a step directory of this start still being written
        run.wait_for("an asynchronous save", lambda: bool(run.saving()))
    # What the run was doing at this instant, observed, not assumed.
    saving, compiled = bool(run.saving()), run.compiled()
    t, step = run.elapsed(), run.last_step()
    run.kill()
    if saving and run.saving():
        where, detail = "save", "a step directory left half-written"
    elif compiled:
        where, detail = "step", (f"after step {step}" if step > resumed_at
                                 else "in the first step")
    elif t < spans["start-up"]:
        where, detail = "start-up", "before the compile"
    else:
        where, detail = "compile", "step not yet compiled"
    if run.compiled_at is not None:  # this start's own timing places the next kills
        spans["start-up"] = max(run.compiled_at - run.compile_s, 0.5)
        spans["compile"] = run.compile_s
    return where, f"{detail}, {t:.1f} s after start"


def compare_losses(straight: str, broken: str) -> list[str]:
    """Every train row of the killed-and-resumed run against the uninterrupted run's step."""
    want = {r["step"]: r["loss"] for r in train_rows(straight)}
    return [f"step {r['step']}: loss {r['loss']!r} vs {want.get(r['step'])!r}"
            for r in train_rows(broken) if want.get(r["step"]) != r["loss"]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    rng = random.Random(args.seed)
    root = args.workdir or tempfile.mkdtemp(prefix="bertjax_soak_")
    os.makedirs(root, exist_ok=True)
    cache, straight, broken = (os.path.join(root, n) for n in ("cache", "straight", "broken"))
    t0 = time.time()
    landed = collections.Counter()
    try:
        spans = timeline(straight, args.steps, cache, root)
        print(f"fault soak: uninterrupted run {args.steps} steps; start-up "
              f"{spans['start-up']:.1f} s, compile {spans['compile']:.1f} s, "
              f"{spans['step']:.2f} s/step", flush=True)
        rotation: list[str] = []
        for k in range(1, args.kills + 1):
            committed = checkpoint_entries(broken)[0]
            resumed_at = committed[-1] if committed else 0
            if not rotation:
                rotation = list(PHASES)
                rng.shuffle(rotation)
                if k == 1:  # a first kill after the compile measures a resumed start
                    rotation.remove("step")
                    rotation.append("step")
            phase = rotation.pop()
            if resumed_at > args.steps - 8 and phase in ("step", "save"):
                phase = rng.choice(("start-up", "compile"))  # keep steps for the kills left
            run = Run(broken, args.steps, cache, os.path.join(root, f"kill{k:02d}.log"))
            where, detail = kill_once(run, phase, spans, rng, resumed_at)
            landed[where] += 1
            print(f"kill {k:2d}/{args.kills}: aimed at {phase:<8} landed in {where:<8} ({detail}; "
                  f"resumed from step {resumed_at})", flush=True)
        final = Run(broken, args.steps, cache, os.path.join(root, "final.log"))
        if final.proc.wait() != 0:
            raise SoakError(f"the final resume failed (log: {final.log})")
    except SoakError as e:
        print(f"fault soak: FAILED after {sum(landed.values())} of {args.kills} kills: {e}")
        return 1
    import jax
    import numpy as np
    sa, pa = final_params(straight)
    sb, pb = final_params(broken)
    same = sa == sb and all(np.array_equal(np.asarray(x), np.asarray(y))
                            for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))
    loss_diffs = compare_losses(straight, broken)
    kills = sum(landed.values())
    where = ", ".join(f"{landed[p]} {p}" for p in PHASES)
    ok = same and not loss_diffs and kills == args.kills
    print(f"fault soak: {kills} of {args.kills} SIGKILLs delivered ({where}); final step {sb}: "
          f"parameters {'bitwise equal to' if same else 'DIFFERENT from'} the uninterrupted "
          f"run, {len(train_rows(broken))} logged losses "
          f"{'all equal' if not loss_diffs else f'with {len(loss_diffs)} differing'} "
          f"({time.time() - t0:.0f} s, workdir {root})")
    for line in loss_diffs[:5]:
        print(f"  {line}")
    if not ok:
        print("fault soak: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
