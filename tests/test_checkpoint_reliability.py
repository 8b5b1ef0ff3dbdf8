"""Resuming a workdir whose checkpoints directory holds more than complete steps.

A real tiny pre-training run (synthetic data, 4 steps, checkpoints at 2 and 4) is made once;
each test copies it and adds what goes wrong: a stray step directory (garbage, or empty) beside
the good ones, a newest step whose saved config is not JSON, or only damaged steps. The README's
promise: a stray or damaged step is skipped with a warning line naming it and the step used,
the newest complete step is used, and nothing is deleted (it is set aside, renamed); when no
step restores, one ``error:`` line and the directory as it was.
"""

from __future__ import annotations

import os
import shutil

import pytest

from bertjax import checkpoint as ckpt_lib
from bertjax import rundir
from commands import assert_one_error, checksums, run

TINY = ["--config.data.source=synthetic", "--config.model.vocab_size=512",
        "--config.global_batch_size=8", "--config.eval_batch_size=8",
        "--config.max_seq_length=32", "--config.max_predictions=5",
        "--config.optim.warmup_steps=1", "--config.progress_bar=False",
        "--config.async_checkpoints=False", "--config.checkpoint_every=2",
        "--config.eval_every=100", "--config.log_every=1"]


def _pretrain(workdir: str, total_steps: int):
    return run("pretrain", f"--workdir={workdir}", *TINY, f"--config.total_steps={total_steps}")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> str:
    """A finished 4-step pre-training run: checkpoints/2 and checkpoints/4, both complete."""
    workdir = str(tmp_path_factory.mktemp("tiny") / "run")
    result = _pretrain(workdir, 4)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert rundir.steps(os.path.join(workdir, "checkpoints")) == [2, 4]
    return workdir


@pytest.fixture
def copy(tiny_run, tmp_path):
    def make(name: str = "run") -> str:
        target = str(tmp_path / name)
        shutil.copytree(tiny_run, target)
        return target
    return make


def _strays(workdir: str) -> dict[str, dict]:
    """An empty checkpoints/70 and a checkpoints/6 holding garbage (6 is the step the resume
    saves next: orbax would refuse it as existing), with the garbage's checksums."""
    ckpts = os.path.join(workdir, "checkpoints")
    os.makedirs(os.path.join(ckpts, "70"))
    os.makedirs(os.path.join(ckpts, "6", "state"))
    with open(os.path.join(ckpts, "6", "state", "half.bin"), "wb") as f:
        f.write(os.urandom(4000))
    return {"6": checksums(os.path.join(ckpts, "6"))}


def _warnings(result) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("warning:")]


def test_resume_sets_stray_step_dirs_aside_and_uses_newest_complete(copy):
    workdir = copy()
    kept = _strays(workdir)
    result = _pretrain(workdir, 6)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    warnings = _warnings(result)
    assert len(warnings) == 1, warnings
    assert ("2 step directories are not complete checkpoints" in warnings[0]
            and "6 -> 6.stray" in warnings[0] and "70 -> 70.stray" in warnings[0]
            and "the newest complete step is 4" in warnings[0]), warnings
    assert "resuming from checkpoint step 4" in out
    ckpts = os.path.join(workdir, "checkpoints")
    assert rundir.steps(ckpts) == [2, 4, 6]  # the good steps kept (keep=3), step 6 saved
    assert rundir.stray_steps(ckpts) == []
    assert checksums(os.path.join(ckpts, "6.stray")) == kept["6"]  # set aside, not deleted
    assert os.path.isdir(os.path.join(ckpts, "70.stray"))


def test_resume_sets_a_step_with_a_broken_config_aside(copy):
    workdir = copy()
    with open(os.path.join(workdir, "checkpoints", "4", "config", "metadata"), "w") as f:
        f.write("{not json")
    result = _pretrain(workdir, 4)  # resumes at 2, trains steps 3 and 4 again
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    warnings = _warnings(result)
    assert len(warnings) == 2, warnings
    assert "checkpoint step 4" in warnings[0] and "not a JSON object" in warnings[0] and (
        "skipping it and trying step 2" in warnings[0]), warnings
    assert "unreadable step set aside: 4 -> 4.damaged; using step 2" in warnings[1], warnings
    assert "resuming from checkpoint step 2" in out
    ckpts = os.path.join(workdir, "checkpoints")
    assert rundir.steps(ckpts) == [2, 4]
    assert open(os.path.join(ckpts, "4.damaged", "config", "metadata")).read() == "{not json"


def test_no_restorable_step_is_one_line_and_touches_nothing(copy):
    workdir = copy()
    ckpts = os.path.join(workdir, "checkpoints")
    for step in ("2", "4"):
        with open(os.path.join(ckpts, step, "config", "metadata"), "w") as f:
            f.write("[1, 2")
    before = checksums(ckpts)
    result = _pretrain(workdir, 6)
    assert_one_error(result, ckpts, "no checkpoint step restores", "step 4 (and 1 older)",
                     "not a JSON object", "move the checkpoints directory aside")
    assert checksums(ckpts) == before


def test_checkpointer_counts_only_complete_steps(copy):
    """The library alone: a stray newer than every good step is neither the latest step nor
    the saved config (which is the run-identity check's), and is set aside on opening."""
    workdir = copy()
    ckpts = os.path.join(workdir, "checkpoints")
    kept = _strays(workdir)
    assert [p.name for p in rundir.stray_steps(ckpts)] == ["6", "70"]
    ckpt = ckpt_lib.Checkpointer(ckpts, every=2, async_save=False)
    try:
        assert ckpt.latest_step() == 4 and ckpt.steps() == [2, 4]
        assert sorted(ckpt.manager.all_steps()) == [2, 4]  # orbax's own list agrees
        assert ckpt.saved_config()["total_steps"] == 4
    finally:
        ckpt.close()
    assert sorted(os.listdir(ckpts)) == ["2", "4", "6.stray", "70.stray"]
    assert checksums(os.path.join(ckpts, "6.stray")) == kept["6"]
    # A second stray of the same number later gets its own name.
    os.makedirs(os.path.join(ckpts, "70"))
    ckpt_lib.Checkpointer(ckpts, every=2, async_save=False).close()
    assert "70.stray-2" in os.listdir(ckpts)


def test_convert_to_hf_passes_over_stray_and_damaged_steps(copy, tmp_path):
    """Export reads through rundir (complete steps only) and moves nothing: a stray step dir is
    passed over, so is a complete step whose config is not JSON; both are named, once."""
    workdir = copy()
    _strays(workdir)
    with open(os.path.join(workdir, "checkpoints", "4", "config", "metadata"), "w") as f:
        f.write("{not json")
    before = checksums(workdir)
    out = str(tmp_path / "hf")
    result = run("convert", "--to=hf", f"--input={workdir}", f"--output={out}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    warnings = _warnings(result)
    assert len(warnings) == 1 and "6 (not a complete checkpoint)" in warnings[0] and (
        "70 (not a complete checkpoint)" in warnings[0]) and "4 (ConfigError" in warnings[0] and (
        warnings[0].endswith("exported step 2")), warnings
    assert "exported step 2 of" in result.stdout
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert checksums(workdir) == before


def test_saved_config_that_is_not_json_is_one_line_for_readers(copy):
    """rundir, which every reader goes through (init_from, embed, convert), names the file."""
    workdir = copy()
    path = os.path.join(workdir, "checkpoints", "4", "config", "metadata")
    with open(path, "w") as f:
        f.write("\x00\x01 not json")
    with pytest.raises(rundir.config_lib.ConfigError, match="not valid JSON") as e:
        rundir.saved_config(workdir)
    assert path in str(e.value) and "\n" not in str(e.value)
