"""bertjax.rundir: the one reader of a run directory's layout.

Real orbax checkpoints (a small state) are written with the project's Checkpointer, then
damaged the ways people damage them: a stray step directory, an empty one, a half-written one.
"""

import json
import os

import jax.numpy as jnp
import pytest

from bertjax import checkpoint as ckpt_lib
from bertjax import config as config_lib
from bertjax import rundir
from bertjax.finetuning.defaults import finetune_config


def _save(workdir, steps, config=None, subdir="checkpoints"):
    config = config or config_lib.base_config()
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, subdir), every=1, keep=10,
                                 async_save=False)
    for step in steps:
        ckpt.save(step, {"w": jnp.full((2,), float(step))}, config, force=True)
    ckpt.close()


def test_stray_and_incomplete_step_directories_are_skipped(tmp_path):
    workdir = str(tmp_path / "run")
    _save(workdir, [50])
    root = tmp_path / "run" / "checkpoints"
    (root / "70").mkdir()  # empty
    (root / "55").mkdir()
    (root / "55" / "garbage").write_text("x")
    (root / "60" / "state").mkdir(parents=True)  # the state item never finished
    (root / "notes").mkdir()
    assert rundir.steps(root) == [50]
    assert rundir.step_dir(workdir) == root / "50"
    run = rundir.resolve(workdir)
    assert (run.kind, run.step) == ("pretraining", 50)
    assert run.saved["model"]["preset"] == config_lib.base_config().model.preset


def test_a_step_directory_stands_for_itself(tmp_path):
    workdir = str(tmp_path / "run")
    _save(workdir, [2, 4])
    run = rundir.resolve(f"{workdir}/checkpoints/2")
    assert run.step == 2 and run.root == os.path.abspath(workdir)
    assert rundir.resolve(workdir).step == 4  # the newest complete step


def test_old_saved_configs_are_upgraded_once_per_kind(tmp_path):
    pre = config_lib.base_config().to_dict()
    del pre["rng_impl"], pre["model"]["scan_layers"], pre["data"]["pairs_per_row"]
    up = rundir.upgrade(pre)
    assert (up["rng_impl"], up["model"]["scan_layers"], up["data"]["pairs_per_row"]) == (
        "threefry2x32", False, 1)
    assert "pooling" not in up and "examples_per_row" not in up["data"]  # fine-tuning keys
    ft = json.loads(json.dumps(finetune_config("custom").to_dict()))
    del ft["pooling"], ft["data"]["examples_per_row"]
    up = rundir.upgrade(ft)
    assert (up["pooling"], up["data"]["examples_per_row"]) == ("cls", 1)
    assert "pairs_per_row" not in up["data"]
    # Saved this way on disk, every reader gets the upgraded config.
    workdir = str(tmp_path / "old")
    _save(workdir, [3])
    meta = tmp_path / "old" / "checkpoints" / "3" / "config" / "metadata"
    saved = json.loads(meta.read_text())
    del saved["rng_impl"]
    meta.write_text(json.dumps(saved))
    assert rundir.saved_config(workdir)["rng_impl"] == "threefry2x32"
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every=1, async_save=False)
    assert ckpt.saved_config()["rng_impl"] == "threefry2x32"
    ckpt.close()


def test_fine_tuning_runs_are_told_from_pre_training_runs(tmp_path):
    _save(str(tmp_path / "ft"), [1], finetune_config("custom"))
    assert rundir.resolve(str(tmp_path / "ft")).kind == "finetuning"
    _save(str(tmp_path / "ft"), [2], finetune_config("custom"), subdir=rundir.LATEST)
    assert rundir.saved_config(str(tmp_path / "ft"), rundir.LATEST)["task"] == "custom"


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_text("x"), "is not a directory"),
    (lambda p: p.mkdir(), "holds no complete bertjax checkpoint"),
    (lambda p: (p / "checkpoints" / "7").mkdir(parents=True), "holds no complete"),
])
def test_not_a_run_is_one_line(tmp_path, make, message):
    path = tmp_path / "x"
    make(path)
    with pytest.raises(config_lib.ConfigError, match=message) as e:
        rundir.resolve(str(path), "--init_from")
    assert "\n" not in str(e.value) and str(e.value).startswith("--init_from=")
