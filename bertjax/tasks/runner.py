"""The fine-tuning loop every task family shares (classification, token tags, span QA).

A family (``Family`` below) says what its model is, how a file becomes rows of model inputs and
targets (``Split``), its loss as (sum, count) statistics, how the outputs of a whole split are
scored and how they are written. Everything else is here, in phases (``run``):

  1. check    workdir, files, tokenizer, mesh; every split is read and featurised by the family
              before anything is compiled or written, so a bad row stops the run with one line;
  2. build    the family's model born sharded (bertjax/tasks/encoder.py), the encoder restored
              from ``config.init_from``; the train and eval steps jitted once each;
  3. train    a fresh permutation of the rows each epoch (the same on every host, each host
              feeding its contiguous block); dev evaluation on a cadence; only the checkpoint of
              the best dev headline metric (the family's first metric, higher is better) is kept;
  4. report   the kept checkpoint on dev (and any further labelled dev set, e.g. MNLI's
              mismatched one), predictions of dev and test, metrics.json and metrics.jsonl.

Evaluation pads the last batch with rows whose ``example_mask`` is 0, so every host runs the same
number of steps and no row is dropped or counted twice; the per-row outputs come back replicated
and the family scores them once over the whole split.

Data comes from files (``config.data.train/dev/test``) or, when ``config.data.tfds`` names a
dataset, from TFDS splits; families read both through ``examples`` (bertjax/tasks/splits.py,
with the batching helpers). An interrupted run resumes from ``checkpoints_latest`` (saved every
``config.checkpoint_every`` steps, removed when the run finishes) with the best so far from
best.json; its data order depends only on (seed, step), so it ends where an uninterrupted run
would. Scalars go to metrics.jsonl and, with ``config.tensorboard``, to TensorBoard (tb/).

TensorFlow is imported only for TensorBoard (bertjax.report) and TFDS (bertjax.data.tasks).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax import checkpoint as ckpt_lib
from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import multihost
from bertjax import optim
from bertjax import report
from bertjax import sharding
from bertjax import train
from bertjax.tasks import encoder
from bertjax.tasks import features
from bertjax.tasks import packing
from bertjax.tasks import run_settings
from bertjax.tasks.run_settings import (LATEST, check_settings, resolved_steps, saved_latest,
                                        setting_difference, take_saved)
from bertjax.tasks.splits import (  # noqa: F401 (re-exported: families use runner.Split, ...)
    TFDS_PREFIX, Split, eval_batches, examples, host_rows, predict, sources, tfds_splits)

Batch = dict[str, jax.Array]


class Family(Protocol):
    """What a task family provides. Optional: ``prepare(config)``, called once the config is
    final (after eval_only took the workdir's), before any other method; ``packs``, for a
    family whose model takes packed rows (bertjax/tasks/packing.py): "examples" when its
    outputs are per example ([R, M, ...] packed), "tokens" when per token ([R, L, ...]), with
    ``token_keys`` naming its per-token targets."""

    name: str
    metric_names: tuple[str, ...]  # first = headline (best checkpoint), higher is better

    def make_model(self, cfg: model_lib.BertConfig) -> nn.Module:
        """__call__(input_ids, input_mask, segment_ids, deterministic) -> Array or dict."""

    def read(self, config: Any, tok: features.TaskTokenizer, path: str,
             labelled: bool) -> Split:
        """Reads and featurises one split; raises DataError / ConfigError with one line."""

    def loss_stats(self, outputs: Any, batch: Batch) -> dict[str, jax.Array]:
        """Summed statistics with "loss_sum" and "count", masked by batch["example_mask"]."""

    def score(self, outputs: Any, split: Split) -> dict[str, float]:
        """Metrics from the outputs of every row of ``split``, in order (numpy)."""

    def write_predictions(self, directory: str, name: str, outputs: Any, split: Split) -> None:
        """Writes predictions/<name>.* (called on the chief only)."""


# ------------------------------------------------------------------------------------ steps

LossStats = Callable[[Any, Batch], dict]


def train_step(state: train.TrainState, batch: Batch, fns: train.StepFns,
               loss_stats: LossStats) -> tuple[train.TrainState, dict]:
    """One optimizer step on the mean loss over the batch's counted targets (pure)."""
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        out = fns.model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                              batch["segment_ids"], deterministic=False, rngs={"dropout": rng},
                              **_packed(batch))
        stats = loss_stats(out, batch)
        return stats["loss_sum"] / jnp.maximum(stats["count"], 1.0), stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = fns.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite step changes nothing (as in pre-training); the loop stops on a streak.
    ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                        bad_streak=jnp.where(ok, 0, state.bad_streak + 1))
    count = jnp.maximum(stats["count"], 1.0)
    extra = {k: v / count for k, v in stats.items() if k not in ("loss_sum", "count")}
    return new, {"loss": loss, **extra, "learning_rate": fns.schedule(state.step),
                 "bad_streak": new.bad_streak}


def eval_step(params: Any, batch: Batch, fns: train.StepFns, loss_stats: LossStats) -> dict:
    """Per-row outputs (to gather) and the summed loss statistics of one batch."""
    out = fns.model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                          batch["segment_ids"], deterministic=True, **_packed(batch))
    return {"outputs": out, **loss_stats(out, batch)}


def _packed(batch: Batch) -> dict:
    """The packed-row inputs a batch holds (none unless config.data.examples_per_row > 1)."""
    return {k: batch[k] for k in packing.PACKED_KEYS if k in batch}


def _with_rules(fn: Callable, fns: train.StepFns, loss_stats: LossStats) -> Callable:
    """Traces ``fn`` with the activation rules active (the model's constraints resolve)."""
    @functools.wraps(fn)
    def wrapped(*args):
        with sharding.activation_rules(fns.mesh, fns.rules):
            return fn(*args, fns, loss_stats)
    return wrapped


def jit_steps(fns: train.StepFns, batch_like: dict,
              loss_stats: LossStats) -> tuple[Callable, Callable]:
    """The jitted train step (state donated) and eval step; eval outputs come back replicated
    so every host holds the whole batch's predictions."""
    repl = sharding.replicated(fns.mesh)
    batch_sh = train.batch_shardings(fns, batch_like)
    step = jax.jit(_with_rules(train_step, fns, loss_stats),
                   in_shardings=(fns.state_shardings, batch_sh),
                   out_shardings=(fns.state_shardings, repl), donate_argnums=(0,))
    evaluate_ = jax.jit(_with_rules(eval_step, fns, loss_stats),
                        in_shardings=(fns.state_shardings.params, batch_sh), out_shardings=repl)
    return step, evaluate_


# -------------------------------------------------------------------------------------- run


def _json(path: str, value: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


def _pad_keys(arrays: dict[str, np.ndarray], like: dict[str, np.ndarray]) -> dict:
    """An unlabelled split may lack targets the eval step reads: zeros stand in for them."""
    n = len(arrays["input_ids"])
    return {**{k: np.zeros((n,) + v.shape[1:], v.dtype) for k, v in like.items()
               if k not in arrays and k != "example_mask"}, **arrays}


def run(config: Any, workdir: str, family: Family, eval_only: bool = False,
        overwrite: bool = False, tag: str = "") -> dict[str, Any]:
    """Fine-tunes (or, ``eval_only``, evaluates the best checkpoint of) one task.

    Args:
      config: a fine-tuning config (configs/glue.py, configs/ner.py, ...).
      workdir: checkpoints/, predictions/, metrics.json and metrics.jsonl go here.
      family: the task family (bertjax.tasks.families.get).
      eval_only: evaluate the workdir's kept checkpoint on dev (and test) instead of training.
      overwrite: replace the checkpoints of an earlier fine-tuning in ``workdir``.
      tag: printed before each line (e.g. "scratch").

    Returns:
      {"task", "family", "dev": metrics, ("dev_mismatched": metrics), "headline", "best_step",
      "steps", "train_examples", "init_from", "seconds"}.
    """
    t_start = time.perf_counter()
    chief = multihost.is_chief()
    say = (lambda s: print(f"[{tag}] {s}" if tag else s, flush=True)) if chief else (lambda s: 0)
    # 1. check: config, files, tokenizer and every split, all before compiling or writing
    ckpt_dir = os.path.join(workdir, "checkpoints")
    saved = features.latest_saved_config(workdir)
    if eval_only:
        if saved is None:
            raise config_lib.ConfigError(f"--workdir={workdir} holds no fine-tuned checkpoint "
                                         "to evaluate; run without --eval_only first")
        take_saved(config, saved)
    latest_saved = None if eval_only or overwrite else saved_latest(workdir)
    finished = os.path.exists(os.path.join(workdir, "metrics.json"))
    if not eval_only:
        if (saved is not None or latest_saved is not None) and not overwrite and (
                finished or latest_saved is None):
            raise config_lib.ConfigError(f"--workdir={workdir} already holds a fine-tuned model; "
                                         "use --eval_only, another workdir, or --overwrite")
    check_settings(config, eval_only)
    if hasattr(family, "prepare"):
        family.prepare(config)
    slots = packing.check(config, bool(getattr(family, "packs", "")))  # examples per row
    token_keys = tuple(getattr(family, "token_keys", ()))
    paths = sources(config, eval_only)
    if not config.init_from and not config.tokenizer:
        raise config_lib.ConfigError("no tokenizer: set config.init_from (a workdir whose "
                                     "tokenizer is used) or config.tokenizer=PATH")
    casing = {"": None, "true": True, "false": False}.get(str(config.do_lower_case).lower())
    tok = features.load_tokenizer(config.init_from, config.tokenizer, casing)
    model_cfg = (config_lib.model_config(config) if eval_only  # as the workdir recorded it
                 else encoder.model_config_for(config))
    encoder.record_model(config, model_cfg)
    lr, lr_source = run_settings.learning_rate(config, model_cfg.hidden_size)  # before writing
    with config.unlocked():
        config.tokenizer = tok.path  # saved with the checkpoint: eval_only needs no init_from
    if tok.vocab_size > model_cfg.vocab_size:
        raise config_lib.ConfigError(f"tokenizer {tok.source} has {tok.vocab_size} tokens but "
                                     f"the model only {model_cfg.vocab_size}; use the "
                                     "checkpoint's own tokenizer")
    mesh = encoder.check_mesh(config, model_cfg)
    # train first: a family may take its label set from it (recorded in the saved config)
    trainset = family.read(config, tok, paths["train"], True) if "train" in paths else None
    evalsets = {name: family.read(config, tok, paths[name], True)
                for name in ("dev", "dev_mismatched") if name in paths}
    testset = family.read(config, tok, paths["test"], False) if "test" in paths else None
    if trainset is not None and trainset.rows < config.global_batch_size:
        raise config_lib.ConfigError(
            f"{paths['train']} has {trainset.rows} training rows, fewer than "
            f"config.global_batch_size={config.global_batch_size}; lower the batch size")
    total_steps, warmup = resolved_steps(config, trainset.rows if trainset else 1)
    with config.unlocked():
        config.total_steps = total_steps
        config.optim.warmup_steps = warmup
    resume = latest_saved is not None and not finished
    if resume and (diff := setting_difference(latest_saved, config)):
        raise config_lib.ConfigError(
            f"--workdir={workdir} holds an unfinished fine-tuning, but {diff}; resume with the "
            "same settings, or pass --overwrite to start again")
    plan = None
    if slots > 1 and trainset is not None:
        split = sharding.batch_parallelism(mesh, tuple(tuple(r) for r in config.sharding.rules))
        lens = packing.lengths(trainset.arrays)
        rows = packing.rows_per_step(lens, config.global_batch_size, config.max_seq_length,
                                     slots, math.lcm(split, jax.process_count()))
        plan = packing.TrainPlan(lens, config.global_batch_size, rows, slots,
                                 config.max_seq_length, config.seed, token_keys)
    task_name = getattr(family, "task_name", "") or config.task
    say(f"task {task_name}: {0 if trainset is None else trainset.examples} train / "
        f"{evalsets['dev'].examples} dev examples, tokenizer {tok.source}, encoder "
        f"{'from ' + config.init_from if config.init_from else 'random init'}")
    if plan is not None:
        first = plan.epoch(0)
        used = sum(len(r) for step in first for r in step)
        fill = packing.fill(plan.lens, [r for step in first for r in step],
                            config.max_seq_length)
        # slots, not tokens, bound the rows when M examples leave a quarter of a row empty
        hint = ("; examples_per_row limits the rows: a larger value packs them fuller"
                if slots * float(plan.lens.mean()) < 0.75 * config.max_seq_length else "")
        say(f"packing: up to {slots} examples a row; a step's {config.global_batch_size} "
            f"examples in {plan.rows} rows ({used / max(1, len(first)):.1f} on average, "
            f"{fill:.0%} of their tokens real){hint}")

    # 2. build
    pred_dir = os.path.join(workdir, "predictions")
    os.makedirs(pred_dir, exist_ok=True)
    train.use_rng_impl(config.get("rng_impl", "threefry2x32"))  # dropout bits, as pre-training
    model = family.make_model(model_cfg)
    tx, schedule = optim.make_optimizer(run_settings.with_learning_rate(config, lr))
    if not eval_only:
        say(f"learning rate {lr:g} ({lr_source}), {config.total_steps} steps, warmup "
            f"{config.optim.warmup_steps}")
    rules = tuple(tuple(r) for r in config.sharding.rules)
    state, state_sh = encoder.create_state(model, tx, mesh, rules, config.seed,
                                           config.max_seq_length)
    fns = train.StepFns(model=model, tx=tx, schedule=schedule, mesh=mesh, rules=rules,
                        state_shardings=state_sh)
    latest_dir = os.path.join(workdir, LATEST)
    best_path = os.path.join(workdir, "best.json")
    if overwrite and chief and not eval_only:
        for path in (ckpt_dir, latest_dir):
            if os.path.isdir(path):
                shutil.rmtree(path)
        for path in (best_path, os.path.join(workdir, "metrics.json")):  # an interrupted
            if os.path.exists(path):  # rerun must not look finished
                os.remove(path)
    multihost.barrier("finetune workdir ready")
    ckpt = ckpt_lib.Checkpointer(ckpt_dir, every=1, keep=1, async_save=False)
    latest = None if eval_only else ckpt_lib.Checkpointer(latest_dir, every=1, keep=1,
                                                          async_save=False)
    dev = evalsets["dev"]
    like = {k: np.zeros((config.global_batch_size,) + v.shape[1:], v.dtype)
            for k, v in dev.arrays.items()}
    like["example_mask"] = np.zeros(config.global_batch_size, np.float32)
    eval_like = {k: np.zeros((config.eval_batch_size,) + v.shape[1:], v.dtype)
                 for k, v in like.items()}
    targets_like = like
    if slots > 1:  # packed rows: plan.rows a training step, eval_batch_size an evaluation one
        like = packing.layout(plan.rows if plan else config.global_batch_size, slots,
                              dev.arrays, token_keys)
        eval_like = packing.layout(config.eval_batch_size, slots, dev.arrays, token_keys)
    step_fn, eval_fn = jit_steps(fns, like, family.loss_stats)
    batch_sh = train.batch_shardings(fns, like)
    eval_sh = train.batch_shardings(fns, eval_like)

    packed_splits: dict[int, tuple] = {}

    def outputs_of(params, split: Split):
        arrays = _pad_keys(split.arrays, targets_like)
        if slots == 1:
            return predict(eval_fn, params, arrays, config.eval_batch_size, eval_sh)
        if id(split) not in packed_splits:  # the whole split, longest first, packed once
            rows, _ = packing.best_fit(packing.lengths(arrays), range(split.rows), slots,
                                       config.max_seq_length)
            packed_splits[id(split)] = packing.pack(arrays, rows, slots, None, token_keys)
        packed, index = packed_splits[id(split)]
        outputs, stats = predict(eval_fn, params, packed, config.eval_batch_size, eval_sh)
        if family.packs == "tokens":
            return packing.unpack_tokens(outputs, packed, index, split.rows), stats
        return packing.unpack(outputs, index, split.rows), stats

    def evaluate(params, split: Split):
        outputs, stats = outputs_of(params, split)
        result = family.score(outputs, split)
        count = max(stats.get("count", 0.0), 1.0)
        result["loss"] = stats["loss_sum"] / count
        for k, v in stats.items():  # the family's extra statistics, as means per count
            if k not in ("loss_sum", "count"):
                result.setdefault(k, v / count)
        result["examples"] = split.examples
        return outputs, result

    head = family.metric_names[0]
    best = {"step": None, head: -math.inf}
    writer = report.MetricsWriter(workdir, enabled=chief and not eval_only,
                                  tensorboard=bool(config.get("tensorboard", True)))
    start = 0
    if eval_only:
        abstract = ckpt_lib.abstract_like(state, state_sh)
        del state
        state, best["step"] = ckpt.restore(abstract)
    elif resume:  # the step, optimizer state and RNG of the interrupted run, and its best
        abstract = ckpt_lib.abstract_like(state, state_sh)
        del state
        state, start = latest.restore(abstract)
        if os.path.exists(best_path):
            with open(best_path) as f:
                best = json.load(f)
        say(f"resuming from step {start} (best so far: step {best['step']})")
    elif config.init_from:
        state = encoder.restore_encoder(config.init_from, state, state_sh)
    speed: dict[str, float] = {}
    if not eval_only:
        # 3. train: a fresh permutation each epoch, the same on every host; the order is a
        # function of (seed, step), so a resumed run sees what the uninterrupted one would have
        n = trainset.rows
        per_epoch = n // config.global_batch_size
        eval_every = config.eval_every or per_epoch
        pending = None
        # training speed: from the end of the first step (compiled by then) to the end of the
        # last, without the time evaluations and checkpoints take
        clock = {"t0": None, "step0": start, "examples": 0, "paused": 0.0}
        for step in range(start, total_steps):
            if plan is not None:  # this step's examples, packed into plan.rows rows
                packed = plan.batch_arrays(trainset.arrays, step)
                local = host_rows(packed, np.arange(plan.rows))
                taken = int(packed["example_mask"].sum())
            else:
                epoch, k = divmod(step, per_epoch)
                order = np.random.default_rng([config.seed, epoch]).permutation(n)
                rows = order[k * config.global_batch_size:(k + 1) * config.global_batch_size]
                local = host_rows(trainset.arrays, rows)
                local["example_mask"] = np.ones(len(local["input_ids"]), np.float32)
                taken = config.global_batch_size
            state, m = step_fn(state, multihost.global_batch(local, batch_sh))
            if clock["t0"] is not None:
                clock["examples"] += taken
            if pending is not None:  # step t is queued; reading t-1 does not stall the device
                values = {k_: float(v) for k_, v in jax.device_get(pending[1]).items()}
                if clock["t0"] is None:  # step pending[0] is done; this one is counted
                    clock.update(t0=time.perf_counter(), step0=pending[0], examples=taken)
                if values["bad_streak"] >= max(config.max_nonfinite_steps, 1):
                    raise config_lib.ConfigError(
                        f"{int(values['bad_streak'])} steps in a row up to step {pending[0]} had "
                        "a non-finite loss; lower config.optim.lr")
                if pending[0] % config.log_every == 0:
                    writer.write(pending[0], "train", values)
            pending = (step + 1, m)
            done = step + 1
            paused = time.perf_counter()
            if done % eval_every == 0 or done == total_steps:
                jax.block_until_ready(state.params)  # the step's time is not the evaluation's
                paused = time.perf_counter()
                outputs, result = evaluate(state.params, dev)
                say(f"step {done}/{total_steps}: dev " + ", ".join(
                    f"{k_}={v:.4f}" for k_, v in result.items()
                    if k_ != "examples" and isinstance(v, (int, float))))
                writer.write(done, "dev", result)
                writer.flush()
                # The first evaluation is always kept; later ones only when strictly better
                # (a nan correlation, from constant predictions, never is).
                if best["step"] is None or result[head] > best[head]:
                    best = {"step": done, **result}
                    ckpt.save(done, state, config, force=True)
                    if chief:
                        family.write_predictions(pred_dir, "dev", outputs, dev)
                        _json(best_path, best)
            if done % max(config.checkpoint_every, 1) == 0 and done < total_steps:
                latest.save(done, state, config, force=True)
            clock["paused"] += time.perf_counter() - paused
        ckpt.wait()
        if clock["t0"] is not None and total_steps > clock["step0"]:
            seconds = max(time.perf_counter() - clock["t0"] - clock["paused"], 1e-9)
            speed = {"train_steps_per_second": (total_steps - clock["step0"]) / seconds,
                     "train_examples_per_second": clock["examples"] / seconds}
            say(f"training: {speed['train_steps_per_second']:.2f} steps/s, "
                f"{speed['train_examples_per_second']:.1f} examples/s")
        if best["step"] is not None and best["step"] != total_steps:
            abstract = ckpt_lib.abstract_like(state, state_sh)
            del state
            state, _ = ckpt.restore(abstract)
    # 4. report: the kept (best) checkpoint on the dev sets, and on test when given
    summary: dict[str, Any] = {"task": task_name, "family": family.name}
    summary.update(speed)
    if plan is not None:
        summary["rows_per_step"] = plan.rows
    for name, split in evalsets.items():
        outputs, summary[name] = evaluate(state.params, split)
        if chief:
            family.write_predictions(pred_dir, name, outputs, split)
    if testset is not None:
        test_out, _ = outputs_of(state.params, testset)
        if chief:
            family.write_predictions(pred_dir, "test", test_out, testset)
    ckpt.close()
    if latest is not None:
        latest.close()
        multihost.barrier("finetune finished")
        if chief and os.path.isdir(latest_dir):  # finished: nothing left to resume
            shutil.rmtree(latest_dir)
    result = summary["dev"]
    summary.update({"headline": head, "best_step": best["step"], "steps": total_steps,
                    "train_examples": 0 if trainset is None else trainset.examples,
                    "init_from": config.init_from or None,
                    "seconds": time.perf_counter() - t_start})
    if chief:
        _json(os.path.join(workdir, "eval_metrics.json" if eval_only else "metrics.json"),
              summary)
        writer.flush()
        extra = "".join(f", {name} {head} {summary[name][head]:.4f}" for name in evalsets
                        if name != "dev")
        say(f"dev {head} {result[head]:.4f}{extra} (checkpoint of step {best['step']}); "
            f"predictions in {pred_dir}")
    return summary
