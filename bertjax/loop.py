"""The pre-training loop, in readable phases (``run``):

  1. check     config, data config and workdir, before anything is compiled or written; the
               workdir is then locked against a second process (bertjax.rundir.lock);
  2. build     mesh, the train state born sharded, input iterators;
  3. restore   the latest complete checkpoint of this workdir (exact resume), else
               ``config.init_from`` parameters (the model's sizes, vocabulary and tokenizer
               follow that run: ``follow_init_from``; its held-out MLM accuracy is evaluated
               at step 0), else the fresh initialisation;
  4. compile   the train and eval steps ahead of time; memory analysis logged before step 0;
  5. train     dispatch step t, then read step t-1's metrics (never block the device); evaluate
               and checkpoint on their cadences; SIGTERM (or a first Ctrl-C) finishes the step,
               saves it and stops with multihost.Stopped (exit 0; 130 after Ctrl-C);
  6. report    final evaluation, summary, curves.png.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import numpy as np
from etils import epath  # local paths and gs:// alike

from bertjax import checkpoint as ckpt_lib
from bertjax import config as config_lib
from bertjax import console
from bertjax import inputs
from bertjax import lock
from bertjax import model as model_lib
from bertjax import multihost
from bertjax import progress as progress_lib
from bertjax import report
from bertjax import rundir
from bertjax import sharding
from bertjax import train
from bertjax.bench import flops as flops_lib


def check_writable(workdir: str) -> None:
    """Creates the workdir and proves it writable, or stops with one line."""
    try:
        root = epath.Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write_probe_{multihost.process_index()}"
        probe.write_text("")
        probe.unlink()
    except Exception as e:  # OSError locally, the filesystem's own errors for gs://
        raise config_lib.ConfigError(f"--workdir={workdir} is not writable "
                                     f"({getattr(e, 'strerror', None) or type(e).__name__}); "
                                     "choose a directory you can write to") from None


def open_checkpoints(workdir: str, config: Any,
                     allow_config_change: bool) -> ckpt_lib.Checkpointer:
    """Opens the workdir's checkpoints; refuses a workdir of a different run."""
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint_every,
                                 config.keep_checkpoints, config.keep_period or None,
                                 config.async_checkpoints)
    saved = ckpt.saved_config()
    if saved is not None and not allow_config_change:
        diffs = ckpt_lib.config_differences(saved, ckpt_lib.config_to_json(config))
        if diffs:
            ckpt.close()
            raise config_lib.ConfigError(
                f"--workdir={workdir} holds a run with a different config ({'; '.join(diffs[:3])}"
                f"{' ...' if len(diffs) > 3 else ''}); use another workdir or pass "
                "--allow_config_change to resume it with the new values")
    return ckpt


# What a continued run takes from the run it starts from: everything that shapes a parameter
# (config.model keeps the numerics, dropout and layout: dtype, scan_layers, remat, ...).
MODEL_SHAPE = ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size",
               "max_position_embeddings", "type_vocab_size", "hidden_act", "tie_word_embeddings")


def follow_init_from(config: Any) -> rundir.Run:
    """The run ``config.init_from`` names, with ``config.model`` set to its shape (sizes,
    vocabulary, activation, tied decoder or not), so continuing an import needs no sizes restated.

    A config that already describes that shape is left as it is (so a phase-2 config, or a run
    started before this rule, resumes with the config it saved).

    Raises:
      ConfigError: one line when ``init_from`` is missing, holds no checkpoint, or has a
        LayerNorm epsilon the run config cannot express.
    """
    run = rundir.resolve(config.init_from)  # a missing or empty one stops here, in one line
    want = run.model_config()
    have = config_lib.model_config(config)
    if want.layer_norm_eps != have.layer_norm_eps:
        raise config_lib.ConfigError(
            f"config.init_from={config.init_from} has layer_norm_eps={want.layer_norm_eps}, but a "
            f"pre-training config builds {have.layer_norm_eps}; continue a model with BERT's "
            "epsilon, or fine-tune this one instead")
    if all(getattr(want, k) == getattr(have, k) for k in MODEL_SHAPE):
        return run
    m = config.model
    sizes = (want.num_layers, want.hidden_size, want.num_heads)
    m.preset = next((name for name, s in model_lib.PRESETS.items()
                     if s == sizes and want.intermediate_size == 4 * want.hidden_size), "custom")
    for key in MODEL_SHAPE:
        m[key] = getattr(want, key)
    return run


def init_from_line(config: Any, run: rundir.Run) -> str:
    """The line a run started from ``init_from`` prints: what it continues and, for an import
    that lacked them (a BertModel checkpoint), that its pre-training heads start fresh."""
    m = config.model
    line = (f"continuing {run.kind} {config.init_from} (step {run.step}): {m.num_layers} layers, "
            f"hidden {m.hidden_size}, {m.num_heads} heads, vocab {m.vocab_size}")
    fresh = run.initialised()
    heads = [what for what, prefix in (("the MLM transform", "mlm/transform"),
                                       ("the MLM output bias", "mlm_bias"),
                                       ("the NSP head", "nsp/")) if any(
                                           p.startswith(prefix) for p in fresh)]
    if heads:
        tied = ("the MLM decoder tied to its word embeddings" if m.tie_word_embeddings else
                "the MLM decoder a matrix of its own")
        line += (f"; it has no pre-training heads: {', '.join(heads)} start fresh, {tied}")
    return line


def init_params_from(path: str, state: train.TrainState, shardings: Any) -> train.TrainState:
    """Replaces the parameters with those of another bertjax run (fresh optimizer and step)."""
    return state.replace(params=train.restore_params(path, state.params, shardings.params))


def host_facts(config: Any) -> dict[str, Any]:
    """What every host must agree on: each config value, the code, the data files."""
    import hashlib

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"config.{prefix}{k}", v

    facts = dict(flat(ckpt_lib.config_to_json(config)))
    pkg = os.path.dirname(os.path.abspath(__file__))
    code = hashlib.sha256()
    for root, _, files in sorted(os.walk(pkg)):
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(root, name), "rb") as f:
                code.update(f.read())
    facts["code version"] = code.hexdigest()
    data = inputs.data_fingerprint(config)  # the same bytes on every host, local or gs://
    if data is not None:
        facts["data"] = data
    return facts


def evaluate(eval_fn, params, it, shardings) -> dict[str, float]:
    """One pass over the fixed eval set; sums first, then ratios."""
    it.reset()
    total = None
    for batch in it:
        stats = eval_fn(params, multihost.global_batch(batch, shardings))
        total = stats if total is None else jax.tree.map(lambda a, b: a + b, total, stats)
    t = {k: float(v) for k, v in jax.device_get(total).items()}
    out = {"mlm_loss": t["mlm_loss_sum"] / max(t["mlm_count"], 1),
           "mlm_accuracy": t["mlm_correct"] / max(t["mlm_count"], 1),
           "masked_tokens": t["mlm_count"]}
    if t["nsp_count"]:
        out["nsp_loss"] = t["nsp_loss_sum"] / t["nsp_count"]
        out["nsp_accuracy"] = t["nsp_correct"] / t["nsp_count"]
    out["loss"] = out["mlm_loss"] + out.get("nsp_loss", 0.0)
    return out


def majority_baseline(it) -> float:
    """Accuracy of always predicting the eval set's most frequent masked token (this host)."""
    it.reset()
    counts: dict[int, float] = {}
    for b in it:
        w = b["masked_lm_weights"]
        if "example_mask" in b:
            w = w * b["example_mask"][:, None]
        ids, n = np.unique(b["masked_lm_ids"][w > 0], return_counts=True)
        for i, c in zip(ids, n):
            counts[int(i)] = counts.get(int(i), 0) + int(c)
    total = sum(counts.values())
    return max(counts.values()) / total if total else 0.0


def _finished(workdir: str, step: int, total_steps: int, chief: bool) -> dict[str, Any]:
    """The result of a run that has nothing left to do: its last logged metrics, reported."""
    rows = report.read_metrics(workdir)
    last = {split: next(({k: v for k, v in r.items() if k not in ("step", "split")}
                         for r in reversed(rows) if r.get("split") == split), {})
            for split in ("train", "eval")}
    flops, mfu = last["train"].get("model_flops_per_s_per_device"), last["train"].get("mfu")
    if chief:
        lines = {"workdir": workdir, "steps": f"{step} / {total_steps} (finished earlier; "
                 "raise --config.total_steps to train on)"}
        if "loss" in last["train"]:
            lines["final train loss"] = f"{last['train']['loss']:.4f}"
        for key, name in (("loss", "eval loss"), ("mlm_accuracy", "eval MLM accuracy"),
                          ("nsp_accuracy", "eval NSP accuracy")):
            if key in last["eval"]:
                lines[name] = f"{last['eval'][key]:.4f}"
        if flops is not None:  # at its last logged step (older runs did not log it)
            lines["model FLOP/s per device"] = flops_lib.utilization_line(flops, mfu, None)
        lines["metrics"] = os.path.join(workdir, "metrics.jsonl")
        print(report.summary(lines), flush=True)
    return {"step": step, "train": last["train"], "eval": last["eval"], "tokens_per_s": 0.0,
            "data_wait_share": 0.0, "model_flops_per_s_per_device": flops, "mfu": mfu}


def _memory_line(compiled: Any) -> str:
    # the same figures bertjax.bench.plan reports for a compiled step
    return train.memory_line(train.compiled_memory(compiled))


def _restore(config: Any, workdir: str, ckpt: ckpt_lib.Checkpointer, state: train.TrainState,
             fns: train.StepFns, train_it: Any) -> tuple[train.TrainState, int]:
    """Phase 3: the newest complete checkpoint of this workdir (state and the data iterator,
    exactly), else ``config.init_from``'s parameters, else the fresh state; (state, step)."""
    start = ckpt.latest_step()
    if start is None:
        if config.init_from:
            if multihost.is_chief():
                print(init_from_line(config, rundir.resolve(config.init_from)), flush=True)
            state = init_params_from(config.init_from, state, fns.state_shardings)
        return state, 0
    abstract = ckpt_lib.abstract_like(state, fns.state_shardings)
    del state  # free the fresh init before the restored copy arrives
    state, start = ckpt.restore(abstract, train_it)
    logging.info("resumed from step %d of %s", start, workdir)
    if multihost.is_chief():
        print(f"resuming from checkpoint step {start} in {workdir}", flush=True)
    return state, start


def _compile(fns: train.StepFns, state: train.TrainState, first: dict, eval_it: Any,
             chief: bool) -> tuple[Any, dict, Any, dict]:
    """Phase 4: the train step compiled ahead of time on the first batch (memory analysis
    printed before step 0) and the eval step jitted; (step, its batch shardings, eval step,
    its batch shardings)."""
    def global_like(batch):
        return {k: np.zeros((v.shape[0] * multihost.process_count(),) + v.shape[1:], v.dtype)
                for k, v in batch.items()}

    like = global_like(first)
    batch_sh = train.batch_shardings(fns, like)
    t0 = time.perf_counter()
    step_fn = train.jit_train_step(fns, like).lower(
        state, multihost.global_batch(first, batch_sh)).compile()
    if chief:
        print(f"train step compiled in {time.perf_counter() - t0:.1f} s; "
              f"{_memory_line(step_fn)}", flush=True)
    eval_like = global_like(next(iter(eval_it)))
    return (step_fn, batch_sh, train.jit_eval_step(fns, eval_like),
            train.batch_shardings(fns, eval_like))


def _report(config: Any, workdir: str, mesh_shape: dict, metrics_path: str, eval_it: Any,
            result: dict[str, Any], utilization: flops_lib.Utilization) -> None:
    """Phase 6 (chief): the most-frequent-token baseline into ``result``, curves.png and the
    summary table."""
    last, last_eval = result["train"], result["eval"]
    result["majority_baseline"] = majority_baseline(eval_it)
    png = report.plot_curves(workdir, result["majority_baseline"])
    print(report.summary({
        "workdir": workdir, "steps": f"{result['step']} / {config.total_steps}",
        "model": f"{config.model.preset} ({config.model.vocab_size} vocab)",
        "mesh": mesh_shape,
        "final train loss": f"{last.get('loss', float('nan')):.4f}",
        "eval loss": f"{last_eval['loss']:.4f}",
        "eval MLM accuracy": f"{last_eval['mlm_accuracy']:.4f}",
        "most-frequent-token acc.": f"{result['majority_baseline']:.4f}",
        "eval NSP accuracy": (f"{last_eval['nsp_accuracy']:.4f}" if "nsp_accuracy" in last_eval
                              else "not trained (config.nsp=False: MLM only)"),
        "throughput": f"{result['tokens_per_s']:,.0f} tokens/s, "
                      f"{result['real_tokens_per_s']:,.0f} of them not padding "
                      f"({100 * result['padding_share']:.1f}% padding)",
        "model FLOP/s per device": utilization.line(result["model_flops_per_s_per_device"]),
        "waiting for data": f"{100 * result['data_wait_share']:.2f}% of the time",
        "curves": png, "metrics": metrics_path,
    }), flush=True)


def run(config: Any, workdir: str, allow_config_change: bool = False) -> dict[str, Any]:
    """Pre-trains (or resumes) per ``config`` in ``workdir``; returns the final summary."""
    # 1. check
    source = follow_init_from(config) if config.init_from else None
    shape = config_lib.validate(config, jax.device_count(), multihost.process_count())
    problem = None
    try:
        inputs.check(config)
        if source is not None:
            inputs.check_tokenizer(config, source.tokenizer(), config.init_from)
    except inputs.InputError as e:
        problem = str(e)
    # Files can be missing on one host only (its own disk): every host stops, naming it.
    problem = multihost.any_host_problem(problem)
    if problem:
        raise config_lib.ConfigError(problem)
    check_writable(workdir)
    with lock.hold(workdir, chief=multihost.is_chief()), multihost.StopRequests() as stops:
        return _run(config, workdir, allow_config_change, shape, stops)


def _run(config: Any, workdir: str, allow_config_change: bool, shape: tuple[int, int, int],
         stops: multihost.StopRequests) -> dict[str, Any]:
    """Phases 2-6 of ``run``, with the workdir locked and stop requests armed."""
    ckpt = open_checkpoints(workdir, config, allow_config_change)
    chief = multihost.is_chief()
    writer = report.MetricsWriter(workdir, enabled=chief)

    # 2. build (after every host agrees on config, code and data files)
    inputs.ensure_prepared(config)
    multihost.check_hosts_agree(host_facts(config))
    console.log_to(workdir)  # checked and locked: the libraries' lines go to WORKDIR/logs
    train_it, eval_it = inputs.train_iterator(config), inputs.eval_iterator(config)
    mesh = sharding.make_mesh(*shape)
    state, fns = train.build(config, mesh)

    # 3. restore
    state, start = _restore(config, workdir, ckpt, state, fns, train_it)

    if start >= config.total_steps:  # finished earlier: say so, compile nothing
        ckpt.close()
        return _finished(workdir, start, config.total_steps, chief)

    # 4. compile
    first = next(train_it)
    step_fn, batch_sh, eval_fn, eval_sh = _compile(fns, state, first, eval_it, chief)
    if start == 0 and config.init_from:  # where the continued model starts, held out
        at_start = evaluate(eval_fn, state.params, eval_it, eval_sh)
        writer.write(0, "eval", at_start)
        if chief:
            print(f"step 0 (config.init_from's parameters): held-out MLM accuracy "
                  f"{at_start['mlm_accuracy']:.4f}, MLM loss {at_start['mlm_loss']:.4f}",
                  flush=True)

    # 5. train
    tokens = config.global_batch_size * config.max_seq_length
    utilization = flops_lib.Utilization.of(config, jax.devices())  # every host's devices
    progress = progress_lib.bar(config.total_steps, "step", "pretrain", initial=start,
                                wanted=config.progress_bar, chief=chief)
    pending, last, last_eval = None, {}, {}
    data_wait, real_tokens = 0.0, 0.0
    batch = first
    t_start, step, stop = time.perf_counter(), start, False

    def drain(pending):
        nonlocal real_tokens
        s, metrics = pending
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        real_tokens += values["real_tokens"]
        elapsed = max(time.perf_counter() - t_start, 1e-9)
        rate = tokens * (s - start) / elapsed  # since this start, compile excluded
        flops = utilization.flops_per_s(real_tokens, elapsed)  # real tokens only, likewise
        values.update(tokens_per_s=rate, data_wait_share=data_wait / elapsed,
                      model_flops_per_s_per_device=flops, mfu=utilization.mfu(flops))
        if s % config.log_every == 0 or s == config.total_steps:
            writer.write(s, "train", values)
        progress.update(s - progress.n)
        progress.set_postfix(loss=f"{values['loss']:.3f}",
                             mlm_acc=f"{values['mlm_accuracy']:.3f}", tok_s=f"{rate:,.0f}")
        return values

    try:  # an error mid-loop (non-finite steps, data) prints on its own line, not the bar's
        for step in range(start, config.total_steps):
            if batch is None:
                t = time.perf_counter()
                batch = next(train_it)
                data_wait += time.perf_counter() - t
            state, metrics = step_fn(state, multihost.global_batch(batch, batch_sh))
            batch = None
            if pending is not None:  # step t is queued; reading t-1 now does not stall the device
                last = drain(pending)
                if config.max_nonfinite_steps and last["bad_streak"] >= config.max_nonfinite_steps:
                    ckpt.close()  # let an in-flight save of a good step finish first
                    kept = ckpt.latest_step()
                    train.check_bad_streak(
                        last["bad_streak"], config.max_nonfinite_steps, pending[0],
                        "no checkpoint was saved before them" if kept is None else
                        f"the run stops with its last checkpoint (step {kept}) intact")
                if last["bad_streak"] > 0:
                    logging.warning("step %d: non-finite loss or gradient, update skipped",
                                    pending[0])
            pending = (step + 1, metrics)
            done = step + 1
            if done % config.eval_every == 0 or done == config.total_steps:
                last_eval = evaluate(eval_fn, state.params, eval_it, eval_sh)
                writer.write(done, "eval", last_eval)
            stop = stops.requested or ckpt.reached_preemption(done)
            if stop or done % config.checkpoint_every == 0 or done == config.total_steps:
                ckpt.save(done, state, config, train_it, force=True)
            if stop:
                break
        if pending is not None:
            last = drain(pending)
    finally:
        progress.close()
    elapsed = time.perf_counter() - t_start
    ckpt.close()
    writer.flush()

    # 6. report
    steps_run = (step + 1 - start) if config.total_steps > start else 0
    result = {"step": start + steps_run, "train": last, "eval": last_eval,
              "tokens_per_s": tokens * steps_run / max(elapsed, 1e-9),
              # tokens that are not padding: what packing (config.data.pairs_per_row) raises
              "real_tokens_per_s": real_tokens / max(elapsed, 1e-9),
              "padding_share": 1.0 - real_tokens / max(tokens * steps_run, 1),
              "data_wait_share": data_wait / max(elapsed, 1e-9),
              "model_flops_per_s_per_device": utilization.flops_per_s(real_tokens, elapsed)}
    result["mfu"] = utilization.mfu(result["model_flops_per_s_per_device"])  # None: no peak
    if stop:  # saved; the command says so and exits (130 after Ctrl-C)
        signal_name = stops.signal or "SIGTERM"  # a preemption another host was told of
        raise multihost.Stopped(
            f"stopped by {signal_name}: saved step {result['step']} in {workdir}; run the same "
            "command to resume from it", 130 if signal_name == "SIGINT" else 0)
    if chief and last_eval:
        _report(config, workdir, dict(mesh.shape), writer.path, eval_it, result, utilization)
    return result
