"""Sequence classification and regression: the head, the loss, the jitted steps and the loop.

The fine-tuning run, in phases (``run``):

  1. check    task, files, labels, workdir: everything is read and featurised before anything
              is compiled, so a bad row stops the run with one line (DataError);
  2. build    the mesh, ``SequenceClassifier`` (BertModel + dropout + dense on the pooled output,
              1 unit and MSE for regression) born sharded by the same logical rules as
              pre-training; the encoder's parameters restored from ``config.init_from``
              (sizes, sharded state and restore: bertjax/tasks/encoder.py);
  3. train    AdamW with warmup + linear decay (bertjax.optim); dev evaluation on a cadence;
              the checkpoint of the best dev headline metric is the only one kept;
  4. report   dev metrics (printed, metrics.json), GLUE-style prediction TSVs (index, prediction).

Evaluation pads the last batch with rows whose ``example_mask`` is 0, so every host runs the same
number of steps and no example is dropped or counted twice; the per-example outputs are gathered
(replicated) and scored once over the whole set by bertjax.tasks.metrics.

TensorFlow is not imported here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from typing import Any, Callable

import flax.linen as nn
import ml_collections
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax import checkpoint as ckpt_lib
from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import multihost
from bertjax import optim
from bertjax import sharding
from bertjax import train
from bertjax.data import tasks as readers
from bertjax.data.errors import DataError
from bertjax.tasks import encoder
from bertjax.tasks import features
from bertjax.tasks import metrics as metrics_lib

Batch = dict[str, jax.Array]


# ------------------------------------------------------------------------------------ model


class SequenceClassifier(nn.Module):
    """BERT encoder, dropout on the pooled [CLS] vector, then a dense layer to the outputs.

    The encoder is named ``bert`` as in BertForPreTraining, so pre-trained encoder parameters
    restore into it by name; the head (``classifier``) is always freshly initialised.
    """

    cfg: model_lib.BertConfig
    num_outputs: int
    head_dropout: float = 0.1

    @nn.compact
    def __call__(self, input_ids: jax.Array, input_mask: jax.Array, segment_ids: jax.Array,
                 deterministic: bool = True) -> jax.Array:
        """Returns float32 [B, num_outputs]: class logits, or the score for regression."""
        _, pooled = model_lib.BertModel(self.cfg, name="bert")(
            input_ids, input_mask, segment_ids, deterministic=deterministic)  # [B, D]
        pooled = nn.Dropout(self.head_dropout)(pooled, deterministic=deterministic)
        init = nn.initializers.truncated_normal(stddev=self.cfg.initializer_range)
        out = nn.Dense(self.num_outputs, dtype=self.cfg.compute_dtype,
                       param_dtype=self.cfg.weight_dtype,
                       kernel_init=nn.with_logical_partitioning(init, ("embed", "classes")),
                       bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                              ("classes",)),
                       name="classifier")(pooled)
        return out.astype(jnp.float32)  # [B, C]


# ------------------------------------------------------------------------------------- task


@dataclasses.dataclass(frozen=True)
class Task:
    """What the loop needs to know about a task; GLUE tasks come from the metrics table."""

    name: str
    labels: tuple[str, ...] | None  # None: regression
    metric_names: tuple[str, ...]  # the first is the headline (best-checkpoint) metric
    glue: bool

    @property
    def regression(self) -> bool:
        return self.labels is None

    @property
    def num_outputs(self) -> int:
        return 1 if self.labels is None else len(self.labels)


def resolve_task(config: Any) -> Task:
    """The Task of ``config.task``: a GLUE name, or "custom"/"demo" described by config.data."""
    d = config.data
    if config.task in ("custom", "demo"):
        labels = tuple(x.strip() for x in d.labels.split(",") if x.strip())
        if not d.regression and len(labels) < 2:
            raise config_lib.ConfigError(
                f"config.data.labels={d.labels!r}; a classification task needs at least two "
                "labels, comma-separated in class-id order (e.g. --config.data.labels=neg,pos), "
                "or --config.data.regression=True")
        if d.regression:
            return Task(config.task, None, ("pearson", "spearman"), glue=False)
        names = ("accuracy", "f1") if len(labels) == 2 else ("accuracy",)
        return Task(config.task, labels, names, glue=False)
    try:
        spec = metrics_lib.glue_task(config.task)
    except ValueError as e:
        raise config_lib.ConfigError(f"config.task={config.task!r}: {e}, or 'custom'") from None
    return Task(spec.name, spec.labels, spec.metrics, glue=True)


def read_split(config: Any, task: Task, path: str, labelled: bool = True) -> list[dict]:
    """Reads one data file of the task (GLUE TSV, or the user's CSV/TSV/JSONL columns)."""
    if task.glue:
        return readers.read_glue(path, task.name)
    d = config.data
    if not d.text_a:
        raise config_lib.ConfigError("config.data.text_a is empty; name the text column of "
                                     f"{path} (e.g. --config.data.text_a=sentence)")
    return readers.read_table(path, d.text_a, d.text_b or None,
                              (d.label or None) if labelled else None,
                              labels=task.labels, regression=task.regression,
                              file_format=d.format or None)


def score(task: Task, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics over the whole gathered set (outputs: [N, C] logits or [N, 1])."""
    preds = outputs[:, 0] if task.regression else outputs.argmax(-1)
    if task.glue:
        return metrics_lib.glue_metrics(task.name, preds, labels)
    fns = {"accuracy": metrics_lib.accuracy, "f1": metrics_lib.f1,
           "pearson": metrics_lib.pearson, "spearman": metrics_lib.spearman}
    return {m: fns[m](preds, labels) for m in task.metric_names}


# ------------------------------------------------------------------------------------ steps


def loss_stats(outputs: jax.Array, labels: jax.Array, mask: jax.Array,
               regression: bool) -> dict[str, jax.Array]:
    """(sum, count) statistics: cross-entropy (or squared error) summed over real examples."""
    mask = mask.astype(jnp.float32)
    if regression:
        per = jnp.square(outputs[:, 0] - labels.astype(jnp.float32))  # [B]
        correct = jnp.zeros_like(per)
    else:
        per = optax.softmax_cross_entropy_with_integer_labels(outputs, jnp.maximum(labels, 0))
        correct = (outputs.argmax(-1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(per * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}


def train_step(state: train.TrainState, batch: Batch, fns: train.StepFns,
               regression: bool) -> tuple[train.TrainState, dict]:
    """One AdamW step on the mean loss over the batch's real examples (pure)."""
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        out = fns.model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                              batch["segment_ids"], deterministic=False, rngs={"dropout": rng})
        stats = loss_stats(out, batch["label"], batch["example_mask"], regression)
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
    return new, {"loss": loss, "accuracy": stats["correct"] / jnp.maximum(stats["count"], 1.0),
                 "learning_rate": fns.schedule(state.step), "bad_streak": new.bad_streak}


def eval_step(params: Any, batch: Batch, fns: train.StepFns, regression: bool) -> dict:
    """Per-example outputs (to gather) and (sum, count) loss statistics of one batch."""
    out = fns.model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                          batch["segment_ids"], deterministic=True)
    return {"outputs": out, **loss_stats(out, batch["label"], batch["example_mask"], regression)}


def _with_rules(fn: Callable, fns: train.StepFns, regression: bool) -> Callable:
    """Traces ``fn`` with the activation rules active (the model's constraints resolve)."""
    @functools.wraps(fn)
    def wrapped(*args):
        with sharding.activation_rules(fns.mesh, fns.rules):
            return fn(*args, fns, regression)
    return wrapped


def jit_steps(fns: train.StepFns, batch_like: dict, regression: bool) -> tuple[Callable, Callable]:
    """The jitted train step (state donated) and eval step; eval outputs come back replicated
    so every host holds the whole batch's predictions."""
    repl = sharding.replicated(fns.mesh)
    batch_sh = train.batch_shardings(fns, batch_like)
    step = jax.jit(_with_rules(train_step, fns, regression),
                   in_shardings=(fns.state_shardings, batch_sh),
                   out_shardings=(fns.state_shardings, repl), donate_argnums=(0,))
    evaluate_ = jax.jit(_with_rules(eval_step, fns, regression),
                        in_shardings=(fns.state_shardings.params, batch_sh), out_shardings=repl)
    return step, evaluate_


# ------------------------------------------------------------------------------------- data


def host_rows(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """This host's share of a global batch given the global batch's row indices: host i takes
    the i-th contiguous block, matching multihost.global_batch's process-order assembly."""
    n, i = multihost.process_count(), multihost.process_index()
    local = len(rows) // n
    mine = rows[i * local:(i + 1) * local]
    return {k: v[mine] for k, v in arrays.items()}


def eval_batches(data: dict[str, np.ndarray], global_batch: int):
    """Yields this host's rows of each padded global eval batch, with example_mask.

    The set is padded up to a whole number of global batches with copies of row 0 whose mask
    is 0, so every host runs ceil(N / global_batch) steps and each example appears once.
    """
    n = len(data["label"])
    steps = max(1, math.ceil(n / global_batch))
    padded = {k: np.concatenate([v, np.repeat(v[:1], steps * global_batch - n, axis=0)])
              if n else np.zeros((steps * global_batch,) + v.shape[1:], v.dtype)
              for k, v in data.items()}
    padded["example_mask"] = (np.arange(steps * global_batch) < n).astype(np.float32)
    for s in range(steps):
        yield host_rows(padded, np.arange(s * global_batch, (s + 1) * global_batch))


def predict(eval_fn: Callable, params: Any, data: dict[str, np.ndarray], global_batch: int,
            batch_sh: dict) -> tuple[np.ndarray, dict[str, float]]:
    """Outputs of every example in order ([N, C]) and the summed loss statistics."""
    outs, total = [], {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for b in eval_batches(data, global_batch):
        r = jax.device_get(eval_fn(params, multihost.global_batch(b, batch_sh)))
        outs.append(np.asarray(r["outputs"]))
        for k in total:
            total[k] += float(r[k])
    n = len(data["label"])
    return np.concatenate(outs)[:n], total


# -------------------------------------------------------------------------------------- run


def _resolved(config: Any, train_size: int) -> tuple[int, int]:
    """(total steps, warmup steps) from epochs and the warmup fraction when not given."""
    steps = config.total_steps or max(1, int(config.num_epochs * train_size
                                             // config.global_batch_size))
    warmup = (config.optim.warmup_steps if config.optim.warmup_steps >= 0
              else int(config.warmup_fraction * steps))
    return steps, min(warmup, steps)


def _write_predictions(path: str, task: Task, outputs: np.ndarray) -> None:
    """GLUE submission style: a header, then index<TAB>prediction (label name or score)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("index\tprediction\n")
        for i, row in enumerate(outputs):
            value = f"{row[0]:.6f}" if task.regression else task.labels[int(row.argmax())]
            f.write(f"{i}\t{value}\n")
    os.replace(tmp, path)


def _json(path: str, value: Any) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


def run(config: Any, workdir: str, eval_only: bool = False, overwrite: bool = False,
        tag: str = "") -> dict[str, Any]:
    """Fine-tunes (or, ``eval_only``, evaluates the best checkpoint of) one task.

    Args:
      config: a finetune config (configs/glue.py, configs/demo.py).
      workdir: checkpoints/, predictions/, metrics.json and metrics.jsonl go here.
      eval_only: evaluate the workdir's kept checkpoint on dev (and test) instead of training.
      overwrite: replace the checkpoints of an earlier fine-tuning in ``workdir``.
      tag: printed before each line (e.g. "scratch").

    Returns:
      {"dev": metrics, "best_step", "headline", "steps", "seconds", "train_examples"}.
    """
    t_start = time.perf_counter()
    chief = multihost.is_chief()
    say = (lambda s: print(f"[{tag}] {s}" if tag else s, flush=True)) if chief else (lambda s: 0)
    # 1. check: config, files, labels and tokenizer, all before compiling or writing
    ckpt_dir = os.path.join(workdir, "checkpoints")
    saved = features.latest_saved_config(workdir)
    if eval_only:
        if saved is None:
            raise config_lib.ConfigError(f"--workdir={workdir} holds no fine-tuned checkpoint "
                                         "to evaluate; run without --eval_only first")
        # The fine-tuned model is what the workdir says it is, whatever this command line says.
        with config.unlocked():
            config.task = saved.get("task", config.task)
            config.init_from = saved.get("init_from", "")
            config.tokenizer = saved.get("tokenizer", "") or config.tokenizer
            config.model = ml_collections.ConfigDict(saved["model"])
            for key, value in saved.get("data", {}).items():  # files the command leaves out
                if key in config.data and not config.data[key] and value:
                    config.data[key] = value
    else:
        if saved is not None and not overwrite:
            raise config_lib.ConfigError(f"--workdir={workdir} already holds a fine-tuned model; "
                                         "use --eval_only, another workdir, or --overwrite")
        if config.init_from and not os.path.isdir(config.init_from):
            raise config_lib.ConfigError(f"config.init_from={config.init_from!r} does not exist; "
                                         "give a pre-training workdir or an import")
    task = resolve_task(config)
    d = config.data
    if not eval_only and not d.train:
        raise config_lib.ConfigError("config.data.train is empty; pass the training file "
                                     "(--config.data.train=PATH)")
    if not d.dev:
        raise config_lib.ConfigError("config.data.dev is empty; pass the dev file "
                                     "(--config.data.dev=PATH)")
    for key in ("train", "dev", "test"):
        if d[key] and not os.path.isfile(d[key]) and not (key == "train" and eval_only):
            raise config_lib.ConfigError(f"config.data.{key}={d[key]!r} does not exist")
    if not config.init_from and not config.tokenizer:
        raise config_lib.ConfigError("no tokenizer: set config.init_from (a workdir whose "
                                     "tokenizer is used) or config.tokenizer=PATH")
    casing = {"": None, "true": True, "false": False}.get(str(config.do_lower_case).lower())
    tok = features.load_tokenizer(config.init_from, config.tokenizer, casing)
    model_cfg = (config_lib.model_config(config) if eval_only  # as the workdir recorded it
                 else encoder.model_config_for(config))
    encoder.record_model(config, model_cfg)
    with config.unlocked():
        config.tokenizer = tok.path  # saved with the checkpoint: eval_only needs no init_from
    if tok.vocab_size > model_cfg.vocab_size:
        raise config_lib.ConfigError(f"tokenizer {tok.source} has {tok.vocab_size} tokens but "
                                     f"the model only {model_cfg.vocab_size}; use the "
                                     "checkpoint's own tokenizer")
    mesh = encoder.check_mesh(config, model_cfg)
    regression = task.regression
    dev = features.encode(read_split(config, task, d.dev), tok, config.max_seq_length,
                          regression)
    if regression and np.isnan(dev["label"]).any() or not regression and (dev["label"] < 0).any():
        raise DataError(f"{d.dev}: the dev file has rows without a label; it must be labelled")
    test_examples = read_split(config, task, d.test, labelled=False) if d.test else None
    trainset = None
    if not eval_only:
        trainset = features.encode(read_split(config, task, d.train), tok,
                                   config.max_seq_length, regression)
        if len(trainset["label"]) < config.global_batch_size:
            raise config_lib.ConfigError(
                f"{d.train} has {len(trainset['label'])} examples, fewer than "
                f"config.global_batch_size={config.global_batch_size}; lower the batch size")
    total_steps, warmup = _resolved(config, len(trainset["label"]) if trainset else 1)
    with config.unlocked():
        config.total_steps = total_steps
        config.optim.warmup_steps = warmup
    say(f"task {task.name}: {0 if trainset is None else len(trainset['label'])} train / "
        f"{len(dev['label'])} dev examples, tokenizer {tok.source}, encoder "
        f"{'from ' + config.init_from if config.init_from else 'random init'}")

    # 2. build
    os.makedirs(os.path.join(workdir, "predictions"), exist_ok=True)
    model = SequenceClassifier(model_cfg, task.num_outputs, config.head_dropout)
    tx, schedule = optim.make_optimizer(config)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    state, state_sh = encoder.create_state(model, tx, mesh, rules, config.seed,
                                           config.max_seq_length)
    fns = train.StepFns(model=model, tx=tx, schedule=schedule, mesh=mesh, rules=rules,
                        state_shardings=state_sh)
    if overwrite and chief and os.path.isdir(ckpt_dir) and not eval_only:
        shutil.rmtree(ckpt_dir)
    multihost.barrier("finetune workdir ready")
    ckpt = ckpt_lib.Checkpointer(ckpt_dir, every=1, keep=1, async_save=False)
    like = {k: np.zeros((config.global_batch_size,) + v.shape[1:], v.dtype)
            for k, v in dev.items()}
    like["example_mask"] = np.zeros(config.global_batch_size, np.float32)
    eval_like = {k: np.zeros((config.eval_batch_size,) + v.shape[1:], v.dtype)
                 for k, v in like.items()}
    step_fn, eval_fn = jit_steps(fns, like, regression)
    batch_sh = train.batch_shardings(fns, like)
    eval_sh = train.batch_shardings(fns, eval_like)

    def evaluate(params, data):
        outputs, stats = predict(eval_fn, params, data, config.eval_batch_size, eval_sh)
        result = score(task, outputs, data["label"])
        result["loss"] = stats["loss_sum"] / max(stats["count"], 1.0)
        result["examples"] = int(stats["count"])
        return outputs, result

    head = task.metric_names[0]
    best = {"step": None, head: -math.inf}
    log = open(os.path.join(workdir, "metrics.jsonl"), "a") if chief else None
    if eval_only:
        abstract = ckpt_lib.abstract_like(state, state_sh)
        del state
        state, best["step"] = ckpt.restore(abstract)
    else:
        if config.init_from:
            state = encoder.restore_encoder(config.init_from, state, state_sh)
        # 3. train: a fresh permutation each epoch, the same on every host
        n = len(trainset["label"])
        per_epoch = n // config.global_batch_size
        eval_every = config.eval_every or per_epoch
        pending = None
        for step in range(total_steps):
            epoch, k = divmod(step, per_epoch)
            order = np.random.default_rng([config.seed, epoch]).permutation(n)
            rows = order[k * config.global_batch_size:(k + 1) * config.global_batch_size]
            local = host_rows(trainset, rows)
            local["example_mask"] = np.ones(len(local["label"]), np.float32)
            state, m = step_fn(state, multihost.global_batch(local, batch_sh))
            if pending is not None:  # step t is queued; reading t-1 does not stall the device
                values = {k_: float(v) for k_, v in jax.device_get(pending[1]).items()}
                if values["bad_streak"] >= max(config.max_nonfinite_steps, 1):
                    raise config_lib.ConfigError(
                        f"{int(values['bad_streak'])} steps in a row up to step {pending[0]} had "
                        "a non-finite loss; lower config.optim.lr")
                if pending[0] % config.log_every == 0 and log:
                    log.write(json.dumps({"step": pending[0], "split": "train", **values}) + "\n")
            pending = (step + 1, m)
            done = step + 1
            if done % eval_every == 0 or done == total_steps:
                outputs, result = evaluate(state.params, dev)
                say(f"step {done}/{total_steps}: dev " + ", ".join(
                    f"{k_}={v:.4f}" for k_, v in result.items() if k_ != "examples"))
                if log:
                    log.write(json.dumps({"step": done, "split": "dev", **result}) + "\n")
                    log.flush()
                # The first evaluation is always kept; later ones only when strictly better
                # (a nan correlation, from constant predictions, never is).
                if best["step"] is None or result[head] > best[head]:
                    best = {"step": done, **result}
                    ckpt.save(done, state, config, force=True)
                    if chief:
                        _write_predictions(os.path.join(workdir, "predictions", "dev.tsv"),
                                           task, outputs)
        ckpt.wait()
        if best["step"] is not None and best["step"] != total_steps or test_examples:
            abstract = ckpt_lib.abstract_like(state, state_sh)
            del state
            state, _ = ckpt.restore(abstract)
    # 4. report: the kept (best) checkpoint on dev, and on test when given
    outputs, result = evaluate(state.params, dev)
    if chief:
        _write_predictions(os.path.join(workdir, "predictions", "dev.tsv"), task, outputs)
    if test_examples:
        test = features.encode(test_examples, tok, config.max_seq_length, regression)
        test_out, _ = predict(eval_fn, state.params, test, config.eval_batch_size, eval_sh)
        if chief:
            _write_predictions(os.path.join(workdir, "predictions", "test.tsv"), task, test_out)
    ckpt.close()
    summary = {"task": task.name, "dev": result, "headline": head, "best_step": best["step"],
               "steps": total_steps, "train_examples": 0 if trainset is None else
               len(trainset["label"]), "init_from": config.init_from or None,
               "seconds": time.perf_counter() - t_start}
    if chief:
        _json(os.path.join(workdir, "eval_metrics.json" if eval_only else "metrics.json"),
              summary)
        log.close() if log else None
        say(f"dev {head} {result[head]:.4f} (checkpoint of step {best['step']}); "
            f"predictions in {os.path.join(workdir, 'predictions')}")
    return summary
