"""The pre-training command end to end: exact resume after SIGKILL, SIGTERM, a workdir of a
different run, init_from, restore onto other meshes, and what the user gets (PNG, TensorBoard).

The runs use a small slice of the embedded corpus (prepared once per session) so the tf.data
pipeline and its iterator checkpoints are exercised for real.
"""

import glob
import json
import re
import os
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from bertjax import checkpoint as ckpt_lib
from bertjax import config as config_lib
from bertjax import report
from bertjax import rundir
from bertjax import sharding
from bertjax import train
from bertjax.bench import flops

from run_metrics import train_losses  # noqa: E402
from envs import xla_flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--config.model.vocab_size=1000", "--config.data.max_documents=120",
        "--config.global_batch_size=16", "--config.eval_batch_size=16",
        "--config.max_seq_length=64", "--config.max_predictions=10", "--config.log_every=1",
        "--config.progress_bar=False", "--config.optim.warmup_steps=2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A BERTJAX_CACHE with the small embedded slice prepared once for this module."""
    from bertjax import inputs
    from bertjax.data import prepare as prepare_lib
    path = tmp_path_factory.mktemp("cache")
    c = config_lib.base_config()
    c.model.vocab_size, c.data.max_documents = 1000, 120
    os.environ["BERTJAX_CACHE"] = str(path)
    try:
        out = inputs.data_path(c)
    finally:
        del os.environ["BERTJAX_CACHE"]
    prepare_lib.prepare(prepare_lib.PrepareConfig(input="embedded", output=out, vocab_size=1000,
                                                  num_shards=8, max_documents=120, processes=1))
    return path


# Packed rows (up to 3 NSP pairs each; NSP on, which bert_tiny's MLM-only default is not):
# resume must be exact through the packing too.
STEPS = ["--config.total_steps=12", "--config.checkpoint_every=3", "--config.eval_every=6",
         "--config.data.pairs_per_row=3", "--config.nsp=True"]


@pytest.fixture(scope="module")
def straight(cache, tmp_path_factory):
    """An uninterrupted 12-step run."""
    workdir = str(tmp_path_factory.mktemp("runs") / "straight")
    assert _start(cache, workdir, *STEPS).wait(timeout=600) == 0
    return workdir


def _start(cache, workdir, *extra, devices=8):
    env = dict(os.environ, PYTHONPATH=ROOT, BERTJAX_CACHE=str(cache),
               XLA_FLAGS=xla_flags(devices))
    log = open(os.path.join(os.path.dirname(workdir.rstrip("/")) or ".",
                            os.path.basename(workdir.rstrip("/")) + ".log"), "a")
    return subprocess.Popen([sys.executable, "-m", "bertjax.pretrain", f"--workdir={workdir}",
                             *BASE, *extra], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)




def _wait_for_step(workdir, step, proc, timeout=300):
    path = os.path.join(workdir, "metrics.jsonl")
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, "run ended before it could be interrupted"
        if os.path.exists(path) and max(train_losses(workdir), default=0) >= step:
            return
        time.sleep(0.2)
    raise TimeoutError(step)


def _final_params(workdir):
    import orbax.checkpoint as ocp
    steps = sorted(int(p) for p in os.listdir(f"{workdir}/checkpoints") if p.isdigit())
    restored = ocp.PyTreeCheckpointer().restore(f"{workdir}/checkpoints/{steps[-1]}/state")
    return steps[-1], restored["params"]


def _log(workdir):
    with open(workdir.rstrip("/") + ".log") as f:
        return f.read()


@pytest.mark.slow
def test_exact_resume_after_sigkill(cache, straight, tmp_path):
    steps = STEPS
    broken = str(tmp_path / "broken")
    p = _start(cache, broken, *steps)
    _wait_for_step(broken, 8, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert _start(cache, broken, *steps).wait(timeout=600) == 0
    assert "resuming from checkpoint step" in _log(broken)
    a, b = train_losses(straight), train_losses(broken)
    assert sorted(a) == list(range(1, 13)) and sorted(b) == list(range(1, 13))
    assert a == b  # bitwise: JSON floats round-trip exactly
    sa, pa = _final_params(straight)
    sb, pb = _final_params(broken)
    assert sa == sb == 12
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    # what the user gets: curves and TensorBoard events holding the run's loss
    assert os.path.getsize(os.path.join(straight, "curves.png")) > 10_000
    events = glob.glob(os.path.join(straight, "tb", "train", "events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.dirname(events[0]), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"loss", "learning_rate", "tokens_per_s", "data_wait_share",
            "model_flops_per_s_per_device"} <= set(acc.Tags()["scalars"])
    assert "mfu" not in acc.Tags()["scalars"]  # no datasheet peak for a CPU: nothing to plot
    loss = acc.Scalars("loss")  # TensorBoard's scalar dashboard reads these
    assert [e.step for e in loss] == list(range(1, 13))
    jsonl = {r["step"]: r["loss"] for r in report.read_metrics(straight) if r["split"] == "train"}
    assert [e.value for e in loss] == pytest.approx([jsonl[e.step] for e in loss], rel=1e-6)
    assert all(e.value > 0 for e in acc.Scalars("tokens_per_s"))
    assert "most-frequent-token acc." in _log(straight)
    padding = re.search(r"of them not padding \(([0-9.]+)% padding\)", _log(straight))
    assert padding and float(padding.group(1)) < 5.0, _log(straight)[-1500:]
    # model FLOP/s of the real tokens only: at every step, FLOP/s per device over tokens/s
    # (the same seconds) is the FLOPs of a token times the real share of the steps so far
    rows = [r for r in report.read_metrics(straight) if r["split"] == "train"]
    per_token = flops.flops_per_token(ml_collections.ConfigDict(rundir.saved_config(straight)))
    real, positions = 0.0, 16 * 64
    for r in rows:
        real += r["real_tokens"]
        assert "mfu" in r and r["mfu"] is None  # null in metrics.jsonl on a CPU
        assert r["model_flops_per_s_per_device"] > 0
        assert r["model_flops_per_s_per_device"] / r["tokens_per_s"] == pytest.approx(
            per_token * real / (positions * r["step"]) / 8, rel=1e-9)
    assert real < positions * len(rows)  # some padding, so the check can tell real from all
    assert re.search(r"model FLOP/s per device +[0-9.]+ [kMGT]?FLOP/s \(real tokens\), MFU n/a: "
                     r"no datasheet peak for cpu\n", _log(straight)), _log(straight)[-1500:]


@pytest.mark.slow
def test_sigterm_saves_and_next_start_resumes(cache, tmp_path):
    workdir = str(tmp_path / "term")
    steps = ["--config.total_steps=40", "--config.checkpoint_every=100",
             "--config.eval_every=100", "--config.data.pairs_per_row=1"]  # one pair per row
    p = _start(cache, workdir, *steps)
    _wait_for_step(workdir, 3, p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 0
    saved, _ = _final_params(workdir)
    assert 3 <= saved < 40  # saved at the step it was on, not at a cadence
    assert _start(cache, workdir, *steps, "--config.total_steps=" + str(saved + 2)).wait(
        timeout=600) == 0
    assert f"resuming from checkpoint step {saved}" in _log(workdir)
    assert _final_params(workdir)[0] == saved + 2


def test_workdir_of_another_run_is_refused(cache, straight):
    before = os.path.getmtime(os.path.join(straight, "metrics.jsonl"))
    r = _start(cache, straight, *STEPS, "--config.optim.lr=0.01").wait(timeout=300)
    assert r == 2
    err = [l for l in _log(straight).splitlines() if l.startswith("error:")]
    assert err and re.search(r"holds a run with a different config \(optim.lr: [0-9.e-]+ -> "
                             r"0.01\)", err[-1]), err
    assert os.path.getmtime(os.path.join(straight, "metrics.jsonl")) == before


def test_config_differences_ignore_mesh_and_length_of_run():
    a = ckpt_lib.config_to_json(config_lib.base_config())
    c = config_lib.base_config()
    c.mesh.data, c.total_steps, c.accum_steps = 2, 10**6, 4
    assert ckpt_lib.config_differences(a, ckpt_lib.config_to_json(c)) == []
    c.model.hidden_dropout = 0.0
    assert ckpt_lib.config_differences(a, ckpt_lib.config_to_json(c)) == [
        "model.hidden_dropout: 0.1 -> 0.0"]


def _tiny_config():
    c = config_lib.base_config()
    c.model.vocab_size = 512
    c.max_seq_length, c.max_predictions, c.global_batch_size = 32, 5, 16
    c.optim.warmup_steps = 1
    c.data.source = "synthetic"
    return c


@pytest.mark.slow
def test_restore_onto_other_meshes(tmp_path):
    """Saved on 2x2x2, restored on data=8, on fsdp=4 x tensor=2 and on 4 devices."""
    from bertjax import inputs, multihost
    c = _tiny_config()
    state, fns = train.build(c, sharding.make_mesh(2, 2, 2))
    it = inputs.SyntheticIterator(c, 16)
    step = train.jit_train_step(fns, next(inputs.SyntheticIterator(c, 16)))
    state, _ = step(state, multihost.global_batch(next(it), train.batch_shardings(fns, next(
        inputs.SyntheticIterator(c, 16)))))
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), every=1, async_save=False)
    ck.save(1, state, c, it, force=True)
    ck.wait()
    saved = jax.device_get(state.params)
    for mesh in (sharding.make_mesh(8, 1, 1), sharding.make_mesh(1, 4, 2),
                 sharding.make_mesh(2, 1, 2, devices=jax.devices()[:4])):
        fresh, f2 = train.build(c, mesh)
        restored, at = ck.restore(ckpt_lib.abstract_like(fresh, f2.state_shardings))
        assert at == 1 and int(restored.step) == 1
        for x, y in zip(jax.tree.leaves(saved), jax.tree.leaves(restored.params)):
            assert np.array_equal(x, np.asarray(y))
        kernel = restored.params["bert"]["layer_0"]["intermediate"]["kernel"]
        assert kernel.sharding.mesh.shape == mesh.shape  # the new mesh, not the saved one
        if len(mesh.devices.flat) == 8:
            continue  # training on after a reshard is shown once, on 4 devices
        b = next(inputs.SyntheticIterator(c, 16))
        s2 = train.jit_train_step(f2, b)
        restored, m = s2(restored, multihost.global_batch(b, train.batch_shardings(f2, b)))
        assert np.isfinite(float(m["loss"])) and int(restored.step) == 2
    ck.close()


def test_init_from_takes_parameters_with_a_fresh_optimizer(straight, monkeypatch):
    phase1 = straight
    from bertjax import loop
    c = _tiny_config()
    c.model.vocab_size = 1000
    # the same model as the run's (its decoder tied or not, as configs/bert_tiny.py says)
    c.model.tie_word_embeddings = rundir.saved_config(phase1)["model"][
        "tie_word_embeddings"]
    state, fns = train.build(c, sharding.make_mesh(8, 1, 1))
    # given as the README's phase-2 command gives it: relative to the current directory
    monkeypatch.chdir(os.path.dirname(phase1))
    state = loop.init_params_from(os.path.basename(phase1), state, fns.state_shardings)
    _, p1 = _final_params(phase1)
    assert jax.tree.structure(p1) == jax.tree.structure(state.params)
    for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(state.params)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert int(state.step) == 0
    assert all(float(np.abs(np.asarray(x)).max()) == 0.0
               for x in jax.tree.leaves(state.opt_state[1].mu))


@pytest.mark.slow
def test_consecutive_nonfinite_steps_stop_the_run_with_checkpoint_intact(tmp_path):
    from bertjax import loop
    c = _tiny_config()
    c.total_steps, c.checkpoint_every, c.eval_every = 20, 2, 100
    c.data.inject_nan_from, c.max_nonfinite_steps, c.progress_bar = 4, 3, False
    c.async_checkpoints, c.log_every = False, 1
    with pytest.raises(train.NonFiniteError, match="3 steps in a row up to step 6"):
        loop.run(c, str(tmp_path / "nan"))
    ck = ckpt_lib.Checkpointer(str(tmp_path / "nan" / "checkpoints"), every=2)
    latest = ck.latest_step()
    ck.close()
    # steps 4.. were skipped: checkpoints after step 3 hold the parameters of step 3
    assert latest is not None and latest <= 6
    with open(tmp_path / "nan" / "metrics.jsonl") as f:
        rows = [json.loads(l) for l in f]
    assert [r["bad_streak"] for r in rows if r["split"] == "train"][:6] == [0, 0, 0, 1, 2, 3]


@pytest.mark.slow
def test_init_from_another_shape_names_the_first_mismatching_tensor(straight):
    from bertjax import loop
    c = _tiny_config()  # vocab 512, the run has 1000
    state, fns = train.build(c, sharding.make_mesh(8, 1, 1))
    with pytest.raises(config_lib.ConfigError,
                       match=r"parameter \['bert'\]\['embeddings'\]\['word_embeddings'\]"
                             r"\['embedding'\] is \(1000, 128\) there but \(512, 128\)"):
        loop.init_params_from(straight, state, fns.state_shardings)


def test_custom_model_sizes_from_config():
    c = config_lib.base_config()
    c.model.preset = "custom"
    c.model.num_layers, c.model.hidden_size, c.model.num_heads = 6, 384, 12
    with pytest.raises(config_lib.ConfigError, match="needs model.num_layers"):
        config_lib.model_config(c)
    c.model.intermediate_size = 1536
    m = config_lib.model_config(c)
    assert (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size) == (6, 384, 12, 1536)


def test_a_damaged_latest_checkpoint_is_skipped_with_a_message(tmp_path, capsys):
    c = _tiny_config()
    mesh = sharding.make_mesh(8, 1, 1)
    state, fns = train.build(c, mesh)
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), every=1, async_save=False)
    ck.save(1, state, c, force=True)
    ck.save(2, state.replace(step=state.step + 5), c, force=True)
    ck.close()
    # truncate every data file of step 2's state (a disk that lost the end of the writes)
    damaged = 0
    for root, _, files in os.walk(tmp_path / "ck" / "2" / "state"):
        for name in files:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 64 and "metadata" not in name:
                with open(path, "r+b") as f:
                    f.truncate(16)
                damaged += 1
    assert damaged
    ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), every=1)
    restored, step = ck.restore(ckpt_lib.abstract_like(state, fns.state_shardings))
    ck.close()
    assert step == 1 and int(restored.step) == 0
    out = capsys.readouterr().out
    assert "checkpoint step 2" in out and "unreadable" in out and "trying step 1" in out


@pytest.mark.parametrize("extra, workdir, message", [
    (["--config.model.vocab_size=512", "--config.data.source=prepared",
      "--config.data.path={cache}/embedded-v1000-docs120"], "run", "pieces but the model"),
    ([], "/proc/version/run", "is not writable"),
    (["--config.init_from=/nonexistent/run"], "run", "config.init_from='/nonexistent/run' does "
                                                      "not exist"),
    (["--config.data.source=prepared", "--config.data.path=/nonexistent"], "run",
     "holds no complete preparation"),
    (["--config.data.mask_rate=1.5"], "run", "config.data.mask_rate=1.5"),
    (["--config.data.pairs_per_row=3", "--config.nsp=False"], "run",
     "config.data.pairs_per_row=3 packs NSP pairs"),
])
def test_bad_inputs_to_the_command_are_one_line(cache, tmp_path, extra, workdir, message):
    wd = workdir if workdir.startswith("/") else str(tmp_path / workdir)
    env = dict(os.environ, PYTHONPATH=ROOT, BERTJAX_CACHE=str(cache),
               XLA_FLAGS=xla_flags(8))
    extra = [e.replace("{cache}", str(cache)) for e in extra]
    r = subprocess.run([sys.executable, "-m", "bertjax.pretrain", f"--workdir={wd}", *BASE,
                        "--config.total_steps=4", *extra], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and message in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not os.path.exists(os.path.join(wd, "checkpoints", "4"))


@pytest.mark.slow
def test_finished_run_reports_its_last_metrics_without_compiling(tmp_path, monkeypatch, capsys):
    from bertjax import loop
    c = _tiny_config()
    c.total_steps, c.eval_every, c.checkpoint_every, c.log_every = 4, 2, 2, 1
    c.progress_bar, c.async_checkpoints = False, False
    workdir = str(tmp_path / "run")
    first = loop.run(c, workdir)
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    printed = capsys.readouterr().out

    def no_compile(*args, **kwargs):
        raise AssertionError("a finished run compiled its train step")
    monkeypatch.setattr(train, "jit_train_step", no_compile)
    again = loop.run(c, workdir)
    out = capsys.readouterr().out
    assert again["step"] == 4 and again["eval"] == first["eval"] and again["eval"]
    assert again["train"]["loss"] == first["train"]["loss"]
    assert "4 / 4 (finished earlier" in out
    assert f"{first['eval']['mlm_accuracy']:.4f}" in out
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == log  # nothing appended
    # model FLOP/s and MFU: the run's own, and again from its last logged step
    assert first["model_flops_per_s_per_device"] > 0 and first["mfu"] is None
    assert "MFU n/a: no datasheet peak for cpu" in printed
    assert again["model_flops_per_s_per_device"] == first["train"][
        "model_flops_per_s_per_device"] > 0 and again["mfu"] is None
    assert re.search(r"model FLOP/s per device +[0-9.]+ [kMGT]?FLOP/s \(real tokens\), MFU n/a: "
                     r"no datasheet peak for the run's devices", out), out
