"""The fine-tuning loop every task family shares (classification, token tags, span QA).

A family (``Family`` below) says what its model is, how a file becomes rows of model inputs and
targets (``Split``), its loss as (sum, count) statistics, how the outputs of a whole split are
scored and how they are written. Everything else is here, in phases (``run``):

  1. settle   workdir, files, tokenizer, mesh; every split is read and featurised by the family
              before anything is compiled or written, so a bad row (or a split without any)
              stops the run with one line;
              the final config (encoder sizes, tokenizer, steps, the family's recorded settings)
              is settled here, locked, and never changed afterwards (``Plan``);
  2. build    the family's model born sharded and its steps jitted by the kit (bertjax.train),
              the state restored: the kept checkpoint, an interrupted run's, or the encoder of
              ``config.init_from`` (``Built``);
  3. train    a fresh permutation of the rows each epoch (the same on every host, each host
              feeding its contiguous block); dev evaluation on a cadence; only the checkpoint of
              the best dev headline metric (the family's first metric, higher is better) is kept;
  4. report   the kept checkpoint on dev (and any further labelled dev set, e.g. MNLI's
              mismatched one), predictions of dev and test, metrics.json and metrics.jsonl.

Evaluation pads the last batch with rows whose ``example_mask`` is 0, so every host runs the same
number of steps and no row is dropped or counted twice; the per-row outputs come back replicated
and the family scores them once over the whole split.

Data comes from files (``config.data.train/dev/test``) or, when ``config.data.tfds`` names a
dataset, from TFDS splits; families read both through ``examples`` (bertjax/finetuning/splits.py,
with the batching helpers). An interrupted run resumes from ``checkpoints_latest`` (saved every
``config.checkpoint_every`` steps, removed when the run finishes) with the best so far from
best.json; its data order depends only on (seed, step), so it ends where an uninterrupted run
would. Scalars go to metrics.jsonl and, with ``config.tensorboard``, to TensorBoard (tb/).

TensorFlow is imported only for TensorBoard (bertjax.report) and TFDS (bertjax.data.tasks).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bertjax import checkpoint as ckpt_lib
from bertjax import config as config_lib
from bertjax import console
from bertjax import lock
from bertjax import model as model_lib
from bertjax import multihost
from bertjax import optim
from bertjax import progress
from bertjax import report
from bertjax import rundir
from bertjax import sharding
from bertjax import train
from bertjax.data import fs  # local paths and gs:// alike
from bertjax.data.errors import DataError
from bertjax.finetuning import encoder
from bertjax.finetuning import features
from bertjax.finetuning import packing
from bertjax.finetuning import run_settings
from bertjax.finetuning.run_settings import (LATEST, check_settings, resolved_steps, saved_latest,
                                        setting_difference, take_saved)
from bertjax.finetuning.splits import (  # noqa: F401 (re-exported: families use runner.Split, ...)
    TFDS_PREFIX, Split, eval_batches, examples, host_rows, predict, sources, tfds_splits)

Batch = dict[str, jax.Array]


class Family(Protocol):
    """What a task family provides. Optional: ``prepare(config)``, called once the config is
    final (after eval_only took the workdir's), before any other method;
    ``recorded_settings()``, {dotted config key: value} the family learned from the training
    file (e.g. NER's label list), written into the saved config; ``packs``, for a
    family whose model takes packed rows (bertjax/finetuning/packing.py): "examples" when its
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
    # A non-finite step changes nothing (as in pre-training); the loop stops on a streak.
    new, _ = train.apply_gradients(state, grads, loss, fns)
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


def jit_steps(fns: train.StepFns, batch_like: dict,
              loss_stats: LossStats) -> tuple[Callable, Callable]:
    """The train step (state donated) and eval step with the family's loss, jitted by the kit
    (bertjax.train); eval outputs come back replicated so every host holds the whole batch's
    predictions."""
    return (train.jit_train_step(fns, batch_like,
                                 functools.partial(train_step, loss_stats=loss_stats)),
            train.jit_eval_step(fns, batch_like,
                                functools.partial(eval_step, loss_stats=loss_stats)))


# ----------------------------------------------------------------------- 1. settle the plan


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything phase 1 settled, before anything is compiled or written.

    ``config`` is final and locked: the encoder's exact sizes, the tokenizer, the resolved
    steps and warmup and the family's recorded settings (e.g. NER's label list) are in it, and
    it is what the checkpoints save. Nothing changes it afterwards.
    """

    config: Any
    workdir: str
    family: Family
    eval_only: bool
    overwrite: bool
    resume: bool
    tok: features.TaskTokenizer
    model_cfg: model_lib.BertConfig
    mesh: Any
    lr: float
    lr_source: str
    trainset: Split | None
    evalsets: dict[str, Split]  # "dev" first, then e.g. "dev_mismatched"
    testset: Split | None
    slots: int  # examples per row (1: unpacked)
    token_keys: tuple[str, ...]
    packing_plan: packing.TrainPlan | None
    task_name: str


def settle(config: Any, workdir: str, family: Family, eval_only: bool = False,
           overwrite: bool = False) -> Plan:
    """Phase 1: checks the workdir, settings, tokenizer and mesh, reads and featurises every
    split, and settles the final config; raises ConfigError / DataError with one line.
    ``config`` itself is not changed."""
    run_settings.check_workdir(workdir, eval_only, overwrite)
    saved = rundir.saved_config(workdir)
    if eval_only:
        if saved is None:
            raise config_lib.ConfigError(f"--workdir={workdir} holds no fine-tuned checkpoint "
                                         "to evaluate; run without --eval_only first")
        config = take_saved(config, saved)
    else:
        config = ml_collections.ConfigDict(config.to_dict())
    latest_saved = None if eval_only or overwrite else saved_latest(workdir)
    finished = fs.path(os.path.join(workdir, "metrics.json")).exists()
    if not eval_only and not overwrite and (saved is not None or latest_saved is not None) and (
            finished or latest_saved is None):
        raise config_lib.ConfigError(f"--workdir={workdir} already holds a fine-tuned model; "
                                     "use --eval_only, another workdir, or --overwrite")
    check_settings(config, eval_only)
    if hasattr(family, "prepare"):
        family.prepare(config)
    slots = packing.check(config, bool(getattr(family, "packs", "")))
    token_keys = tuple(getattr(family, "token_keys", ()))
    paths = sources(config, eval_only)
    if not config.init_from and not config.tokenizer:
        raise config_lib.ConfigError("no tokenizer: set config.init_from (a workdir whose "
                                     "tokenizer is used) or config.tokenizer=PATH")
    casing = {"": None, "true": True, "false": False}.get(str(config.do_lower_case).lower())
    tok = features.load_tokenizer(config.init_from, config.tokenizer, casing)
    model_cfg = (config_lib.model_config(config) if eval_only  # as the workdir recorded it
                 else encoder.model_config_for(config))
    lr, lr_source = run_settings.learning_rate(config, model_cfg.hidden_size)
    if tok.vocab_size > model_cfg.vocab_size:
        raise config_lib.ConfigError(f"tokenizer {tok.source} has {tok.vocab_size} tokens but "
                                     f"the model only {model_cfg.vocab_size}; use the "
                                     "checkpoint's own tokenizer")
    mesh = encoder.check_mesh(config, model_cfg)
    # train first: a family may take its label set from it (recorded in the final config)
    trainset = family.read(config, tok, paths["train"], True) if "train" in paths else None
    evalsets = {name: family.read(config, tok, paths[name], True)
                for name in ("dev", "dev_mismatched") if name in paths}
    testset = family.read(config, tok, paths["test"], False) if "test" in paths else None
    for name, split in (("train", trainset), *evalsets.items(), ("test", testset)):
        if split is not None and split.rows == 0:  # e.g. a CSV holding its header only
            raise DataError(f"{paths[name]}: holds no examples (a header or blank lines only); "
                            f"the {name} set needs at least one row")
    if trainset is not None and trainset.rows < config.global_batch_size:
        raise config_lib.ConfigError(
            f"{paths['train']} has {trainset.rows} training rows, fewer than "
            f"config.global_batch_size={config.global_batch_size}; lower the batch size")
    total_steps, warmup = resolved_steps(config, trainset.rows if trainset else 1)
    final = encoder.with_model(config, model_cfg)
    final.tokenizer = tok.path  # saved with the checkpoint: eval_only needs no init_from
    final.total_steps = total_steps
    final.optim.warmup_steps = warmup
    recorded = getattr(family, "recorded_settings", dict)()
    final.update_from_flattened_dict(recorded)  # e.g. the label list read from training
    final.lock()
    resume = latest_saved is not None and not finished
    if resume and (diff := setting_difference(latest_saved, final)):
        raise config_lib.ConfigError(
            f"--workdir={workdir} holds an unfinished fine-tuning, but {diff}; resume with the "
            "same settings, or pass --overwrite to start again")
    plan = None
    if slots > 1 and trainset is not None:
        split = sharding.batch_parallelism(mesh, tuple(tuple(r) for r in final.sharding.rules))
        lens = packing.lengths(trainset.arrays)
        rows = packing.rows_per_step(lens, final.global_batch_size, final.max_seq_length,
                                     slots, math.lcm(split, multihost.process_count()))
        plan = packing.TrainPlan(lens, final.global_batch_size, rows, slots,
                                 final.max_seq_length, final.seed, token_keys)
    return Plan(config=final, workdir=workdir, family=family, eval_only=eval_only,
                overwrite=overwrite, resume=resume, tok=tok, model_cfg=model_cfg, mesh=mesh,
                lr=lr, lr_source=lr_source, trainset=trainset, evalsets=evalsets,
                testset=testset, slots=slots, token_keys=token_keys, packing_plan=plan,
                task_name=getattr(family, "task_name", "") or final.task)


def describe(plan: Plan, say: Callable[[str], Any]) -> None:
    """The plan's first lines: the task, its data, the encoder and (packed) rows."""
    config, trainset, tok = plan.config, plan.trainset, plan.tok
    say(f"task {plan.task_name}: {0 if trainset is None else trainset.examples} train / "
        f"{plan.evalsets['dev'].examples} dev examples, tokenizer {tok.source}, encoder "
        f"{'from ' + config.init_from if config.init_from else 'random init'}")
    p = plan.packing_plan
    if p is not None:
        first = p.epoch(0)
        used = sum(len(r) for step in first for r in step)
        fill = packing.fill(p.lens, [r for step in first for r in step], config.max_seq_length)
        # slots, not tokens, bound the rows when M examples leave a quarter of a row empty
        hint = ("; examples_per_row limits the rows: a larger value packs them fuller"
                if plan.slots * float(p.lens.mean()) < 0.75 * config.max_seq_length else "")
        say(f"packing: up to {plan.slots} examples a row; a step's {config.global_batch_size} "
            f"examples in {p.rows} rows ({used / max(1, len(first)):.1f} on average, "
            f"{fill:.0%} of their tokens real){hint}")
    if not plan.eval_only:
        say(f"learning rate {plan.lr:g} ({plan.lr_source}), {config.total_steps} steps, warmup "
            f"{config.optim.warmup_steps}")


# ------------------------------------------------------------------------------- 2. build


class Evaluator:
    """Runs the jitted eval step over whole splits and scores them with the family.

    Packed evaluation (``slots`` > 1) packs each split once, longest first, and keeps the
    packing by split name for the run's later evaluations.
    """

    def __init__(self, plan: Plan, eval_fn: Callable, eval_sh: dict, targets_like: dict):
        self.plan, self.eval_fn, self.eval_sh = plan, eval_fn, eval_sh
        self.targets_like = targets_like
        self._packed: dict[str, tuple] = {}

    def outputs(self, params: Any, name: str, split: Split) -> tuple[Any, dict]:
        """(per-row outputs in the split's row order, summed loss statistics)."""
        plan, config = self.plan, self.plan.config
        arrays = pad_targets(split.arrays, self.targets_like)
        if plan.slots == 1:
            return predict(self.eval_fn, params, arrays, config.eval_batch_size, self.eval_sh)
        if name not in self._packed:
            rows, _ = packing.best_fit(packing.lengths(arrays), range(split.rows), plan.slots,
                                       config.max_seq_length)
            self._packed[name] = packing.pack(arrays, rows, plan.slots, None, plan.token_keys)
        packed, index = self._packed[name]
        outputs, stats = predict(self.eval_fn, params, packed, config.eval_batch_size,
                                 self.eval_sh)
        if plan.family.packs == "tokens":
            return packing.unpack_tokens(outputs, packed, index, split.rows), stats
        return packing.unpack(outputs, index, split.rows), stats

    def evaluate(self, params: Any, name: str, split: Split) -> tuple[Any, dict]:
        """(outputs, the family's metrics with the mean loss and the split's example count)."""
        outputs, stats = self.outputs(params, name, split)
        result = self.plan.family.score(outputs, split)
        count = max(stats.get("count", 0.0), 1.0)
        result["loss"] = stats["loss_sum"] / count
        for k, v in stats.items():  # the family's extra statistics, as means per count
            if k not in ("loss_sum", "count"):
                result.setdefault(k, v / count)
        result["examples"] = split.examples
        return outputs, result


@dataclasses.dataclass
class Built:
    """Phase 2's output: the state (restored as the plan says), its steps and checkpointers."""

    state: train.TrainState
    state_sh: train.TrainState
    step_fn: Callable
    batch_sh: dict
    evaluator: Evaluator
    ckpt: ckpt_lib.Checkpointer  # the kept (best) checkpoint
    latest: ckpt_lib.Checkpointer | None  # the resumable state (training only)
    start: int
    best: dict


def build(plan: Plan, say: Callable[[str], Any]) -> Built:
    """Phase 2: the family's model born sharded, the steps jitted, the workdir made ready and
    the state restored: the kept checkpoint (eval_only), the interrupted run's (resume) or the
    encoder of ``init_from``."""
    config, workdir, chief = plan.config, plan.workdir, multihost.is_chief()
    train.use_rng_impl(config.rng_impl)  # dropout bits, as pre-training
    model = plan.family.make_model(plan.model_cfg)
    tx, schedule = optim.make_optimizer(run_settings.with_learning_rate(config, plan.lr))
    rules = tuple(tuple(r) for r in config.sharding.rules)
    state, state_sh = train.create_train_state(model, tx, plan.mesh, rules, config.seed,
                                               train.task_inputs(config.max_seq_length))
    fns = train.StepFns(model=model, mesh=plan.mesh, rules=rules, tx=tx, schedule=schedule,
                        state_shardings=state_sh)
    ckpt_dir, latest_dir = (os.path.join(workdir, rundir.CHECKPOINTS),
                            os.path.join(workdir, LATEST))
    best_path = os.path.join(workdir, "best.json")
    fs.path(os.path.join(workdir, "predictions")).mkdir(parents=True, exist_ok=True)
    if plan.overwrite and chief and not plan.eval_only:
        for path in (ckpt_dir, latest_dir):
            if fs.path(path).is_dir():
                fs.path(path).rmtree()
        for path in (best_path, os.path.join(workdir, "metrics.json")):  # an interrupted
            fs.path(path).unlink(missing_ok=True)  # rerun must not look finished
    multihost.barrier("finetune workdir ready")
    ckpt = ckpt_lib.Checkpointer(ckpt_dir, every=1, keep=1, async_save=False)
    latest = None if plan.eval_only else ckpt_lib.Checkpointer(latest_dir, every=1, keep=1,
                                                               async_save=False)
    dev = plan.evalsets["dev"]
    like = {k: np.zeros((config.global_batch_size,) + v.shape[1:], v.dtype)
            for k, v in dev.arrays.items()}
    like["example_mask"] = np.zeros(config.global_batch_size, np.float32)
    eval_like = {k: np.zeros((config.eval_batch_size,) + v.shape[1:], v.dtype)
                 for k, v in like.items()}
    targets_like = like
    if plan.slots > 1:  # packed rows: plan.rows a training step, eval_batch_size an eval one
        rows = plan.packing_plan.rows if plan.packing_plan else config.global_batch_size
        like = packing.layout(rows, plan.slots, dev.arrays, plan.token_keys)
        eval_like = packing.layout(config.eval_batch_size, plan.slots, dev.arrays,
                                   plan.token_keys)
    step_fn, eval_fn = jit_steps(fns, like, plan.family.loss_stats)
    evaluator = Evaluator(plan, eval_fn, train.batch_shardings(fns, eval_like), targets_like)
    best = {"step": None, plan.family.metric_names[0]: -math.inf}
    start = 0
    if plan.eval_only:
        state, best["step"] = ckpt.restore(ckpt_lib.abstract_like(state, state_sh))
    elif plan.resume:  # the step, optimizer state and RNG of the interrupted run, and its best
        state, start = latest.restore(ckpt_lib.abstract_like(state, state_sh))
        if fs.path(best_path).exists():
            best = json.loads(fs.path(best_path).read_text())
        say(f"resuming from step {start} (best so far: step {best['step']})")
    elif config.init_from:
        state = state.replace(params=train.restore_params(config.init_from, state.params,
                                                          state_sh.params, subtree="bert"))
    return Built(state=state, state_sh=state_sh, step_fn=step_fn,
                 batch_sh=train.batch_shardings(fns, like), evaluator=evaluator, ckpt=ckpt,
                 latest=latest, start=start, best=best)


# ------------------------------------------------------------------------------- 3. train


def _step_rows(plan: Plan, step: int) -> tuple[dict, int]:
    """This host's rows of training step ``step`` and the examples they hold: a fresh
    permutation each epoch, the same on every host, a function of (seed, step) only, so a
    resumed run sees what the uninterrupted one would have."""
    config, arrays = plan.config, plan.trainset.arrays
    if plan.packing_plan is not None:  # this step's examples, packed into plan.rows rows
        packed = plan.packing_plan.batch_arrays(arrays, step)
        return host_rows(packed, np.arange(plan.packing_plan.rows)), int(
            packed["example_mask"].sum())
    per_epoch = plan.trainset.rows // config.global_batch_size
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(plan.trainset.rows)
    rows = order[k * config.global_batch_size:(k + 1) * config.global_batch_size]
    local = host_rows(arrays, rows)
    local["example_mask"] = np.ones(len(local["input_ids"]), np.float32)
    return local, config.global_batch_size


def train_loop(plan: Plan, built: Built, writer: report.MetricsWriter,
               say: Callable[[str], Any],
               stops: multihost.StopRequests | None = None, bar: Any = None) -> dict[str, float]:
    """Phase 3: trains from ``built.start`` to the last step, evaluating dev on its cadence
    and keeping the checkpoint of the best headline metric (``built.state`` and ``built.best``
    follow). Returns the training speed (``training_speed``: none when too little training
    time was measured): from the end of the first step (compiled by then) to the end of the
    last, without the time evaluations and checkpoints take. ``bar`` (bertjax.progress.bar,
    closed by the caller) follows the steps with the loss and the last dev headline metric.

    A stop request (SIGTERM, a first Ctrl-C, a preemption another host was told of) saves the
    resumable state of the step just done and raises multihost.Stopped."""
    config, chief = plan.config, multihost.is_chief()
    family, dev, total = plan.family, plan.evalsets["dev"], config.total_steps
    head = family.metric_names[0]
    pred_dir = os.path.join(plan.workdir, "predictions")
    eval_every = config.eval_every or plan.trainset.rows // config.global_batch_size
    state, pending = built.state, None
    clock = {"t0": None, "step0": built.start, "examples": 0, "paused": 0.0}
    bar = progress.Off(built.start) if bar is None else bar
    shown = {}  # the bar's figures: the last loss read, the last dev headline metric
    for step in range(built.start, total):
        local, taken = _step_rows(plan, step)
        state, m = built.step_fn(state, multihost.global_batch(local, built.batch_sh))
        if clock["t0"] is not None:
            clock["examples"] += taken
        if pending is not None:  # step t is queued; reading t-1 does not stall the device
            values = {k: float(v) for k, v in jax.device_get(pending[1]).items()}
            if clock["t0"] is None:  # step pending[0] is done; this one is counted
                # (the evaluations before it are not inside the timed span: paused restarts)
                clock.update(t0=time.perf_counter(), step0=pending[0], examples=taken,
                             paused=0.0)
            train.check_bad_streak(
                values["bad_streak"], config.max_nonfinite_steps, pending[0],
                "no checkpoint was kept before them" if built.best["step"] is None else
                f"the best checkpoint so far (step {built.best['step']}) is kept")
            if pending[0] % config.log_every == 0:
                writer.write(pending[0], "train", values)
            shown["loss"] = f"{values['loss']:.4f}"
            bar.update(pending[0] - bar.n)
            bar.set_postfix(shown)
        pending = (step + 1, m)
        done = step + 1
        paused = time.perf_counter()
        if done % eval_every == 0 or done == total:
            jax.block_until_ready(state.params)  # the step's time is not the evaluation's
            paused = time.perf_counter()
            outputs, result = built.evaluator.evaluate(state.params, "dev", dev)
            say(f"step {done}/{total}: dev " + ", ".join(
                f"{k}={v:.4f}" for k, v in result.items()
                if k != "examples" and isinstance(v, (int, float))))
            writer.write(done, "dev", result)
            writer.flush()
            shown[f"dev_{head}"] = f"{result[head]:.4f}"
            bar.set_postfix(shown)
            # The first evaluation is always kept; later ones only when strictly better
            # (a nan correlation, from constant predictions, never is).
            if built.best["step"] is None or result[head] > built.best[head]:
                built.best = {"step": done, **result}
                built.ckpt.save(done, state, config, force=True)
                if chief:
                    family.write_predictions(pred_dir, "dev", outputs, dev)
                    _json(os.path.join(plan.workdir, "best.json"), built.best)
        stop = done < total and (
            (stops is not None and stops.requested) or built.latest.reached_preemption(done))
        if stop or (done % max(config.checkpoint_every, 1) == 0 and done < total):
            built.latest.save(done, state, config, force=True)
        if stop:
            built.ckpt.close()
            built.latest.close()
            writer.flush()
            name = (stops.signal if stops is not None else None) or "SIGTERM"
            raise multihost.Stopped(
                f"stopped by {name}: saved step {done} in {plan.workdir}; run the same command "
                "to resume from it", 130 if name == "SIGINT" else 0)
        clock["paused"] += time.perf_counter() - paused
    bar.update(total - bar.n)
    bar.close()  # before the speed line (closing twice is harmless)
    built.ckpt.wait()
    built.state = state
    if clock["t0"] is None or total <= clock["step0"]:
        return {}
    steps, seconds = total - clock["step0"], time.perf_counter() - clock["t0"] - clock["paused"]
    speed = training_speed(steps, clock["examples"], seconds)
    if speed:
        say(f"training: {speed['train_steps_per_second']:.2f} steps/s, "
            f"{speed['train_examples_per_second']:.1f} examples/s")
    else:
        say(f"training: no speed reported ({steps} timed steps took {max(seconds, 0.0):.3f} s "
            "besides evaluation, too short to measure)")
    return speed


MIN_TIMED_SECONDS = 0.05  # less measured training time gives no speed (noise, not a rate)


def training_speed(steps: int, examples: int, seconds: float) -> dict[str, float]:
    """{"train_steps_per_second", "train_examples_per_second"} of ``steps`` steps holding
    ``examples`` examples in ``seconds`` of training time, or {} when that time is under
    MIN_TIMED_SECONDS (e.g. a run that evaluates after every step spends almost all of its
    time evaluating): a rate over next to no time is noise, not a speed."""
    if steps < 1 or not seconds >= MIN_TIMED_SECONDS:
        return {}
    return {"train_steps_per_second": steps / seconds,
            "train_examples_per_second": examples / seconds}


# ------------------------------------------------------------------------------ 4. report


def report_run(plan: Plan, built: Built, speed: dict, writer: report.MetricsWriter,
               say: Callable[[str], Any], seconds: float) -> dict[str, Any]:
    """Phase 4: the kept (best) checkpoint on the dev sets, and on test when given;
    predictions, metrics.json (eval_metrics.json for eval_only); the resumable state removed."""
    config, family, chief = plan.config, plan.family, multihost.is_chief()
    pred_dir = os.path.join(plan.workdir, "predictions")
    if not plan.eval_only and built.best["step"] not in (None, config.total_steps):
        built.state, _ = built.ckpt.restore(ckpt_lib.abstract_like(built.state, built.state_sh))
    summary: dict[str, Any] = {"task": plan.task_name, "family": family.name, **speed}
    if plan.packing_plan is not None:
        summary["rows_per_step"] = plan.packing_plan.rows
    for name, split in plan.evalsets.items():
        outputs, summary[name] = built.evaluator.evaluate(built.state.params, name, split)
        if chief:
            family.write_predictions(pred_dir, name, outputs, split)
    if plan.testset is not None:
        test_out, _ = built.evaluator.outputs(built.state.params, "test", plan.testset)
        if chief:
            family.write_predictions(pred_dir, "test", test_out, plan.testset)
    built.ckpt.close()
    if built.latest is not None:
        built.latest.close()
        multihost.barrier("finetune finished")
        latest_dir = os.path.join(plan.workdir, LATEST)
        if chief and fs.path(latest_dir).is_dir():  # finished: nothing left to resume
            fs.path(latest_dir).rmtree()
    head = family.metric_names[0]
    summary.update({"headline": head, "best_step": built.best["step"],
                    "steps": config.total_steps,
                    "train_examples": 0 if plan.trainset is None else plan.trainset.examples,
                    "init_from": config.init_from or None, "seconds": seconds})
    if chief:
        _json(os.path.join(plan.workdir,
                           "eval_metrics.json" if plan.eval_only else "metrics.json"), summary)
        writer.flush()
        curves = None if plan.eval_only else report.plot_finetune_curves(plan.workdir, head)
        extra = "".join(f", {name} {head} {summary[name][head]:.4f}" for name in plan.evalsets
                        if name != "dev")
        say(f"dev {head} {summary['dev'][head]:.4f}{extra} (checkpoint of step "
            f"{built.best['step']}); predictions in {pred_dir}"
            + (f"; curves in {curves}" if curves else ""))
    return summary


def _json(path: str, value: Any) -> None:
    fs.write_atomic(path, json.dumps(value, indent=2))


def pad_targets(arrays: dict[str, np.ndarray], like: dict[str, np.ndarray]) -> dict:
    """An unlabelled split may lack targets the eval step reads: zeros stand in for them."""
    n = len(arrays["input_ids"])
    return {**{k: np.zeros((n,) + v.shape[1:], v.dtype) for k, v in like.items()
               if k not in arrays and k != "example_mask"}, **arrays}


# --------------------------------------------------------------------------------- the run


def run(config: Any, workdir: str, family: Family, eval_only: bool = False,
        overwrite: bool = False, tag: str = "") -> dict[str, Any]:
    """Fine-tunes (or, ``eval_only``, evaluates the best checkpoint of) one task.

    Args:
      config: a fine-tuning config (configs/glue.py, configs/ner.py, ...); not changed.
      workdir: checkpoints/, predictions/, metrics.json and metrics.jsonl go here.
      family: the task family (bertjax.finetuning.families.get).
      eval_only: evaluate the workdir's kept checkpoint on dev (and test) instead of training.
      overwrite: replace the checkpoints of an earlier fine-tuning in ``workdir``.
      tag: printed before each line (e.g. "scratch").

    Returns:
      {"task", "family", "dev": metrics, ("dev_mismatched": metrics), "headline", "best_step",
      "steps", "train_examples", "init_from", "seconds"}, as written to metrics.json.
    """
    t_start = time.perf_counter()
    chief = multihost.is_chief()
    # (above an open progress bar, not into it)
    say = (lambda s: progress.echo(f"[{tag}] {s}" if tag else s)) if chief else (lambda s: 0)
    plan = settle(config, workdir, family, eval_only, overwrite)
    describe(plan, say)
    # From here on the workdir is written: one process at a time.
    with lock.hold(workdir, chief=chief), multihost.StopRequests() as stops:
        console.log_to(workdir)  # checked and locked: the libraries' lines go to WORKDIR/logs
        built = build(plan, say)
        writer = report.MetricsWriter(workdir, enabled=chief and not eval_only,
                                      tensorboard=bool(plan.config.get("tensorboard", True)))
        with progress.bar(plan.config.total_steps, "step", f"[{tag}] finetune" if tag else
                          "finetune", initial=built.start, chief=chief,
                          wanted=not eval_only and plan.config.get("progress_bar", True)) as bar:
            speed = {} if eval_only else train_loop(plan, built, writer, say, stops, bar)
        return report_run(plan, built, speed, writer, say, time.perf_counter() - t_start)
