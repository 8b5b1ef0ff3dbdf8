"""Gradient accumulation that communicates once a step (``train.accumulate``).

Read from the compiled program on the 8-device CPU mesh: the collectives a step runs (count and
bytes per device, loops' trip counts applied, by the plan's own HLO reader) do not grow with
``accum_steps``; the per-micro-batch reduction ("micro_batch", the step before this one) is
read the same way and does grow, so the reading can tell them apart. And the numbers: k
micro-batches reduced once give the losses and parameters of one big-batch step on one device,
within the float32 bound, on every mesh split.
"""

import jax
import numpy as np
import pytest

from bertjax import config as config_lib
from bertjax import sharding
from bertjax import synthetic
from bertjax import train
from bertjax.bench import plan as plan_lib
from tolerances import chained_sums, check_f32_close
from train_steps import run_steps

# Parameters after the steps: |ours - reference| <= PARAM_RTOL * max|reference| per tensor, the
# bound tests/test_train_parity.py derives for parameters. The float32 bound holds for what the
# forward computes (the losses here); the update divides each gradient by its own scale (Adam's
# direction inside LAMB), so an element whose gradient is small beside the sums it came from
# carries their round-off relatively larger (1.3e-5 of the tensor's maximum seen, the pooler
# bias). A micro-batch lost or counted twice changes the gradient by a quarter: each update
# (lr 5e-3 of the weights' scale under LAMB) moves by ~1e-3 of it, over 10x the bound.
PARAM_RTOL = 1e-4


def _config(**overrides):
    c = config_lib.base_config()  # the tiny preset: 2 layers, 128 wide, intermediate 512
    c.model.vocab_size = 512
    c.model.hidden_dropout = c.model.attention_dropout = 0.0  # micro-batches fold their keys
    c.max_seq_length, c.max_predictions, c.global_batch_size = 32, 5, 32
    c.total_steps, c.optim.warmup_steps, c.optim.lr = 10, 1, 5e-3
    c.update_from_flattened_dict(overrides)
    return c


def _batches(c, n):
    rng = np.random.default_rng(0)
    return [synthetic.batch(rng, c.global_batch_size, c.max_seq_length, c.max_predictions,
                            c.model.vocab_size, alphabet=50) for _ in range(n)]


def _collectives(c, mesh_shape):
    """(collectives per step, their bytes per device) of the compiled train step."""
    state, fns = train.build(c, sharding.make_mesh(*mesh_shape), abstract=True)
    like = plan_lib.batch_like(c)
    shardings = train.batch_shardings(fns, like)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
             for k, v in like.items()}
    hlo = train.jit_train_step(fns, like).lower(state, batch).compile().as_text()
    rows = plan_lib.collectives(hlo)
    return sum(r["per_step"] for r in rows), sum(r["bytes"] for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (4, 2, 1)])
def test_collectives_per_step_do_not_grow_with_accum_steps(mesh_shape):
    once = {k: _collectives(_config(accum_steps=k), mesh_shape) for k in (2, 4)}
    print("reduce once a step:", once)
    assert once[4][0] <= once[2][0] and once[4][1] <= once[2][1], once
    if mesh_shape != (4, 2, 1):
        return
    # the same reading of the per-micro-batch reduction grows with k: the test can fail
    every = {k: _collectives(_config(accum_steps=k, accum_reduce="micro_batch"), mesh_shape)
             for k in (2, 4)}
    print("reduce every micro-batch:", every)
    assert every[4][0] > every[2][0] and every[4][1] > every[2][1], every
    assert once[4][1] < every[4][1] / 2


@pytest.mark.slow
def test_accumulated_steps_equal_one_big_batch_on_every_mesh():
    """3 steps of 4 micro-batches on 1 device, 4×2×1 and 2×2×2 (and the per-micro-batch
    reduction on 2×2×2) against 3 big-batch steps on one device: losses within the float32
    bound, every parameter within PARAM_RTOL of its tensor's scale."""
    batches = _batches(_config(), 2)
    batches.append(batches[0])  # seen again after two updates: its loss is lower
    one = jax.devices()[:1]
    runs = {"1 device, accum 1": (_config(), sharding.make_mesh(1, 1, 1, devices=one))}
    runs["1 device, accum 4"] = (_config(accum_steps=4), sharding.make_mesh(1, 1, 1, devices=one))
    for shape in ((4, 2, 1), (2, 2, 2)):
        runs[f"{shape}, accum 4"] = (_config(accum_steps=4), sharding.make_mesh(*shape))
    runs["(2, 2, 2), accum 4 micro_batch"] = (
        _config(accum_steps=4, accum_reduce="micro_batch"), sharding.make_mesh(2, 2, 2))
    out = {}
    for name, (c, mesh) in runs.items():
        state, fns = train.build(c, mesh)
        state, losses, _ = run_steps(fns, state, batches)
        out[name] = (jax.device_get(state.params), np.asarray(losses))
    ref_params, ref_losses = out.pop("1 device, accum 1")
    assert ref_losses[-1] < ref_losses[0]  # it trains
    sums = chained_sums(2, heads=2)
    for name, (params, losses) in out.items():
        check_f32_close(f"{name}: losses", losses, ref_losses, k=512, sums=sums)
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        for (path, x), y in zip(flat, jax.tree.leaves(ref_params)):
            where = jax.tree_util.keystr(path)
            if "['key']['bias']" in where:
                # the softmax cancels a constant added to every score of a query: the key
                # biases' gradient is zero, so they start and stay at zero up to round-off
                assert np.abs(x).max() < 1e-6 and np.abs(y).max() < 1e-6, where
                continue
            diff = float(np.max(np.abs(x - y)))
            assert diff <= PARAM_RTOL * np.abs(y).max(), (name, where, diff, np.abs(y).max())


def test_accum_reduce_is_checked_before_building():
    with pytest.raises(config_lib.ConfigError, match="config.accum_reduce='sometimes'"):
        config_lib.validate(_config(accum_reduce="sometimes"), jax.device_count())
