"""The training step against reference trainers: AdamW against transformers' torch BERT, LAMB
against a numpy transcription of the LAMB paper.

AdamW. The same parameters (every tensor randomized on the HF side, biases and LayerNorm
included, then imported with ``convert.params_from_hf``) are trained for 20 steps by bertjax's
production path (``train.build`` -> ``train.jit_train_step`` fed by ``multihost.global_batch``)
and by ``transformers.BertForPreTraining`` with a torch optimizer written here: AdamW with two
parameter groups (no decay for biases and LayerNorm, chosen by HF parameter names with
google-research/bert's rule, not by bertjax's ``optim.is_excluded``), ``clip_grad_norm_`` and a
LambdaLR of linear warmup then linear decay written out in ``_lr_at``. Both see the same 20
batches of the real tf.data pipeline (``inputs.train_iterator`` on a prepared slice of the
embedded corpus, one NSP pair per row), dropout 0, float32, and the torch side computes
bertjax's loss (``_torch_loss``). Asserted: the loss of every step and the final parameters, on
one device and on a 2x2x2 mesh; and the same for packed rows (3 pairs per row, one device),
mapped onto HF with a [B, L, L] attention mask, restarting positions and the NSP head on each
pair's [CLS].

Why the two optimizers are the same algorithm (so that a failure means a bug, not a convention):
  - optax (optim.py): g <- clip(g); m, v Adam moments; a = m_hat / (sqrt(v_hat) + eps);
    u = a + wd * p on decayed tensors; p <- p - lr_t * u. torch AdamW: p <- p * (1 - lr_t * wd),
    then p <- p - lr_t * a, i.e. p - lr_t * (wd * p + a) with the same p: equal per step up to
    float32 rounding. Both put eps outside the square root and bias-correct both moments with
    the 1-based update count.
  - the schedule: optax's scale_by_learning_rate evaluates schedule(count), count = updates
    already applied, so update k (0-based) uses schedule(k); with warmup schedule(0) = 0 (the
    first update only fills the moments, as in google-research/bert). LambdaLR sets
    lr = base * lambda(0) when built and advances after each optimizer.step(), so update k uses
    lambda(k) too: the same sequence with lambda(k) = _lr_at(k) / lr.
  - clipping: optax scales by clip / norm when norm >= clip; torch by clip / (norm + 1e-6)
    capped at 1, a relative difference of 1e-6 / norm in one factor for all tensors, which
    Adam all but cancels (it is scale-invariant up to eps).
  - bias correction: optax takes 1 - b2**t in float32 (see ``_bias_corrections``), torch in
    float64; every Adam direction differs by 6.4e-6 relative, which the tolerances cover.

LAMB. ``optim.make_optimizer`` with name "lamb", applied to bertjax's real parameter tree as
``train.train_step`` applies it, against ``_lamb_reference`` (You et al. 2020, "Large Batch
Optimization for Deep Learning", Algorithm 2, phi = identity, plus BERT's exclusions, bertjax's
clipping and schedule), both fed the same 10 gradients, clipped on some steps and not others.
"""

from __future__ import annotations

import math

import flax
import jax
import numpy as np
import optax
import pytest
import torch
import transformers

from bertjax import config as config_lib
from bertjax.interop import mapping as convert
from bertjax import inputs
from bertjax import optim
from bertjax import sharding
from bertjax import train
from hf_reference import randomize_
from train_steps import run_steps

VOCAB = 1000  # the prepared slice's tokenizer size; the tiny preset: 2 layers, 128 wide, 2 heads
STEPS = 20

# Loss of every step, relative. Forward passes of the same parameters agree to ~1e-6 relative
# in float32 (test_parity.py); the parameters of step k agree to PARAM_RTOL of each tensor's
# scale, and the loss moves relatively by no more than the weights do (LayerNorm after every
# sum keeps relative perturbations from growing through the layers), so 1e-4 is the bound.
LOSS_RTOL = 1e-4
# Final parameters: |ours - torch| <= PARAM_RTOL * max|torch| per tensor (elementwise relative
# error means nothing for elements near zero). Adam moves an element by at most ~lr_t per step,
# so after 20 steps (sum of lr_t = 0.0115) two runs whose directions differ by a relative d
# differ by <= 0.0115 * d. Directions differ through float32 round-off of the gradients (~1e-6
# relative to the largest terms summed, larger for elements that are small against them, such
# as rare tokens' rows of the tied word embeddings) and optax's float32 bias correction (6.4e-6,
# module docstring). The smallest tensor maximum here is 0.056, so 1e-4 admits d up to 4e-4: a
# 400-fold loss of relative precision in the worst element. Decay wrongly applied to an excluded
# tensor moves it by weight_decay * 0.0115 = 1.2e-3 of its values: over 10x the tolerance.
PARAM_RTOL = 1e-4
# LAMB after 10 steps against the float64 reference, relative to each tensor's maximum. What is
# left besides the bias-correction constants (taken as optax takes them, ``_bias_corrections``)
# is the optimizer's float32 arithmetic: ~6 rounded operations per element for the Adam
# direction (two moments, two bias divisions, sqrt, division: <= ~4e-7 relative), the trust
# ratio's norms (~1e-7) and the parameter's own rounding, once per step (<= 6e-8 x 10). A tensor
# that is one Adam direction (nsp/kernel, started at zero) carries the first one fully.
LAMB_RTOL = 1e-6


def _config(prepared: str = "", name: str = "adamw", pairs_per_row: int = 1):
    """The run config of both trainers: tiny BERT, 8 x 64 tokens, 10 predictions per row."""
    c = config_lib.base_config()
    c.model.vocab_size = VOCAB
    c.model.hidden_dropout = c.model.attention_dropout = 0.0  # torch draws other dropout bits
    c.max_seq_length, c.max_predictions, c.global_batch_size = 64, 10, 8
    c.data.source, c.data.path, c.data.pairs_per_row = "prepared", prepared, pairs_per_row
    # Warmup and decay both within the 20 steps: lr 0 at step 0, the peak at 4, a quarter at 19.
    c.total_steps, c.optim.warmup_steps = 24, 4
    c.optim.name, c.optim.lr = name, 1e-3
    # 10x BERT's 0.01, so that decay wrongly applied to a LayerNorm scale (~1) or a bias (~0.1)
    # shows at over 10x the parameter tolerance (see PARAM_RTOL).
    c.optim.weight_decay = 0.1
    return c


def _lr_at(c, step: int) -> float:
    """The learning rate of update ``step`` (0-based): linear warmup from 0 to lr over
    warmup_steps, then decay with ``power`` to end_lr at total_steps. Written out here rather
    than taken from optim.py."""
    o = c.optim
    if step < o.warmup_steps:
        return o.lr * step / o.warmup_steps
    frac = min(step - o.warmup_steps, c.total_steps - o.warmup_steps) / (
        c.total_steps - o.warmup_steps)
    return (o.lr - o.end_lr) * (1.0 - frac) ** o.power + o.end_lr


def _torch_excluded(name: str) -> bool:
    """BERT's no-decay rule on HF parameter names: biases and LayerNorm (google-research/bert's
    exclude_from_weight_decay = ["LayerNorm", "layer_norm", "bias"])."""
    return name.endswith("bias") or "LayerNorm" in name


def _relative_diffs(ours: dict, ref: dict) -> dict[str, float]:
    """max |ours - ref| / max |ref| of each tensor."""
    return {k: float(np.max(np.abs(ours[k] - ref[k])) / np.max(np.abs(ref[k]))) for k in ref}


def _worst(diffs: dict[str, float], n: int = 5) -> list[tuple[str, float]]:
    return sorted(diffs.items(), key=lambda kv: -kv[1])[:n]


# --- data and initial parameters --------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    """40 documents of the embedded corpus, prepared as a run prepares them (~5 s)."""
    from bertjax.data import prepare as prepare_lib
    out = str(tmp_path_factory.mktemp("prepared"))
    prepare_lib.prepare(prepare_lib.PrepareConfig(input="embedded", output=out,
                                                  vocab_size=VOCAB, num_shards=2,
                                                  max_documents=40, processes=1))
    return out


def _pipeline_batches(prepared: str, pairs_per_row: int) -> list[dict[str, np.ndarray]]:
    """The first STEPS batches of the training iterator the pre-training loop builds."""
    it = inputs.train_iterator(_config(prepared, pairs_per_row=pairs_per_row))
    out = [next(it) for _ in range(STEPS)]
    # What the comparison must cover: padding, empty prediction slots, both NSP labels.
    assert any((b["input_mask"] == 0).any() for b in out)
    assert any((b["masked_lm_weights"] == 0).any() for b in out)
    assert len({int(b["next_sentence_labels"].sum()) for b in out}) > 1
    return out


@pytest.fixture(scope="module")
def batches(prepared) -> list[dict[str, np.ndarray]]:
    out = _pipeline_batches(prepared, 1)
    assert "pack_ids" not in out[0] and out[0]["next_sentence_labels"].shape == (8,)
    return out


@pytest.fixture(scope="module")
def packed_batches(prepared) -> list[dict[str, np.ndarray]]:
    out = _pipeline_batches(prepared, 3)
    used = np.concatenate([b["next_sentence_weights"].sum(axis=1) for b in out])  # pairs/row
    assert out[0]["next_sentence_labels"].shape == (8, 3)
    assert used.max() >= 2 and used.min() < 3  # rows holding several pairs, and free slots
    return out


@pytest.fixture(scope="module")
def initial() -> dict[str, np.ndarray]:
    """The HF state dict both trainers start from: every tensor randomized (as in
    test_parity.py), so biases and LayerNorm are off 0 and 1 and decay on them would show."""
    cfg = config_lib.model_config(_config())
    torch.manual_seed(0)
    hf = randomize_(transformers.BertForPreTraining(transformers.BertConfig(
        **convert.bert_to_hf_config(cfg), attn_implementation="eager")), seed=1)
    return {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}


# --- the torch trainer ------------------------------------------------------------------------

def _torch_loss(hf: transformers.BertForPreTraining, b: dict[str, np.ndarray]) -> torch.Tensor:
    """bertjax's pre-training loss (train.train_step) on HF's outputs: MLM cross-entropy summed
    over the masked positions with masked_lm_weights, over the sum of those weights, plus the
    NSP cross-entropy over the rows (one pair per row) or over the used pair slots (packed)."""
    t = {k: torch.from_numpy(np.asarray(v)).long() for k, v in b.items() if "weights" not in k}
    w = torch.from_numpy(b["masked_lm_weights"]).float()  # [B, P]
    if "pack_ids" not in b:
        out = hf(input_ids=t["input_ids"], attention_mask=t["input_mask"],
                 token_type_ids=t["segment_ids"])
        logits = out.prediction_logits  # [B, L, V] at every position
        nsp = torch.nn.functional.cross_entropy(out.seq_relationship_logits,
                                                t["next_sentence_labels"])  # mean over rows
    else:
        # Packed rows through HF's own modules: a [B, L, L] mask (HF reads a 3-D mask as "query
        # i may see key j") that keeps each pair to itself, positions restarting per pair, and
        # the pooler and NSP head on each pair's [CLS] instead of on the row's first token.
        pack = t["pack_ids"]  # [B, L]
        mask = (pack[:, :, None] == pack[:, None, :]) & (pack[:, None, :] > 0)  # [B, L, L]
        seq = hf.bert(input_ids=t["input_ids"], attention_mask=mask.long(),
                      token_type_ids=t["segment_ids"],
                      position_ids=t["position_ids"]).last_hidden_state  # [B, L, D]
        logits = hf.cls.predictions(seq)  # [B, L, V]
        at = t["next_sentence_positions"][..., None].expand(-1, -1, seq.shape[-1])  # [B, M, D]
        pooled = hf.bert.pooler.activation(hf.bert.pooler.dense(torch.gather(seq, 1, at)))
        nsp_logits = hf.cls.seq_relationship(pooled)  # [B, M, 2]
        nll = torch.nn.functional.cross_entropy(
            nsp_logits.reshape(-1, 2), t["next_sentence_labels"].reshape(-1), reduction="none")
        used = torch.from_numpy(b["next_sentence_weights"]).float().reshape(-1)  # [B * M]
        nsp = (nll * used).sum() / used.sum().clamp(min=1.0)
    pos = t["masked_lm_positions"]  # [B, P]
    picked = torch.gather(logits, 1, pos[..., None].expand(-1, -1, logits.shape[-1]))
    logp = torch.log_softmax(picked, dim=-1)  # [B, P, V]
    nll = -torch.gather(logp, 2, t["masked_lm_ids"][..., None])[..., 0]  # [B, P]
    return (nll * w).sum() / w.sum().clamp(min=1.0) + nsp


def _train_torch(c, init: dict[str, np.ndarray], batches) -> tuple[list[float], dict]:
    """STEPS steps of HF BertForPreTraining with AdamW, BERT's exclusions, clipping, schedule.

    Returns:
      (the loss of each step before its update, the final HF state dict as numpy).
    """
    cfg = config_lib.model_config(c)
    hf = transformers.BertForPreTraining(transformers.BertConfig(
        **convert.bert_to_hf_config(cfg), attn_implementation="eager"))
    hf.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in init.items()}, strict=True)
    hf.train()  # dropout probabilities are 0: train mode computes what eval mode computes
    named = list(hf.named_parameters())  # the tied decoder weight and bias appear once
    o = c.optim
    groups = [{"params": [p for n, p in named if not _torch_excluded(n)],
               "weight_decay": o.weight_decay},
              {"params": [p for n, p in named if _torch_excluded(n)], "weight_decay": 0.0}]
    # LayerNorm weight and bias: embeddings, 2 per layer, MLM transform; biases: 6 linears per
    # layer, pooler, MLM transform, MLM output (tied with the decoder's), NSP head.
    layers = cfg.num_layers
    assert len(groups[1]["params"]) == 2 * (2 + 2 * layers) + 6 * layers + 4
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: _lr_at(c, k) / o.lr)
    losses = []
    # One intra-op thread: on a busy 2-core machine OpenMP's spinning workers make this tiny
    # model ~20x slower with two (1.8 s a step instead of 0.08 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for b in batches:
            opt.zero_grad()
            loss = _torch_loss(hf, b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), o.clip_norm)
            opt.step()
            sched.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    return losses, {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}


@pytest.fixture(scope="module")
def torch_run(prepared, initial, batches):
    return _train_torch(_config(prepared), initial, batches)


# --- bertjax against torch --------------------------------------------------------------------

def _train_bertjax(c, mesh, init: dict[str, np.ndarray], batches) -> tuple[list[float], dict]:
    """STEPS steps of the production step from the imported ``init``.

    Returns:
      (the loss metric of each step, the final parameters exported as an HF state dict).
    """
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh.devices.shape
    config_lib.validate(c, mesh.size)  # what the pre-training command checks first
    state, fns = train.build(c, mesh)
    cfg = config_lib.model_config(c)
    params, report = convert.params_from_hf(init, cfg)
    assert report.missing == [] and report.unused == []
    # The imported values in the state's own shardings; the optimizer state stays the fresh one
    # (zero moments, count 0), which does not depend on the values.
    params = jax.tree.map(lambda s, x: jax.device_put(x, s), fns.state_shardings.params, params)
    state, losses, _ = run_steps(fns, state.replace(params=params), batches)
    return losses, convert.params_to_hf(jax.device_get(state.params), cfg)


def _check_against_torch(label: str, c, mesh, initial, batches, torch_result) -> None:
    ours_losses, ours = _train_bertjax(c, mesh, initial, batches)
    ref_losses, ref = torch_result
    loss_rel = np.abs(np.array(ours_losses) - ref_losses) / np.abs(ref_losses)
    diffs = _relative_diffs(ours, ref)
    moved = _relative_diffs(initial, ref)
    print(f"\n{label}: loss {ref_losses[0]:.4f} -> {ref_losses[-1]:.4f}, max relative loss "
          f"diff {loss_rel.max():.2e}; param diff / tensor max {_worst(diffs, 1)}")
    # It trains, and every tensor moved by far more than the tolerance (so the test can fail),
    # except the key biases: they add one constant to all scores of a query, which the softmax
    # cancels, so their gradient is zero and, not decayed, they stay where they started.
    assert ref_losses[-1] < ref_losses[0] - 0.5, ref_losses
    still = {k for k, v in moved.items() if v <= 10 * PARAM_RTOL}
    assert still == {f"bert.encoder.layer.{i}.attention.self.key.bias"
                     for i in range(config_lib.model_config(c).num_layers)}, still
    np.testing.assert_allclose(ours_losses, ref_losses, rtol=LOSS_RTOL)
    assert max(diffs.values()) <= PARAM_RTOL, _worst(diffs)


MESHES = {"1x1x1": lambda: sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]),
          "2x2x2": lambda: sharding.make_mesh(2, 2, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_adamw_steps_equal_torch_bert(prepared, initial, batches, torch_run, mesh_name):
    _check_against_torch(f"adamw {mesh_name}", _config(prepared), MESHES[mesh_name](),
                         initial, batches, torch_run)


@pytest.mark.slow
def test_packed_rows_train_like_torch_bert(prepared, initial, packed_batches):
    """3 NSP pairs per row: the same 20 steps as HF BERT computing each pair on its own."""
    c = _config(prepared, pairs_per_row=3)
    _check_against_torch("adamw packed 1x1x1", c, MESHES["1x1x1"](), initial, packed_batches,
                         _train_torch(c, initial, packed_batches))


# --- LAMB against the paper -------------------------------------------------------------------

# The global gradient norm of each of the 10 steps, against clip_norm 1.0: clipped or not.
GRAD_NORMS = (3.0, 0.5, 1.7, 0.9, 6.0, 0.2, 2.5, 0.7, 1.2, 0.4)


@jax.jit
def _one_minus_pow(b, count):
    return 1 - b ** count


def _bias_corrections(b1: float, b2: float, t: int) -> tuple[float, float]:
    """1 - b1**t and 1 - b2**t as optax computes them: in float32, with XLA's pow.

    The one place where the reference follows float32 rather than exact arithmetic:
    f32(0.999) = 0.99900001 puts 1 - b2**t 1.3e-5 (relative) below the exact value, so every
    Adam direction is 6.4e-6 too small, and a tensor that is one Adam direction (nsp/kernel,
    started at zero) carries that whole error, 6x LAMB_RTOL. numpy's float32 pow is not XLA's
    to the last bit either (one ulp of 0.999 is 6e-5 of 1 - b2**t), so jax evaluates it.
    """
    return float(_one_minus_pow(b1, np.int32(t))), float(_one_minus_pow(b2, np.int32(t)))


def _lamb_reference(c, params: dict, grads: list[dict], excluded: dict) -> dict:
    """LAMB as in You et al. 2020, Algorithm 2 (phi = identity), in float64, with BERT's
    exclusions (no decay and a trust ratio of 1 for ``excluded`` tensors), global-norm clipping
    of the gradient first, and the learning rate of update t (0-based) from ``_lr_at``.

    Args:
      c: the run config (optim.*, total_steps).
      params, grads: flat {name: array}, one grads dict per step.
      excluded: {name: bool}.

    Returns:
      The flat parameters after len(grads) steps.
    """
    o = c.optim
    x = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.zeros_like(v) for k, v in x.items()}
    for t, g in enumerate(grads, start=1):
        g = {k: np.asarray(a, np.float64) for k, a in g.items()}
        norm = math.sqrt(sum(float(np.sum(a * a)) for a in g.values()))
        if norm >= o.clip_norm:
            g = {k: a * (o.clip_norm / norm) for k, a in g.items()}
        lr = _lr_at(c, t - 1)
        bias1, bias2 = _bias_corrections(o.b1, o.b2, t)
        for k in x:
            m[k] = o.b1 * m[k] + (1 - o.b1) * g[k]
            v[k] = o.b2 * v[k] + (1 - o.b2) * g[k] ** 2
            r = (m[k] / bias1) / (np.sqrt(v[k] / bias2) + o.eps)
            if excluded[k]:
                x[k] = x[k] - lr * r
                continue
            u = r + o.weight_decay * x[k]
            x_norm, u_norm = np.linalg.norm(x[k]), np.linalg.norm(u)
            # phi(0) = 0 would freeze a tensor at zero forever; ratio 1 is BERT's and optax's.
            ratio = x_norm / u_norm if x_norm > 0 and u_norm > 0 else 1.0
            x[k] = x[k] - lr * ratio * u
    return x


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _unflat(flat: dict[str, np.ndarray]):
    return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def test_lamb_equals_the_paper_with_berts_exclusions(initial):
    c = _config(name="lamb")
    # BERT's LAMB settings (weight decay 0.01, eps 1e-6, clip 1.0) at a LAMB-sized lr; warmup
    # and decay within the 10 steps (sum of lr_t = 0.057).
    c.total_steps, c.optim.warmup_steps, c.optim.lr, c.optim.weight_decay = 12, 3, 1e-2, 0.01
    cfg = config_lib.model_config(c)
    params, _ = convert.params_from_hf(initial, cfg)
    flat = _flat(params)
    # A decayed tensor at zero norm: its trust ratio is 1 until it has moved.
    flat["nsp/kernel"] = np.zeros_like(flat["nsp/kernel"])
    # Exclusions by BERT's rule on the HF names (the first row of each path is its own name).
    hf_name = {}
    for row in convert.param_mapping(cfg):
        hf_name.setdefault("/".join(row.path), row.hf_name)
    excluded = {k: _torch_excluded(hf_name[k]) for k in flat}
    assert 0 < sum(excluded.values()) < len(excluded)

    rng = np.random.default_rng(0)
    scale = {k: 10.0 ** rng.uniform(-2, 0) for k in flat}  # gradients of unlike size per tensor
    grads = []
    for target in GRAD_NORMS:
        g = {k: scale[k] * rng.standard_normal(v.shape) for k, v in flat.items()}
        norm = math.sqrt(sum(float(np.sum(a * a)) for a in g.values()))
        grads.append({k: (a * (target / norm)).astype(np.float32) for k, a in g.items()})

    tx, _ = optim.make_optimizer(c)

    @jax.jit
    def apply(p, s, g):  # what train.train_step does with the global batch's gradient
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    p = _unflat(flat)
    s = tx.init(p)
    for g in grads:
        p, s = apply(p, s, _unflat(g))
    ours = _flat(jax.device_get(p))
    ref = _lamb_reference(c, flat, grads, excluded)
    diffs = _relative_diffs(ours, ref)
    moved = _relative_diffs(flat, ref)
    print(f"\nlamb: param diff / tensor max {_worst(diffs, 1)}; least moved tensor "
          f"{min(moved.values()):.1e}")
    assert min(moved.values()) > 100 * LAMB_RTOL  # every tensor moved: the test can fail
    assert max(diffs.values()) <= LAMB_RTOL, _worst(diffs)
