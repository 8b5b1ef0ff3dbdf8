"""The state-and-step kit every run kind uses: pre-training, fine-tuning and embedding.

  * state     ``create_train_state``: any bertjax model and its dummy inputs -> a TrainState
              born sharded on the mesh (eval_shape -> logical specs -> jit with out_shardings);
              ``param_shardings`` gives inference-only callers the parameters' shapes and
              shardings without a state; nothing else builds a TrainState;
  * restore   ``restore_params``: parameters of any run directory (bertjax.rundir resolves a
              workdir, one of its steps, or an import), read into any mesh and layer layout;
  * steps     pre-training's pure ``train_step(state, batch) -> (state, metrics)`` (dropout key
              ``fold_in(state.rng, state.step)``, gradient accumulation a ``lax.scan`` over
              micro-batches inside it) and ``eval_step``; every train step ends in the guarded
              ``apply_gradients`` (a non-finite step changes nothing; ``check_bad_streak``
              stops a run of them with NonFiniteError);
  * jit       ``jit_train_step`` / ``jit_eval_step``: the only places a step is jitted, with
              the logical rules active, in/out shardings and the state donated.

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
    """What a jitted step is built from: the model and the mesh with its logical rules; for a
    train step also the optimizer, its schedule and the state's shardings. An inference-only
    caller (embedding) gives ``param_shardings`` and no optimizer."""

    model: nn.Module
    mesh: Mesh
    rules: tuple
    tx: optax.GradientTransformation | None = None
    schedule: optax.Schedule | None = None
    state_shardings: TrainState | None = None
    param_shardings: Any = None  # only without state_shardings
    accum_steps: int = 1
    accum_reduce: str = "step"  # see ``accumulate``
    nsp: bool = True
    skip_nonfinite: bool = True

    @property
    def params_shardings(self) -> Any:
        """The parameters' shardings (of the state when there is one)."""
        if self.state_shardings is not None:
            return self.state_shardings.params
        return self.param_shardings


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient (pre-training and
    fine-tuning alike); the message names the steps and what to change."""


def check_bad_streak(bad_streak: float, limit: int, step: int, kept: str) -> None:
    """Raises NonFiniteError once ``limit`` (at least 1) consecutive steps up to ``step`` were
    skipped for a non-finite loss or gradient; ``kept`` says what the run leaves behind."""
    if bad_streak >= max(limit, 1):
        raise NonFiniteError(
            f"{int(bad_streak)} steps in a row up to step {step} had a non-finite loss or "
            f"gradient (each was skipped); {kept}; lower config.optim.lr, check the data, or "
            "use model.dtype=float32")


def pretraining_inputs(seq_len: int = 8, max_predictions: int = 2) -> tuple[jax.Array, ...]:
    """Dummy inputs that trace BertForPreTraining (ids, mask, segments, masked positions)."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return ids, ids, ids, jnp.zeros((1, max_predictions), jnp.int32)


def task_inputs(seq_len: int) -> tuple[jax.Array, ...]:
    """Dummy inputs that trace an encoder with a task head (ids, mask, segments)."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return ids, ids, ids


def abstract_params(model: nn.Module, inputs: tuple | None = None) -> Any:
    """Boxed (logically partitioned) parameter shapes, computed without allocating memory.

    Args:
      model: any bertjax model.
      inputs: dummy inputs for ``model.init`` (default: ``pretraining_inputs()``).
    """
    inputs = pretraining_inputs() if inputs is None else inputs

    def init(rng):
        return model.init({"params": rng}, *inputs)["params"]
    return jax.eval_shape(init, jax.random.PRNGKey(0))


def param_shardings(model: nn.Module, inputs: tuple, mesh: Mesh, rules: Any) -> tuple[Any, Any]:
    """(parameter shapes, their shardings on ``mesh``) from the logical axis names, without
    allocating anything: what a restore or a jitted step needs."""
    boxed = abstract_params(model, inputs)
    abstract = nn.meta.unbox(boxed)
    return abstract, sharding.tree_shardings(abstract, sharding.logical_specs(boxed), mesh,
                                             tuple(rules))


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                       rules: Any, seed: int, inputs: tuple | None = None,
                       abstract: bool = False) -> tuple[TrainState, TrainState]:
    """Creates the train state already sharded on the mesh (every run kind comes through here).

    eval_shape gives the boxed shapes, their logical names give the shardings, and the init
    function is jitted with those out_shardings, so full parameters never gather on one device.

    Args:
      inputs: dummy inputs for ``model.init`` (default: ``pretraining_inputs()``).
      abstract: the state as ShapeDtypeStructs carrying the same shardings, nothing allocated
        (bertjax.bench.plan compiles for devices this process cannot reach).

    Returns:
      (state, state_shardings).
    """
    inputs = pretraining_inputs() if inputs is None else inputs
    params_abs, params_sh = param_shardings(model, inputs, mesh, rules)
    opt_abs = jax.eval_shape(tx.init, params_abs)
    opt_sh = sharding.like_params_shardings(opt_abs, jax.tree.structure(params_abs), params_sh,
                                            mesh)
    repl = sharding.replicated(mesh)
    shardings = TrainState(step=repl, params=params_sh, opt_state=opt_sh, rng=repl,
                           bad_streak=repl)

    def init(key):
        init_key, run_key = jax.random.split(key)
        params = nn.meta.unbox(model.init({"params": init_key}, *inputs)["params"])
        return state_from_params(params, tx, run_key)

    init = jax.jit(init, out_shardings=shardings)
    key = jax.random.PRNGKey(seed)
    state = jax.eval_shape(init, key) if abstract else init(key)
    return state, shardings


def state_from_params(params: Any, tx: optax.GradientTransformation,
                      rng: jax.Array) -> TrainState:
    """A state at step 0 around ``params``: a fresh optimizer state and the run's key."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=rng, bad_streak=jnp.zeros((), jnp.int32))


def restore_params(path: str, params: Any, shardings: Any, what: str = "config.init_from",
                   subtree: str | None = None) -> Any:
    """Parameters of another run, read straight into ``shardings`` on the current mesh.

    Args:
      path: a workdir (its newest complete step), one step of it, or an import (bertjax.rundir).
      params: the parameters to fill (arrays or shapes: only names and shapes are used).
      shardings: their shardings.
      what: the flag or key that named ``path``, for messages.
      subtree: read only this top-level entry (e.g. "bert": the encoder, not the heads);
        the other entries of ``params`` come back as given.

    Returns:
      ``params`` with the restored values; either encoder layout (per layer or scan_layers)
      is read into this model's.
    """
    from bertjax import params_io  # orbax
    from bertjax import rundir

    run = rundir.resolve(path, what)
    keys = [subtree] if subtree else list(params)
    restored = params_io.restore(f"{run.step_dir}/state", {k: params[k] for k in keys},
                                 {k: shardings[k] for k in keys}, run.step_dir)
    logging.info("%s initialised from %s", subtree or "parameters", run.step_dir)
    return {**params, **restored}


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


def apply_gradients(state: TrainState, grads: Any, loss: jax.Array,
                    fns: StepFns) -> tuple[TrainState, jax.Array]:
    """The optimizer update every train step ends with, guarded: with ``fns.skip_nonfinite`` a
    non-finite loss or gradient leaves parameters and optimizer state as they were and counts
    in ``bad_streak``; the step counter still advances (with the data) so the next step draws
    new dropout.

    Returns:
      (the new state, the global gradient norm).
    """
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = fns.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    bad_streak = jnp.zeros((), jnp.int32)
    if fns.skip_nonfinite:
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                         (params, opt_state), (state.params, state.opt_state))
        bad_streak = jnp.where(ok, 0, state.bad_streak + 1)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         bad_streak=bad_streak), grad_norm


ACCUM_REDUCE = ("step", "micro_batch")


def _sum_micro_batches(grad_fn: Callable, params: Any, micro: Batch, rng: jax.Array,
                       denoms: tuple, k: int, varying: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """(gradients, (mlm, nsp) statistics) summed over k micro-batches ([k, b, ...] leaves) by a
    ``lax.scan``; micro-batch i draws dropout from ``fold_in(rng, i)``. ``varying``: the manual
    mesh axes the sums differ over (inside ``accumulate``'s shard_map)."""
    def body(carry, xs):
        i, mb = xs
        (_, aux_i), g = grad_fn(params, mb, jax.random.fold_in(rng, i), denoms)
        return jax.tree.map(jnp.add, carry, (g, aux_i)), None

    stats = {k_: jnp.zeros((), jnp.float32) for k_ in ("loss_sum", "correct", "count")}
    if varying:  # the gradients' zeros are already varying: zeros_like of varying parameters
        stats = jax.lax.pcast(stats, varying, to="varying")
    zeros = (jax.tree.map(jnp.zeros_like, params), (stats, dict(stats)))
    return jax.lax.scan(body, zeros, (jnp.arange(k), micro))[0]


def accumulate(grad_fn: Callable, params: Any, micro: Batch, rng: jax.Array, denoms: tuple,
               fns: StepFns) -> tuple[Any, Any]:
    """The summed gradients and statistics of ``fns.accum_steps`` micro-batches.

    ``fns.accum_reduce`` says when they cross devices:

      * "step": each device sums its own rows' gradients over every micro-batch, with no
        communication in the loop, and one sum across the batch-parallel devices follows it
        (an all-reduce, or a reduce-scatter where parameters are split over fsdp). Inside, the
        function is manual over the batch axes (``jax.shard_map``; the tensor axis stays the
        compiler's): parameters split over fsdp are gathered once, on entry, and every device
        holds a whole (tensor-split) gradient accumulator. Each batch shard draws dropout from
        its own key (``fold_in`` of its index), so with dropout on the masks depend on how
        many ways the batch is split.
      * "micro_batch": the accumulator has the parameters' shardings, so every micro-batch's
        gradient is reduced into it: FSDP's memory (nothing gathered whole), accum_steps
        times the communication.

    Args:
      grad_fn: ``value_and_grad`` of ``loss_fn(params, micro_batch, key, denoms)`` with aux.
      micro: the batch split by ``_split_micro``: [k, b, ...] leaves.

    Returns:
      (gradients in the parameters' shardings, (mlm, nsp) statistics).
    """
    k = fns.accum_steps
    rows = jax.tree.leaves(micro)[0].shape[1]  # a micro-batch's rows
    axes = sharding.batch_axes(fns.mesh, fns.rules, rows)
    if fns.accum_reduce == "micro_batch" or not axes:
        return _sum_micro_batches(grad_fn, params, micro, rng, denoms, k)
    inner_rules = sharding.without_mesh_axes(fns.rules, axes)

    def local(params, micro, rng, denoms):  # one device's rows of every micro-batch
        # Varying over the batch axes from here: the gradients stay this device's own (without
        # the cast, JAX would sum each micro-batch's gradient across devices)
        params = jax.lax.pcast(params, axes, to="varying")
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axes))
        with sharding.activation_rules(fns.mesh, inner_rules):
            summed = _sum_micro_batches(grad_fn, params, micro, rng, denoms, k, axes)
        return jax.tree.map(lambda x: x[None], summed)  # [1, ...]: stacked over devices

    P = jax.sharding.PartitionSpec
    stacked = jax.shard_map(local, mesh=fns.mesh, in_specs=(P(), P(None, axes), P(), P()),
                            out_specs=P(axes), axis_names=set(axes))(params, micro, rng, denoms)
    grads, aux = jax.tree.map(lambda x: jnp.sum(x, axis=0), stacked)  # the one reduction
    grads = jax.lax.with_sharding_constraint(grads, fns.params_shardings)
    return grads, aux


def train_step(state: TrainState, batch: Batch, fns: StepFns) -> tuple[TrainState, dict]:
    """One optimizer step on a global batch (pure; jit it with ``jit_train_step``).

    The loss is MLM sum / (masked tokens in the whole global batch) + NSP sum / NSP predictions
    (one per row, or one per pair of packed rows), so k accumulated micro-batches give exactly
    the gradient of the concatenated batch; how their gradients cross devices is
    ``fns.accum_reduce``'s (``accumulate``).
    """
    rng = jax.random.fold_in(state.rng, state.step)
    mlm_denom = jnp.maximum(jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)), 1.0)
    weights = nsp_weights(batch)
    nsp_denom = jnp.maximum(jnp.float32(batch["input_ids"].shape[0]), 1.0)
    if weights is not None:  # packed rows hold several pairs; eval batches padding rows
        nsp_denom = jnp.maximum(jnp.sum(weights.astype(jnp.float32)), 1.0)

    def loss_fn(params, micro, key, denoms):
        mlm, nsp = _forward(fns.model, params, micro, key, fns.nsp)
        loss = mlm["loss_sum"] / denoms[0] + nsp["loss_sum"] / denoms[1]
        return loss, (mlm, nsp)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    denoms = (mlm_denom, nsp_denom)
    if fns.accum_steps == 1:
        (_, aux), grads = grad_fn(state.params, batch, rng, denoms)
    else:
        grads, aux = accumulate(grad_fn, state.params, _split_micro(batch, fns.accum_steps),
                                rng, denoms, fns)
    mlm, nsp = aux
    loss = mlm["loss_sum"] / mlm_denom + nsp["loss_sum"] / nsp_denom
    new_state, grad_norm = apply_gradients(state, grads, loss, fns)
    bad_streak = new_state.bad_streak
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
    """``fn(*args, fns)`` traced with the activation rules active (the model's constraints
    resolve to the mesh)."""
    @functools.wraps(fn)
    def wrapped(*args):
        with sharding.activation_rules(fns.mesh, fns.rules):
            return fn(*args, fns)
    return wrapped


def batch_shardings(fns: StepFns, batch_like: dict) -> dict:
    """Shardings for a batch dict (dimension 0 split by the act_batch rule)."""
    return {k: sharding.batch_sharding(fns.mesh, fns.rules, len(v.shape), v.shape[0])
            for k, v in batch_like.items()}


StepFn = Callable[..., Any]  # step(state_or_params, batch, fns) -> outputs


def jit_train_step(fns: StepFns, batch_like: dict, step: StepFn = train_step) -> Callable:
    """The one place a train step is jitted: the state's shardings in and out, the batch split
    by the act_batch rule, metrics replicated, the state donated.

    Args:
      step: ``step(state, batch, fns) -> (state, metrics)``; pre-training's by default,
        fine-tuning passes its own (bertjax/finetuning/runner.py).
    """
    repl = sharding.replicated(fns.mesh)
    return jax.jit(_with_rules(step, fns),
                   in_shardings=(fns.state_shardings, batch_shardings(fns, batch_like)),
                   out_shardings=(fns.state_shardings, repl), donate_argnums=(0,))


def jit_eval_step(fns: StepFns, batch_like: dict, step: StepFn = eval_step) -> Callable:
    """The one place an evaluation/inference step is jitted: parameters in their shardings,
    outputs replicated (every host holds the whole batch's).

    Args:
      step: ``step(params, batch, fns) -> outputs``; pre-training's eval by default.
    """
    return jax.jit(_with_rules(step, fns),
                   in_shardings=(fns.params_shardings, batch_shardings(fns, batch_like)),
                   out_shardings=sharding.replicated(fns.mesh))


MEMORY_KINDS = ("argument", "output", "alias", "temp", "generated_code")


def compiled_memory(compiled: Any) -> dict[str, int] | None:
    """Bytes per device of a compiled step by its compiler's ``memory_analysis()``: argument,
    output, alias (outputs that reuse donated arguments), temp, generated_code; None where the
    backend does not report it. The pre-training loop's memory line and bertjax.bench.plan
    both read it here, so their figures are the same numbers."""
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if mem is None:
        return None
    return {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in MEMORY_KINDS}


def memory_line(mem: dict[str, int] | None) -> str:
    """``compiled_memory``'s figures in one line (what the pre-training loop prints)."""
    if mem is None:
        return "memory analysis unavailable on this backend"
    gib = 1 / 2**30
    return (f"memory per device: arguments {mem['argument'] * gib:.3f} GiB, "
            f"outputs {mem['output'] * gib:.3f} GiB, temporaries {mem['temp'] * gib:.3f} GiB")


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


def build(config: Any, mesh: Mesh, abstract: bool = False) -> tuple[TrainState, StepFns]:
    """Model, optimizer and sharded train state from a validated run config (``abstract``:
    shapes and shardings only, see ``create_train_state``)."""
    from bertjax import optim

    use_rng_impl(config.rng_impl)
    model = build_model(config)
    tx, schedule = optim.make_optimizer(config)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    state, shardings = create_train_state(model, tx, mesh, rules, config.seed,
                                          abstract=abstract)
    fns = StepFns(model=model, mesh=mesh, rules=rules, tx=tx, schedule=schedule,
                  state_shardings=shardings, accum_steps=config.accum_steps,
                  accum_reduce=config.get("accum_reduce", "step"), nsp=config.nsp,
                  skip_nonfinite=config.max_nonfinite_steps > 0)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("model %s: %s parameters on mesh %s", config.model.preset, f"{n_params:,}",
                 dict(mesh.shape))
    return state, fns
