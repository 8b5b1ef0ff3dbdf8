"""bertjax/bench: the FLOPs formula against independent counts, and one tiny end-to-end run.

The formula is checked two ways on a toy geometry where every term matters (attention is
~14% of the forward, the MLM head ~5%, and a dense head would add ~25%): exactly against the
matmul FLOPs read off the jaxpr of the real model (every dot_general: 2 x output size x
contracted size), for the forward and for the gradient; and within 12% against XLA's own
cost analysis of the compiled forward, which also counts elementwise work (hence the slack).
No timing is asserted: only that the measured numbers are consistent with each other.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax.bench import flops, report, runner

TOY = model_lib.BertConfig(vocab_size=1000, hidden_size=128, num_layers=2, num_heads=2,
                           intermediate_size=512, max_position_embeddings=128,
                           hidden_dropout=0.0, attention_dropout=0.0)
B, L, P = 2, 128, 20
R = P + 1  # rows of the pruned last layer: the masked positions and the [CLS]


def _dot_flops(jaxpr) -> int:
    """FLOPs of every dot_general in a jaxpr, nested jaxprs (pjit, custom_vjp, ...) included."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if hasattr(sub, "jaxpr") and hasattr(sub, "consts"):  # ClosedJaxpr
                    total += _dot_flops(sub.jaxpr)
                elif hasattr(sub, "eqns"):  # Jaxpr
                    total += _dot_flops(sub)
    return total


@pytest.fixture(scope="module")
def toy():
    module = model_lib.BertForPreTraining(TOY)
    ids = jnp.ones((B, L), jnp.int32)
    positions = jnp.tile(jnp.arange(P, dtype=jnp.int32)[None] * 3, (B, 1))
    # Shapes only: tracing and lowering need no parameter values.
    params = nn.meta.unbox(jax.eval_shape(
        lambda r: module.init(r, ids, ids, ids, positions)["params"], jax.random.PRNGKey(0)))

    def forward(p, prune_last_layer=True):
        return module.apply({"params": p}, ids, ids, ids * 0, positions,
                            prune_last_layer=prune_last_layer)

    def loss(p):
        mlm, nsp = forward(p)
        return jnp.sum(mlm) + jnp.sum(nsp)

    return params, forward, loss


def test_forward_flops_equal_the_models_matmuls(toy):
    params, forward, _ = toy
    counted = _dot_flops(jax.make_jaxpr(forward)(params).jaxpr)
    formula = flops.model_flops(TOY, B, L, P, training=False, last_layer_rows=R)
    assert formula["total"] == pytest.approx(counted, rel=1e-9)
    # The test can tell a wrong formula: a dense MLM head, a forgotten attention term or the
    # whole last layer counted is off.
    dense_head = flops.model_flops(TOY, B, L, L, training=False, last_layer_rows=R)["total"]
    assert abs(dense_head / counted - 1) > 0.15
    assert abs((formula["total"] - formula["attention"]) / counted - 1) > 0.1
    whole = flops.model_flops(TOY, B, L, P, training=False)["total"]
    assert abs(whole / counted - 1) > 0.1
    # ... and the unpruned forward is what the whole last layer costs
    unpruned = _dot_flops(jax.make_jaxpr(lambda p: forward(p, False))(params).jaxpr)
    assert whole == pytest.approx(unpruned, rel=1e-9)


def test_training_flops_are_three_forwards_of_the_gradient(toy):
    params, _, loss = toy
    counted = _dot_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    assert flops.model_flops(TOY, B, L, P, last_layer_rows=R)["total"] == pytest.approx(
        counted, rel=1e-9)


def test_forward_flops_within_xla_cost_analysis(toy):
    params, forward, _ = toy
    cost = jax.jit(forward).lower(params).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    ratio = (flops.model_flops(TOY, B, L, P, training=False, last_layer_rows=R)["total"]
             / cost["flops"])
    # XLA also counts elementwise ops (GELU, LayerNorm, softmax, masking), which the model
    # FLOPs leave out: the formula is a little below XLA's count, never above it.
    assert 0.88 < ratio <= 1.001, ratio


def test_peak_table_matches_device_kinds():
    assert flops.table_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.table_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.table_peak_flops("NVIDIA H200") == 989e12
    assert flops.table_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.table_peak_flops("TPU v4") == 275e12
    assert flops.table_peak_flops("TPU v5 lite") == 197e12  # v5e, before "TPU v5" (v5p)
    assert flops.table_peak_flops("TPU v5") == 459e12
    assert flops.table_peak_flops("TPU v6 lite") == 918e12
    assert flops.table_peak_flops("TPU7x") == 2307e12  # a chip: two devices
    assert flops.table_peak_flops("cpu") is None


def test_a_devices_peak_is_its_chips_shared_by_the_devices_a_chip_shows_as():
    def tpu(kind, chips, per_chip):
        return [types.SimpleNamespace(device_kind=kind, coords=(c, 0, 0), core_on_chip=k)
                for c in range(chips) for k in range(per_chip)]
    assert flops.device_peak_flops(tpu("TPU7x", 4, 2)) == 2307e12 / 2  # TensorCores as devices
    assert flops.device_peak_flops(tpu("TPU v5 lite", 4, 1)) == 197e12
    assert flops.device_peak_flops(tpu("TPU v4", 4, 1)) == 275e12  # megacore: one a chip
    gpus = [types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")] * 8  # no coords
    assert flops.device_peak_flops(gpus) == 989e12
    assert flops.device_peak_flops(jax.devices()) is None  # the CPU: no datasheet


def test_model_flops_per_s_count_real_tokens_only():
    c = config_lib.base_config()
    c.model.preset, c.model.vocab_size, c.model.prune_last_layer = "tiny", 1000, False
    c.global_batch_size, c.max_seq_length, c.max_predictions = 16, 32, 5
    m = config_lib.model_config(c)
    d, f, n, v, b, l, p = (m.hidden_size, m.intermediate_size, m.num_layers, m.vocab_size,
                           16, 32, 5)
    # the published BERT MFU convention, 6·N + 12·layers·L·D a token (N: the encoder's dense
    # weights), with the MLM head (p rows) and pooler/NSP (one row) spread over the row's l
    per_token = (6 * (4 * d * d + 2 * d * f) * n + 12 * n * l * d
                 + 6 * ((d * d + d * v) * p + d * d + 2 * d) / l)
    u = flops.Utilization.of(c, jax.devices())
    assert u.flops_per_token == pytest.approx(per_token, rel=1e-12)
    full = u.flops_per_s(b * l, 0.5)  # no padding: the step's model FLOPs over its time
    assert full == pytest.approx(flops.pretraining_flops(c)["total"] / 0.5 / jax.device_count())
    # half the positions padding at the same step time: half the FLOP/s
    assert u.flops_per_s(b * l / 2, 0.5) == pytest.approx(full / 2)
    # no datasheet peak on the CPU: no MFU, and the line says why
    assert u.peak is None and u.mfu(full) is None
    assert u.line(full) == (f"{flops.format_flops(full)} (real tokens), "
                            "MFU n/a: no datasheet peak for cpu")
    v5e = dataclasses.replace(u, peak=flops.device_peak_flops(
        [types.SimpleNamespace(device_kind="TPU v5 lite", coords=(0, 0, 0))]),
        device_kind="TPU v5 lite")
    assert v5e.mfu(98.5e12) == pytest.approx(0.5)
    assert v5e.line(81.2e12) == ("81.2 TFLOP/s (real tokens), MFU 41.2% of TPU v5 lite's "
                                 "bf16 peak")


def _tiny_config(**overrides):
    c = config_lib.base_config()
    runner.apply_overrides(c, **dict(dict(preset="tiny", batch=16, seq_len=32,
                                          max_predictions=5, mesh="2,2,2", steps=3), **overrides))
    c.model.vocab_size = 1000
    return c


@pytest.mark.slow
def test_tiny_run_on_the_8_device_mesh_is_consistent(tmp_path):
    config = _tiny_config()
    r = runner.run(config, steps=2, warmup=1, matmul_size=256)
    path = tmp_path / "bench.json"
    report.write_json(r, str(path))
    loaded = json.loads(path.read_text())
    assert loaded["setup"]["batch"] == 16 and loaded["setup"]["seq_len"] == 32
    assert loaded["num_devices"] == 8 and loaded["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}

    step = loaded["step_time_s"]
    assert len(loaded["step_times_s"]) == 2 and step > 0
    assert step == pytest.approx(np.median(loaded["step_times_s"]))
    assert loaded["tokens_per_s"] == pytest.approx(16 * 32 / step)
    assert loaded["sequences_per_s"] == pytest.approx(16 / step)
    cfg = config_lib.model_config(config)
    assert loaded["flops_per_step"] == flops.model_flops(cfg, 16, 32, 5,
                                                         last_layer_rows=5 + 1)["total"]
    assert loaded["achieved_flops_per_s"] == pytest.approx(loaded["flops_per_step"] / step)
    # On CPU the reference is the matmul measured in the same run; there is no datasheet.
    assert loaded["table_peak_flops_per_s"] is None
    assert loaded["peak_flops_per_s"] == loaded["measured_matmul_flops_per_s"] > 0
    assert loaded["mfu"] == pytest.approx(loaded["achieved_flops_per_s"]
                                          / loaded["peak_flops_per_s"])
    assert loaded["compile_s"] == pytest.approx(loaded["lower_s"] + loaded["xla_compile_s"])
    assert np.isfinite(loaded["final_loss"]) and loaded["final_loss"] > 0

    # Per-device memory holds at least this device's share of params + two Adam moments.
    mem = loaded["memory"]
    assert mem["source"] == "compiled.memory_analysis()"
    state_bytes = 3 * 4 * loaded["setup"]["num_params"]
    assert mem["peak_bytes"] >= state_bytes / 8
    assert mem["compiled"]["argument"] >= state_bytes / 8


def test_bad_inputs_stop_before_any_compile():
    with pytest.raises(config_lib.ConfigError, match="attention_dropout=0"):
        _tiny_config(attention_impl="cudnn")
    with pytest.raises(config_lib.ConfigError, match="--mesh"):
        _tiny_config(mesh="2x2x2")
    with pytest.raises(config_lib.ConfigError, match="global_batch_size"):
        runner.run(_tiny_config(batch=10), steps=1, warmup=0)  # 10 rows, 4 batch shards


def test_module_imports_neither_torch_nor_tensorflow():
    code = ("import sys, bertjax.bench.__main__; bad = [m for m in ('torch', 'tensorflow', "
            "'transformers') if m in sys.modules]; sys.exit(f'imported {bad}' if bad else 0)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)


def test_compare_labels_are_dense_with_ignore_index_except_at_masked_positions():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bertjax.bench import compare
    from bertjax import synthetic
    batch = synthetic.batch(np.random.default_rng(0), 4, 32, 6, 1000)
    labels = compare.hf_inputs(batch)["labels"]  # [B, L]
    expected = np.full((4, 32), compare.IGNORE)
    for i in range(4):
        for pos, label, w in zip(batch["masked_lm_positions"][i], batch["masked_lm_ids"][i],
                                 batch["masked_lm_weights"][i]):
            if w > 0:
                expected[i, pos] = label
    np.testing.assert_array_equal(labels, expected)
    assert (labels != compare.IGNORE).sum() == batch["masked_lm_weights"].sum() > 0
