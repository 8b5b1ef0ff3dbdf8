"""``bench --compare``: the same step in transformers' Flax and torch BERT, as timed Systems.

Same geometry (the bertjax config translated by ``mapping.bert_to_hf_config``: sizes,
activation, dropouts), same batches (the synthetic ones bertjax uses), same optimizer
(clip -> AdamW with BERT's decay exclusions: for Flax bertjax's own optax chain, for torch
``clip_grad_norm_`` + ``torch.optim.AdamW``), same compute dtype. What differs is what each
implementation does, which is the point of the comparison:

  * the MLM head runs densely over all L positions and the loss ignores unmasked labels
    (-100), as transformers computes it; bertjax gathers the P masked rows first. Their FLOPs
    are counted with ``flops.model_flops(..., mlm_positions=L)``, i.e. for the work they do;
    tokens/s is the fair throughput measure.
  * torch runs on CPU (on the GPU when JAX and torch both see one), eager with transformers'
    default attention (sdpa) and, when it works here, under ``torch.compile``.

This module imports transformers and torch at module level: runner.py imports it only for
``--compare``.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

# transformers would otherwise also import TensorFlow when present: memory and threads for
# nothing (and TensorFlow may grab the GPU).
os.environ.setdefault("USE_TF", "0")
import transformers  # noqa: E402

from bertjax.interop import mapping
from bertjax import model as model_lib
from bertjax import optim
from bertjax.bench import flops, report, timing

IGNORE = -100  # transformers' ignore_index for unmasked MLM labels


def hf_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A bertjax batch in transformers' names, with dense [B, L] MLM labels (-100 = ignore)."""
    b, l = batch["input_ids"].shape
    labels = np.full((b, l), IGNORE, np.int64)
    rows, cols = np.nonzero(batch["masked_lm_weights"] > 0)
    labels[rows, batch["masked_lm_positions"][rows, cols]] = batch["masked_lm_ids"][rows, cols]
    return {"input_ids": batch["input_ids"], "attention_mask": batch["input_mask"],
            "token_type_ids": batch["segment_ids"], "labels": labels,
            "next_sentence_label": batch["next_sentence_labels"].astype(np.int64)}


def _hf_config(cfg: model_lib.BertConfig, **kwargs: Any) -> transformers.BertConfig:
    return transformers.BertConfig(**mapping.bert_to_hf_config(cfg), **kwargs)


def _flax_loss(out: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """transformers' pre-training loss: mean MLM cross-entropy over labelled positions + NSP."""
    logits = out.prediction_logits.astype(jnp.float32)  # [B, L, V]
    labels = batch["labels"]
    valid = labels != IGNORE
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    mlm = jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1)
    nsp_logp = jax.nn.log_softmax(out.seq_relationship_logits.astype(jnp.float32), axis=-1)
    nsp = -jnp.mean(jnp.take_along_axis(nsp_logp, batch["next_sentence_label"][:, None],
                                        axis=-1))
    return mlm + nsp


class _FlaxStepper:
    def __init__(self, compiled, params, opt_state, batches):
        self.compiled, self.params, self.opt_state, self.batches = (compiled, params,
                                                                    opt_state, batches)
        self.count = 0

    def __call__(self) -> None:
        batch = self.batches[self.count % len(self.batches)]
        self.params, self.opt_state, loss = self.compiled(self.params, self.opt_state, batch,
                                                          jnp.int32(self.count))
        jax.block_until_ready((self.params, self.opt_state, loss))
        self.count += 1


def flax_system(config: Any, cfg: model_lib.BertConfig,
                host_batches: list[dict[str, np.ndarray]]) -> timing.System:
    """transformers.FlaxBertForPreTraining with an optax step jitted (AOT) on one device."""
    model = transformers.FlaxBertForPreTraining(_hf_config(cfg), seed=config.seed,
                                                dtype=cfg.compute_dtype)
    tx, _ = optim.make_optimizer(config)  # bertjax's chain; its masks match HF's names too
    device = jax.devices()[0]
    params = jax.device_put(model.params, device)
    opt_state = jax.device_put(tx.init(params), device)
    batches = [jax.device_put({k: v.astype(np.int32) for k, v in hf_inputs(b).items()}, device)
               for b in host_batches]
    base_key = jax.random.PRNGKey(config.seed)

    def train_step(params, opt_state, batch, step):
        def loss_fn(p):
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                        params=p, dropout_rng=jax.random.fold_in(base_key, step), train=True)
            return _flax_loss(out, batch)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    t0 = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(
        params, opt_state, batches[0], jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    b, l = host_batches[0]["input_ids"].shape
    return timing.System(
        name="hf-flax", step=_FlaxStepper(compiled, params, opt_state, batches),
        flops_per_step=flops.model_flops(cfg, b, l, mlm_positions=l)["total"],
        tokens_per_step=b * l, sequences_per_step=b, compile_s=compile_s,
        note=f"transformers {transformers.__version__} FlaxBertForPreTraining, optax "
             f"{config.optim.name}, dense MLM head over all {l} positions (FLOPs counted so)")


def torch_system(config: Any, cfg: model_lib.BertConfig,
                 host_batches: list[dict[str, np.ndarray]], compiled: bool) -> timing.System:
    """transformers.BertForPreTraining trained by torch (eager or torch.compile)."""
    use_cuda = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    torch.manual_seed(config.seed)
    model = transformers.BertForPreTraining(_hf_config(cfg)).to(device).train()
    o = config.optim
    decay = [p for n, p in model.named_parameters() if not ("bias" in n or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
    batches = [{k: torch.from_numpy(v.astype(np.int64)).to(device)
                for k, v in hf_inputs(b).items()} for b in host_batches]
    forward = torch.compile(model) if compiled else model
    autocast = functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16,
                                 enabled=cfg.dtype == "bfloat16")
    state = {"count": 0, "first_s": None}

    def step() -> None:
        t0 = time.perf_counter()
        with autocast():
            loss = forward(**batches[state["count"] % len(batches)]).loss
        loss.backward()
        if o.clip_norm and o.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if use_cuda:
            torch.cuda.synchronize()
        if state["first_s"] is None:  # torch.compile compiles inside the first call
            state["first_s"] = time.perf_counter() - t0
            system.compile_s = state["first_s"] if compiled else None
        state["count"] += 1

    b, l = host_batches[0]["input_ids"].shape
    attn = model.config._attn_implementation
    system = timing.System(
        name="torch-compile" if compiled else "torch-eager", step=step,
        flops_per_step=flops.model_flops(cfg, b, l, mlm_positions=l)["total"],
        tokens_per_step=b * l, sequences_per_step=b,
        note=f"torch {torch.__version__} on {device.type}, "
             f"{'torch.compile (compile s = first step)' if compiled else 'eager'}, "
             f"attention {attn}, AdamW, dense MLM head over all {l} positions (FLOPs counted "
             "so)")
    return system


def systems(config: Any, cfg: model_lib.BertConfig, host_batches: list[dict[str, np.ndarray]],
            torch_compile: bool = True) -> tuple[list[timing.System], dict[str, str]]:
    """Builds the comparison systems; one that cannot be built is reported, not raised.

    Returns:
      (the systems, {name: one-line error} for those that failed to build).
    """
    built, failed = [], {}
    makers = [("hf-flax", lambda: flax_system(config, cfg, host_batches)),
              ("torch-eager", lambda: torch_system(config, cfg, host_batches, False))]
    if torch_compile:
        makers.append(("torch-compile", lambda: torch_system(config, cfg, host_batches, True)))
    for name, make in makers:
        try:
            built.append(make())
        except Exception as e:
            failed[name] = report.error_line(e)
    return built, failed
