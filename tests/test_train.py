"""The train step: sharded == unsharded, accumulation == big batch, LAMB exclusions, one compile."""

import jax
import numpy as np
import pytest

from bertjax import config as config_lib
from bertjax import multihost
from bertjax import optim
from bertjax import sharding
from bertjax import synthetic
from bertjax import train
from train_steps import run_steps


def _config(**overrides):
    c = config_lib.base_config()
    c.model.vocab_size = 512
    c.max_seq_length = 32
    c.max_predictions = 5
    c.global_batch_size = 16
    c.total_steps = 10
    c.optim.warmup_steps = 2
    c.update_from_flattened_dict(overrides)
    return c


def _batches(c, n, seed=0):
    rng = np.random.default_rng(seed)
    return [synthetic.batch(rng, c.global_batch_size, c.max_seq_length, c.max_predictions,
                            c.model.vocab_size, alphabet=50) for _ in range(n)]


def _run(c, mesh, batches):
    state, fns = train.build(c, mesh)
    return run_steps(fns, state, batches)


def _close(a, b, rtol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.slow
def test_sharded_equals_unsharded():
    """5 steps (dropout on) on a 2x2x2 mesh and on one device: same losses and parameters."""
    c = _config()
    batches = _batches(c, 5)
    s8, l8, _ = _run(c, sharding.make_mesh(2, 2, 2), batches)
    s1, l1, _ = _run(c, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]), batches)
    assert l8[-1] < l8[0]  # it trains
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    _close(s8.params, s1.params, 1e-5)


@pytest.mark.slow
def test_accumulation_equals_one_big_batch():
    """k micro-batches give the update of one step on the concatenated batch (dropout off:
    micro-batches fold their own dropout keys)."""
    c1 = _config(**{"model.hidden_dropout": 0.0, "model.attention_dropout": 0.0})
    c4 = _config(**{"model.hidden_dropout": 0.0, "model.attention_dropout": 0.0,
                    "accum_steps": 4})
    batches = _batches(c1, 3)
    mesh = sharding.make_mesh(4, 2, 1)
    s1, l1, _ = _run(c1, mesh, batches)
    s4, l4, _ = _run(c4, mesh, batches)
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    _close(s4.params, s1.params, 1e-5)


def test_step_compiles_once_over_many_steps():
    c = _config()
    _, _, step = _run(c, sharding.make_mesh(8, 1, 1), _batches(c, 6))
    assert step._cache_size() == 1


def _adam_direction(g, b1=0.9, b2=0.999, eps=1e-6):
    m = (1 - b1) * g / (1 - b1)  # one step: bias-corrected moments are g and g^2
    v = (1 - b2) * g * g / (1 - b2)
    return m / (np.sqrt(v) + eps)


def test_lamb_excludes_biases_and_layernorm_from_decay_and_trust_ratio():
    c = _config(**{"optim.clip_norm": 0.0, "optim.warmup_steps": 0, "optim.lr": 0.1,
                   "optim.weight_decay": 0.5})
    tx, _ = optim.make_optimizer(c)
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                        "bias": rng.normal(size=(3,)).astype(np.float32)},
              "output_norm": {"scale": rng.normal(size=(3,)).astype(np.float32)}}
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    lr = 0.1  # step 0 of a schedule without warmup
    for path in [("dense", "bias"), ("output_norm", "scale")]:
        got = np.asarray(updates[path[0]][path[1]])
        want = -lr * _adam_direction(grads[path[0]][path[1]])  # no decay, trust ratio 1
        np.testing.assert_allclose(got, want, rtol=1e-5)
    w, g = params["dense"]["kernel"], grads["dense"]["kernel"]
    u = _adam_direction(g) + 0.5 * w
    want = -lr * np.linalg.norm(w) / np.linalg.norm(u) * u
    np.testing.assert_allclose(np.asarray(updates["dense"]["kernel"]), want, rtol=1e-4)  # f32
    assert optim.decay_mask(params) == {"dense": {"kernel": True, "bias": False},
                                        "output_norm": {"scale": False}}


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_embedding_lr_gives_the_tables_their_own_rate_outside_the_trust_ratio(name):
    c = _config(**{"optim.clip_norm": 0.0, "optim.warmup_steps": 0, "optim.lr": 0.1,
                   "optim.weight_decay": 0.5, "optim.name": name, "optim.embedding_lr": 0.004})
    tx, _ = optim.make_optimizer(c)
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    params = {"embeddings": {"word_embeddings": {"embedding": f32(6, 3)},
                             "position_embeddings": {"embedding": f32(5, 3)},
                             "layer_norm": {"scale": f32(3)}},
              "dense": {"kernel": f32(4, 3)}}
    grads = jax.tree.map(lambda p: f32(*p.shape), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for table in ("word_embeddings", "position_embeddings"):
        w, g = params["embeddings"][table]["embedding"], grads["embeddings"][table]["embedding"]
        want = -0.004 * (_adam_direction(g) + 0.5 * w)  # decayed, no trust ratio, own rate
        np.testing.assert_allclose(np.asarray(updates["embeddings"][table]["embedding"]), want,
                                   rtol=1e-4)
    ln = -0.1 * _adam_direction(grads["embeddings"]["layer_norm"]["scale"])  # untouched
    np.testing.assert_allclose(np.asarray(updates["embeddings"]["layer_norm"]["scale"]), ln,
                               rtol=1e-5)
    w, g = params["dense"]["kernel"], grads["dense"]["kernel"]
    u = _adam_direction(g) + 0.5 * w
    ratio = np.linalg.norm(w) / np.linalg.norm(u) if name == "lamb" else 1.0
    np.testing.assert_allclose(np.asarray(updates["dense"]["kernel"]), -0.1 * ratio * u,
                               rtol=1e-4, atol=1e-6 * np.abs(u).max())  # f32; one entry near 0


def test_schedule_warms_up_then_decays_polynomially():
    sched = optim.learning_rate_schedule(1.0, total_steps=110, warmup_steps=10, power=1.0)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0)
    assert float(sched(60)) == pytest.approx(0.5)
    assert float(sched(110)) == pytest.approx(0.0)
    half = optim.learning_rate_schedule(1.0, total_steps=110, warmup_steps=10, power=0.5)
    assert float(half(60)) == pytest.approx(0.5 ** 0.5)


@pytest.mark.slow
def test_loss_only_counts_masked_positions():
    """Changing the label of a zero-weight prediction slot leaves loss and gradient alone."""
    c = _config(**{"model.hidden_dropout": 0.0, "model.attention_dropout": 0.0})
    mesh = sharding.make_mesh(8, 1, 1)
    b = _batches(c, 1)[0]
    b2 = {k: v.copy() for k, v in b.items()}
    empty = b2["masked_lm_weights"] == 0
    assert empty.any()
    b2["masked_lm_ids"][empty] = 7
    b2["masked_lm_positions"][empty] = 3
    _, l1, _ = _run(c, mesh, [b])
    _, l2, _ = _run(c, mesh, [b2])
    assert l1 == l2


def test_nonfinite_step_is_skipped_and_counted():
    # no warmup: the optimizer's own schedule counts only the updates that were applied
    c = _config(**{"model.hidden_dropout": 0.0, "model.attention_dropout": 0.0,
                   "optim.warmup_steps": 0})
    mesh = sharding.make_mesh(8, 1, 1)
    state, fns = train.build(c, mesh)
    good, bad = _batches(c, 2)
    bad["masked_lm_weights"] = np.full_like(bad["masked_lm_weights"], np.nan)
    step = train.jit_train_step(fns, good)
    sh = train.batch_shardings(fns, good)
    before = jax.device_get(state.params)
    state, m = step(state, multihost.global_batch(bad, sh))
    assert not np.isfinite(float(m["loss"])) and int(m["bad_streak"]) == 1
    assert int(state.step) == 1
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        assert np.array_equal(x, np.asarray(y))
    state, m = step(state, multihost.global_batch(bad, sh))
    assert int(state.bad_streak) == 2
    state, m = step(state, multihost.global_batch(good, sh))
    assert np.isfinite(float(m["loss"])) and int(state.bad_streak) == 0
    assert not np.array_equal(jax.tree.leaves(before)[0], np.asarray(jax.tree.leaves(
        state.params)[0]))


@pytest.mark.slow
def test_rbg_dropout_draws_other_bits_than_threefry():
    """config.rng_impl=rbg: a [4]-word key in the state, a finite training run, and dropout
    masks that are other bits than threefry's (so the knob takes effect)."""
    batches = _batches(_config(), 2)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    try:
        s_r, rbg, _ = _run(_config(rng_impl="rbg"), mesh, batches)
    finally:
        train.use_rng_impl("threefry2x32")  # process-wide: leave the default for other tests
    s_t, threefry, _ = _run(_config(), mesh, batches)
    assert s_r.rng.shape == (4,) and s_t.rng.shape == (2,)
    assert all(np.isfinite(rbg))
    assert rbg[0] != threefry[0]  # same weights, same batch: only the dropout bits differ


def test_bad_rng_impl_is_one_line_before_building():
    with pytest.raises(config_lib.ConfigError, match="config.rng_impl='philox'"):
        config_lib.validate(_config(rng_impl="philox"), jax.device_count())


@pytest.mark.slow
def test_scanned_layers_train_like_unrolled_ones_on_a_sharded_mesh():
    """model.scan_layers: parameters born stacked on a replicated "layers" axis; from the same
    initial weights (stack_layers), 3 steps on 2x2x2 with dropout off give the losses and
    parameters of the per-layer model, compared through unstack_layers."""
    from bertjax import model as model_lib
    kw = {"model.hidden_dropout": 0.0, "model.attention_dropout": 0.0}
    c_u, c_s = _config(**kw), _config(**kw, **{"model.scan_layers": True})
    batches = _batches(c_u, 3)
    mesh = sharding.make_mesh(2, 2, 2)
    state_u, fns_u = train.build(c_u, mesh)
    state_s, fns_s = train.build(c_s, mesh)
    # Inside jit: new buffers, so donating the unrolled state later leaves these intact.
    params = jax.jit(lambda p: dict(p, bert=model_lib.stack_layers(p["bert"], 2)),
                     out_shardings=fns_s.state_shardings.params)(state_u.params)
    opt = jax.jit(fns_s.tx.init, out_shardings=fns_s.state_shardings.opt_state)(params)
    state_s = state_s.replace(params=params, opt_state=opt)
    query = state_s.params["bert"]["layers"]["stack"]["layer"]["attention"]["query"]["kernel"]
    assert query.shape == (2, 128, 2, 64)
    assert query.sharding.spec[0] is None  # the layer axis itself is never split
    losses = {}
    for name, state, fns in (("unrolled", state_u, fns_u), ("scanned", state_s, fns_s)):
        state, losses[name], _ = run_steps(fns, state, batches)
        if name == "unrolled":
            final_u = state.params
        else:
            final_s = dict(state.params, bert=model_lib.unstack_layers(state.params["bert"]))
    np.testing.assert_allclose(losses["scanned"], losses["unrolled"], rtol=1e-5)
    # The scanned backward sums in another order: parameters (~0.02) agree to ~2e-6.
    for x, y in zip(jax.tree.leaves(final_s), jax.tree.leaves(final_u)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_gradients_of_the_plain_step(policy):
    """model.remat recomputes activations in the backward pass: same losses and parameters
    after 2 steps with dropout on (the recomputed masks are the same bits)."""
    batches = _batches(_config(), 2)
    mesh = sharding.make_mesh(8, 1, 1)
    s_p, l_p, _ = _run(_config(), mesh, batches)
    s_r, l_r, _ = _run(_config(**{"model.remat": policy}), mesh, batches)
    np.testing.assert_allclose(l_r, l_p, rtol=1e-5)
    _close(s_r.params, s_p.params, 1e-5)
