"""Config files load, validate and fail with one clear line before anything is compiled."""

import glob
import json
import os
import subprocess
import sys

import pytest

from bertjax import config as config_lib
from envs import xla_flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path, arg=""):
    import importlib.util
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "bert_*.py"))))
def test_every_config_validates_on_a_matching_mesh(path):
    c = _load(path)
    # a pod-sized mesh for the big configs: their global batches divide 8 x accumulation
    assert config_lib.validate(c, num_devices=8) == (8, 1, 1)
    assert config_lib.validate(_load(path, "runlocal"), num_devices=8) == (8, 1, 1)


def test_two_phase_recipe():
    p1, p2 = _load(f"{ROOT}/configs/bert_large.py"), _load(f"{ROOT}/configs/bert_large.py",
                                                            "phase=2")
    assert (p1.max_seq_length, p1.max_predictions) == (128, 20)
    assert (p2.max_seq_length, p2.max_predictions) == (512, 80)
    with pytest.raises(config_lib.ConfigError, match="phase=3"):
        _load(f"{ROOT}/configs/bert_large.py", "phase=3")
    with pytest.raises(config_lib.ConfigError, match="unknown"):
        _load(f"{ROOT}/configs/bert_large.py", "phaze=2")


@pytest.mark.parametrize("name", ["bert_base", "bert_large"])
@pytest.mark.parametrize("phase", [1, 2])
@pytest.mark.parametrize("devices, processes", [(8, 1), (16, 2), (64, 16), (256, 64),
                                                (1024, 256)])
def test_two_phase_presets_size_micro_batches_for_the_devices(name, phase, devices, processes):
    """accum_steps=0: each batch-parallel device runs at most micro_batch_per_device rows a
    micro-batch, as few micro-batches as that allows; the eval batch divides over the
    devices and processes; the result validates."""
    c = _load(f"{ROOT}/configs/{name}.py", f"phase={phase}")
    assert c.accum_steps == 0 and c.micro_batch_per_device > 0 and c.eval_batch_size == 0
    per_device = c.micro_batch_per_device
    config_lib.validate(c, devices, processes)
    rows = c.global_batch_size // devices  # a step's rows on each device (data axis only)
    micro = rows // c.accum_steps
    assert micro * c.accum_steps == rows and micro <= per_device
    # fewest micro-batches: one less would put more than per_device rows on a device
    assert c.accum_steps == 1 or rows / (c.accum_steps - 1) > per_device
    assert c.eval_batch_size >= config_lib.EVAL_ROWS
    assert c.eval_batch_size % devices == 0 and c.eval_batch_size % processes == 0


def test_accum_steps_set_by_hand_is_kept():
    c = _load(f"{ROOT}/configs/bert_base.py")
    c.accum_steps, c.eval_batch_size = 32, 512
    config_lib.validate(c, 256)
    assert (c.accum_steps, c.eval_batch_size) == (32, 512)


@pytest.mark.parametrize("overrides, devices, message", [
    ({"accum_steps": 0}, 8, "config.accum_steps=0 (from the device count) needs "
                            "config.micro_batch_per_device >= 1"),
    ({"accum_steps": -1}, 8, "config.accum_steps=-1; expected >= 1"),
    ({"mesh.tensor": 4, "mesh.data": 2}, 8, "heads=2 (tiny) are not divisible by config.mesh.tensor=4"),
    ({"global_batch_size": 12}, 8, "global_batch_size=12 is not divisible"),
    ({"global_batch_size": 16, "accum_steps": 4}, 8, "× config.accum_steps (4) = 32"),
    ({"mesh.data": 2}, 8, "but 8 devices are present"),
    ({"max_seq_length": 1024}, 8, "exceeds model.max_position_embeddings=512"),
    ({"optim.lr": 5.0}, 8, "config.optim.lr=5.0"),
    ({"model.hidden_dropout": 1.5}, 8, "model.hidden_dropout=1.5"),
    ({"optim.warmup_steps": 10**9}, 8, "warmup_steps"),
    ({"optim.embedding_lr": -1e-3}, 8, "config.optim.embedding_lr=-0.001"),
])
def test_invalid_configs_name_the_value(overrides, devices, message):
    c = config_lib.base_config()
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(c, devices)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=xla_flags(8))
    return subprocess.run([sys.executable, "-m", "bertjax.pretrain", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--config.optim.lrr=1"], "--config.optim.lrr: no such config key; nearest: "
                               "--config.optim.lr"),
    (["--config.lr=1"], "--config.lr: no such config key; nearest: --config.optim.lr"),
    (["--config.total_steps=abc"], "--config.total_steps=abc"),
    (["--config.mesh.tensor=4", "--config.mesh.data=2"], "not divisible by config.mesh.tensor=4"),
    (["--config=configs/nope.py"], "--config=configs/nope.py: cannot load"),
])
def test_cli_reports_bad_config_in_one_line(args, message, tmp_path):
    r = _cli(*args, f"--workdir={tmp_path}/run")
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "run")


def test_checkpoints_from_before_new_identity_keys_still_resume():
    """A saved config without rng_impl / model.scan_layers / model.remat ran with their first
    defaults: no difference is reported against today's defaults, but a real change is."""
    from bertjax import checkpoint as ckpt_lib
    from bertjax import rundir
    current = ckpt_lib.config_to_json(config_lib.base_config())
    old = json.loads(json.dumps(current))
    del old["rng_impl"], old["model"]["scan_layers"], old["model"]["remat"]
    assert ckpt_lib.config_differences(old, current) != []  # not upgraded: they differ
    old = rundir.upgrade(old)  # as every reader of a saved config gets it
    assert ckpt_lib.config_differences(old, current) == []
    changed = json.loads(json.dumps(current))
    changed["rng_impl"], changed["model"]["remat"] = "rbg", "full"
    assert sorted(ckpt_lib.config_differences(old, changed)) == [
        "model.remat: 'none' -> 'full'", "rng_impl: 'threefry2x32' -> 'rbg'"]
