"""Checkpoints of scan_layers runs and of per-layer runs are read by models of either layout.

Two checkpoints of freshly initialised tiny models (step 2, as a run writes them), one with the
encoder scanned, one per layer. Their parameters, read raw from the checkpoints, are the
reference: init_from (whole model, on a 2x2x2
mesh), the fine-tuning encoder restore, and the HF export must give exactly those numbers in
every combination of layouts.
"""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bertjax import checkpoint as ckpt_lib
from bertjax import config as config_lib
from bertjax.interop import mapping as convert
from bertjax.interop import checkpoints as convert_io
from bertjax import loop
from bertjax import model as model_lib
from bertjax import sharding
from bertjax import train
from bertjax.finetuning import encoder
from bertjax.finetuning.defaults import finetune_config


def _config(scan: bool):
    c = config_lib.base_config()
    c.model.vocab_size, c.model.scan_layers = 512, scan
    c.max_seq_length, c.max_predictions, c.global_batch_size = 32, 5, 16
    c.optim.warmup_steps, c.data.source = 1, "synthetic"
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{scanned: (workdir, its parameters read raw, encoder per layer)}."""
    out = {}
    for scan in (True, False):
        workdir = str(tmp_path_factory.mktemp("layouts") / f"scan{scan}")
        c = _config(scan)
        state, _ = train.build(c, sharding.make_mesh(8, 1, 1))
        ckpt = ckpt_lib.Checkpointer(f"{workdir}/checkpoints", every=1, async_save=False)
        ckpt.save(2, state, c, force=True)
        ckpt.close()
        raw = ocp.PyTreeCheckpointer().restore(f"{workdir}/checkpoints/2/state")["params"]
        raw = jax.tree.map(np.asarray, raw)
        if scan:
            assert "layers" in raw["bert"] and "layer_0" not in raw["bert"]
            stacked = raw["bert"]["layers"]["stack"]["layer"]
            raw["bert"] = {k: v for k, v in raw["bert"].items() if k != "layers"}
            for i in range(2):
                raw["bert"][f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
        out[scan] = (workdir, raw)
    return out


def _per_layer(params: dict) -> dict:
    params = jax.tree.map(np.asarray, jax.device_get(params))
    if "layers" in params["bert"]:
        params["bert"] = jax.tree.map(np.asarray, model_lib.unstack_layers(params["bert"]))
    return params


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
@pytest.mark.parametrize("saved_scanned", [True, False])
@pytest.mark.parametrize("scan_here", [True, False])
def test_init_from_and_encoder_restore_read_either_layout(runs, saved_scanned, scan_here):
    workdir, raw = runs[saved_scanned]
    state, fns = train.build(_config(scan_here), sharding.make_mesh(2, 2, 2))
    assert ("layers" in state.params["bert"]) == scan_here
    _equal(_per_layer(loop.init_params_from(workdir, state, fns.state_shardings).params), raw)
    restored = train.restore_params(workdir, state.params, fns.state_shardings.params, subtree="bert")
    assert ("layers" in restored["bert"]) == scan_here
    _equal(_per_layer(restored)["bert"], raw["bert"])


def test_hf_export_of_a_scanned_run(runs, tmp_path):
    workdir, raw = runs[True]
    cfg, step, _ = convert_io.export_hf(workdir, str(tmp_path / "hf"))
    assert step == 2 and not cfg.scan_layers
    _, tensors = convert.load_hf_checkpoint(str(tmp_path / "hf"))
    expected = convert.params_to_hf(raw, cfg)
    assert set(tensors) >= set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)


@pytest.mark.slow
def test_fine_tuning_init_from_one_step_of_a_run(tmp_path):
    """init_from=WORKDIR/checkpoints/N: that step's encoder and config, not the newest's."""
    workdir = str(tmp_path / "run")
    c = _config(False)
    ckpt = ckpt_lib.Checkpointer(f"{workdir}/checkpoints", every=1, async_save=False)
    for step, seed in ((2, 0), (4, 1)):
        c.seed = seed
        state, _ = train.build(c, sharding.make_mesh(8, 1, 1))
        ckpt.save(step, state, c, force=True)
    ckpt.close()
    step2 = f"{workdir}/checkpoints/2"
    raw = jax.tree.map(np.asarray, ocp.PyTreeCheckpointer().restore(f"{step2}/state")["params"])
    ft = finetune_config("custom")
    ft.init_from = step2
    assert encoder.model_config_for(ft).vocab_size == 512  # the run's sizes, read from step 2
    state, fns = train.build(_config(False), sharding.make_mesh(2, 2, 2))
    restored = train.restore_params(step2, state.params, fns.state_shardings.params, subtree="bert")
    _equal(_per_layer(restored)["bert"], raw["bert"])
    newest = train.restore_params(workdir, state.params, fns.state_shardings.params, subtree="bert")
    assert not np.array_equal(newest["bert"]["pooler"]["kernel"], raw["bert"]["pooler"]["kernel"])
