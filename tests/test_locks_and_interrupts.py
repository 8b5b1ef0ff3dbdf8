"""One writer per workdir, and Ctrl-C that saves: real processes, real signals.

The lock: a second process is refused in one line naming the holder, with the workdir
untouched; a holder killed by SIGKILL does not block the next run. Ctrl-C: the first press
finishes the step, saves it and exits 130 (the next start resumes there); a second press stops
at once with one line, no traceback; the same in fine-tuning.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from bertjax import lock
from tests import commands
from tests.finetuning.test_finetune import FILES, imported  # noqa: F401 (fixture)
from tests.test_pretrain import BASE, _final_params, _log, _start, _wait_for_step, cache  # noqa

HOLD = """
import sys, time
from bertjax import lock
with lock.hold(sys.argv[1], inside=sys.argv[2] == "inside"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(path: str, inside: bool = True) -> subprocess.Popen:
    """Another process holding the lock of ``path`` (returns once it holds it)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, path, "inside" if inside else "beside"],
                         cwd=commands.REPO, env=dict(os.environ, PYTHONPATH=commands.REPO),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    workdir = str(tmp_path / "run")
    holder = _holder(workdir)
    try:
        before = commands.checksums(workdir)
        r = commands.run("pretrain", f"--workdir={workdir}", *BASE, "--config.total_steps=2")
        commands.assert_one_error(r, "is in use by another bertjax run",
                                  f"process {holder.pid} on ")
        assert commands.checksums(workdir) == before
        out = str(tmp_path / "hf")
        side = _holder(out, inside=False)
        try:
            r = commands.run("convert", f"--input={workdir}", "--to=hf", f"--output={out}")
            commands.assert_one_error(r, f"--output={out} is in use by another bertjax run")
            assert not os.path.exists(out)
        finally:
            side.kill()
            side.wait()
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    workdir = str(tmp_path / "run")
    holder = _holder(workdir)
    with pytest.raises(lock.Busy, match=f"process {holder.pid}"):
        with lock.hold(workdir):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert os.path.exists(os.path.join(workdir, lock.LOCK_FILE))  # stale file, no lock
    with lock.hold(workdir):  # the next run proceeds
        assert f'"pid": {os.getpid()}' in open(os.path.join(workdir, lock.LOCK_FILE)).read()


@pytest.mark.slow
def test_ctrl_c_saves_the_step_exits_130_and_the_next_start_resumes(cache, tmp_path):
    workdir = str(tmp_path / "int")
    steps = ["--config.total_steps=40", "--config.checkpoint_every=100",
             "--config.eval_every=100"]
    p = _start(cache, workdir, *steps)
    _wait_for_step(workdir, 3, p)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130
    saved, _ = _final_params(workdir)
    assert 3 <= saved < 40  # the step it was on, not a cadence
    assert f"stopped by SIGINT: saved step {saved} in {workdir}" in _log(workdir)
    assert "Traceback" not in _log(workdir)
    assert _start(cache, workdir, *steps, f"--config.total_steps={saved + 2}").wait(
        timeout=600) == 0
    assert f"resuming from checkpoint step {saved}" in _log(workdir)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_in_one_line(cache, tmp_path):
    workdir = str(tmp_path / "int2")
    p = _start(cache, workdir, "--config.total_steps=400", "--config.checkpoint_every=2",
               "--config.eval_every=400")
    _wait_for_step(workdir, 3, p)
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130
    log = _log(workdir)
    assert "Traceback" not in log, log[-3000:]
    # The second press normally lands within the step; if the step already ended, the first
    # press's save is what stopped it. Either way: one line, exit 130, a resumable workdir.
    assert "interrupted: stopped at once" in log or "stopped by SIGINT" in log, log[-2000:]
    assert _final_params(workdir)[0] >= 2


@pytest.mark.slow
def test_fine_tuning_ctrl_c_saves_a_resumable_state(imported, tmp_path):  # noqa: F811
    workdir = str(tmp_path / "ft")
    args = ["--config=configs/glue.py:task=custom", f"--config.init_from={imported}",
            f"--config.data.train={os.path.join(FILES, 'train.tsv')}",
            f"--config.data.dev={os.path.join(FILES, 'dev.tsv')}",
            "--config.data.text_a=sentence", "--config.data.labels=neg,pos",
            "--config.max_seq_length=16", "--config.global_batch_size=16",
            "--config.eval_batch_size=8", "--config.total_steps=3000",
            "--config.eval_every=1000", "--config.tensorboard=False", f"--workdir={workdir}"]
    env = {**os.environ, "PYTHONPATH": commands.REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    p = subprocess.Popen([sys.executable, "-m", "bertjax.finetune", *args], cwd=commands.REPO,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:  # training has started once the plan is printed
        if line.startswith("learning rate"):
            break
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    out = p.stdout.read()
    assert p.wait(timeout=120) == 130, out[-2000:]
    assert "Traceback" not in out and "stopped by SIGINT: saved step" in out, out[-2000:]
    step = int(out.split("stopped by SIGINT: saved step ")[1].split()[0])
    assert 0 < step < 3000
    shorter = [a if not a.startswith("--config.total_steps") else
               f"--config.total_steps={step + 2}" for a in args]
    again = subprocess.run([sys.executable, "-m", "bertjax.finetune", *shorter],
                           cwd=commands.REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    # A different total_steps is a different run: the resumable state is refused in one line,
    # naming the setting; the same command resumes (the rest of this test).
    commands.assert_one_error(again, "holds an unfinished fine-tuning", "total_steps")
    assert os.path.isdir(os.path.join(workdir, "checkpoints_latest", str(step)))
