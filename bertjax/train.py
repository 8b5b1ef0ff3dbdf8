"""The train state, the pure train/eval steps, and the one helper that jits them.

``train_step(state, batch) -> (state, metrics)`` is a pure function: the dropout key is
``fold_in(state.rng, state.step)``, gradient accumulation is a ``lax.scan`` over micro-batches
inside it, and it is jitted in exactly one place (``jit_train_step``) with the state's
shardings in and out and the state donated.

This module never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from bertjax import losses
from bertjax import sharding

Batch = dict[str, jax.Array]
BATCH_KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
              "masked_lm_weights", "next_sentence_labels")


@flax.struct.dataclass
class TrainState:
    """Everything a pre-training run carries from step to step (all leaves are arrays)."""

    step: jax.Array  # [] int32
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key ([2] threefry, [4] rbg); per-step keys are folded in
    bad_streak: jax.Array  # [] int32 consecutive steps skipped for a non-finite loss/gradient


@dataclasses.dataclass(frozen=True)
class StepFns:
    """The model, optimizer and shardings a run is built from."""

    model: nn.Module
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    mesh: Mesh
    rules: tuple
    state_shardings: TrainState
    accum_steps: int = 1
    nsp: bool = True
    skip_nonfinite: bool = True


def _dummy_inputs(seq_len: int, max_predictions: int) -> tuple[jax.Array, ...]:
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return ids, ids, ids, jnp.zeros((1, max_predictions), jnp.int32)


def abstract_params(model: nn.Module, seq_len: int = 8, max_predictions: int = 2) -> Any:
    """Boxed (logically partitioned) parameter shapes, computed without allocating memory."""
    def init(rng):
        return model.init({"params": rng}, *_dummy_inputs(seq_len, max_predictions))["params"]
    return jax.eval_shape(init, jax.random.PRNGKey(0))


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                       rules: Any, seed: int, seq_len: int = 8,
                       max_predictions: int = 2) -> tuple[TrainState, TrainState]:
    """Creates the train state already sharded on the mesh.

    eval_shape gives the boxed shapes, their logical names give the shardings, and the init
    function is jitted with those out_shardings, so full parameters never gather on one device.

    Returns:
      (state, state_shardings).
    """
    rules = tuple(rules)
    boxed = abstract_params(model, seq_len, max_predictions)
    logical = sharding.logical_specs(boxed)
    params_abs = nn.meta.unbox(boxed)
    params_sh = sharding.tree_shardings(params_abs, logical, mesh, rules)
    opt_abs = jax.eval_shape(tx.init, params_abs)
    opt_sh = sharding.like_params_shardings(opt_abs, jax.tree.structure(params_abs), params_sh,
                                            mesh)
    repl = sharding.replicated(mesh)
    shardings = TrainState(step=repl, params=params_sh, opt_state=opt_sh, rng=repl,
                           bad_streak=repl)

    def init(key):
        init_key, run_key = jax.random.split(key)
        variables = model.init({"params": init_key}, *_dummy_inputs(seq_len, max_predictions))
        params = nn.meta.unbox(variables["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), rng=run_key,
                          bad_streak=jnp.zeros((), jnp.int32))

    state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))
    return state, shardings


def nsp_weights(batch: Batch) -> jax.Array | None:
    """Weights of the batch's NSP predictions: [B] example_mask (eval padding rows), [B, M]
    next_sentence_weights (packed rows: used pair slots), their product, or None (all count)."""
    weights = batch.get("next_sentence_weights")
    example = batch.get("example_mask")
    if example is None:
        return weights
    return example if weights is None else weights * example[:, None]


def _forward(model: nn.Module, params: Any, batch: Batch, rng: jax.Array | None,
             nsp: bool) -> tuple[dict, dict]:
    deterministic = rng is None
    mlm_logits, nsp_logits = model.apply(
        {"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
        batch["masked_lm_positions"], batch.get("position_ids"), deterministic=deterministic,
        pack_ids=batch.get("pack_ids"),
        next_sentence_positions=batch.get("next_sentence_positions"),
        rngs=None if deterministic else {"dropout": rng})
    mlm = losses.mlm(mlm_logits, batch["masked_lm_ids"], batch["masked_lm_weights"])
    nsp_stats = losses.nsp(nsp_logits, batch["next_sentence_labels"], nsp_weights(batch))
    if not nsp:
        nsp_stats = jax.tree.map(jnp.zeros_like, nsp_stats)
    return mlm, nsp_stats


def _split_micro(batch: Batch, k: int) -> Batch:
    """[k*b, ...] -> [k, b, ...], micro-batch i = rows i, i+k, i+2k, ... so every micro-batch
    keeps the batch dimension's sharding (each device's rows split k ways locally)."""
    def one(x):
        x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
        return sharding.constrain(x, (None, "act_batch") + (None,) * (x.ndim - 2))
    return jax.tree.map(one, batch)


def train_step(state: TrainState, batch: Batch, fns: StepFns) -> tuple[TrainState, dict]:
    """One optimizer step on a global batch (pure; jit it with ``jit_train_step``).

    The loss is MLM sum / (masked tokens in the whole global batch) + NSP sum / NSP predictions
    (one per row, or one per pair of packed rows), so k accumulated micro-batches give exactly
    the gradient of the concatenated batch.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    mlm_denom = jnp.maximum(jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)), 1.0)
    weights = nsp_weights(batch)
    nsp_denom = jnp.maximum(jnp.float32(batch["input_ids"].shape[0]), 1.0)
    if weights is not None:  # packed rows hold several pairs; eval batches padding rows
        nsp_denom = jnp.maximum(jnp.sum(weights.astype(jnp.float32)), 1.0)

    def loss_fn(params, micro, key):
        mlm, nsp = _forward(fns.model, params, micro, key, fns.nsp)
        loss = mlm["loss_sum"] / mlm_denom + nsp["loss_sum"] / nsp_denom
        return loss, (mlm, nsp)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if fns.accum_steps == 1:
        (_, aux), grads = grad_fn(state.params, batch, rng)
    else:
        micro = _split_micro(batch, fns.accum_steps)

        def body(carry, xs):
            i, mb = xs
            (_, aux_i), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, carry, (g, aux_i)), None

        stats = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "count")}
        zeros = (jax.tree.map(jnp.zeros_like, state.params), (stats, dict(stats)))
        (grads, aux), _ = jax.lax.scan(body, zeros, (jnp.arange(fns.accum_steps), micro))
    mlm, nsp = aux
    loss = mlm["loss_sum"] / mlm_denom + nsp["loss_sum"] / nsp_denom
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = fns.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    bad_streak = jnp.zeros((), jnp.int32)
    if fns.skip_nonfinite:
        # A non-finite loss or gradient leaves parameters and optimizer state as they were; the
        # step counter still advances (with the data) so the next step draws new dropout.
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                         (params, opt_state), (state.params, state.opt_state))
        bad_streak = jnp.where(ok, 0, state.bad_streak + 1)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              bad_streak=bad_streak)
    metrics = {
        "loss": loss,
        "bad_streak": bad_streak,
        "mlm_loss": mlm["loss_sum"] / mlm_denom,
        "mlm_accuracy": mlm["correct"] / mlm_denom,
        "nsp_loss": nsp["loss_sum"] / nsp_denom,
        "nsp_accuracy": nsp["correct"] / nsp_denom,
        "grad_norm": grad_norm,
        "learning_rate": fns.schedule(state.step),
        "mlm_count": mlm["count"],
        "real_tokens": jnp.sum(batch["input_mask"].astype(jnp.float32)),  # padding excluded
    }
    return new_state, metrics


def eval_step(params: Any, batch: Batch, fns: StepFns) -> dict:
    """Deterministic forward pass; returns (sum, count) statistics to add up over batches."""
    mlm, nsp = _forward(fns.model, params, batch, None, fns.nsp)
    return {"mlm_loss_sum": mlm["loss_sum"], "mlm_correct": mlm["correct"],
            "mlm_count": mlm["count"], "nsp_loss_sum": nsp["loss_sum"],
            "nsp_correct": nsp["correct"], "nsp_count": nsp["count"]}


def _with_rules(fn: Callable, fns: StepFns) -> Callable:
    @functools.wraps(fn)
    def wrapped(*args):
        with sharding.activation_rules(fns.mesh, fns.rules):
            return fn(*args, fns)
    return wrapped


def batch_shardings(fns: StepFns, batch_like: dict) -> dict:
    """Shardings for a batch dict (dimension 0 split by the act_batch rule)."""
    return {k: sharding.batch_sharding(fns.mesh, fns.rules, len(v.shape), v.shape[0])
            for k, v in batch_like.items()}


def jit_train_step(fns: StepFns, batch_like: dict) -> Callable:
    """The one place the train step is jitted: in/out shardings, state donated."""
    repl = sharding.replicated(fns.mesh)
    return jax.jit(_with_rules(train_step, fns),
                   in_shardings=(fns.state_shardings, batch_shardings(fns, batch_like)),
                   out_shardings=(fns.state_shardings, repl), donate_argnums=(0,))


def jit_eval_step(fns: StepFns, batch_like: dict) -> Callable:
    repl = sharding.replicated(fns.mesh)
    return jax.jit(_with_rules(eval_step, fns),
                   in_shardings=(fns.state_shardings.params, batch_shardings(fns, batch_like)),
                   out_shardings=repl)


def build_model(config: Any) -> nn.Module:
    """The pre-training model described by ``config.model``."""
    from bertjax import config as config_lib  # local: config imports model
    from bertjax import model as model_lib
    return model_lib.BertForPreTraining(config_lib.model_config(config))


def use_rng_impl(name: str) -> None:
    """Makes ``name`` JAX's default PRNG for the keys created and folded from here on.

    Process-wide on purpose: flax's dropout draws from raw keys, whose implementation is the
    default one, so the state's key and the step must agree on it.
    """
    jax.config.update("jax_default_prng_impl", name)


def build(config: Any, mesh: Mesh) -> tuple[TrainState, StepFns]:
    """Model, optimizer and sharded train state from a validated run config."""
    from bertjax import optim

    use_rng_impl(config.get("rng_impl", "threefry2x32"))
    model = build_model(config)
    tx, schedule = optim.make_optimizer(config)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    state, shardings = create_train_state(model, tx, mesh, rules, config.seed)
    fns = StepFns(model=model, tx=tx, schedule=schedule, mesh=mesh, rules=rules,
                  state_shardings=shardings, accum_steps=config.accum_steps, nsp=config.nsp,
                  skip_nonfinite=config.max_nonfinite_steps > 0)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("model %s: %s parameters on mesh %s", config.model.preset, f"{n_params:,}",
                 dict(mesh.shape))
    return state, fns
