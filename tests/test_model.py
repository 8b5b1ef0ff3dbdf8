"""Model sizes and structure, from eval_shape (no parameter memory is allocated)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import model as model_lib


def _count(module, seq_len=8):
    ids = jnp.zeros((1, seq_len), jnp.int32)
    shapes = jax.eval_shape(lambda r: module.init({"params": r}, ids, ids, ids),
                            jax.random.PRNGKey(0))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("preset, expected", [("base", 109_482_240), ("large", 335_141_888)])
def test_encoder_parameter_count_matches_original_checkpoints(preset, expected):
    cfg = model_lib.BertConfig.preset(preset)
    assert _count(model_lib.BertModel(cfg)) == expected


@pytest.mark.parametrize("preset", list(model_lib.PRESETS))
def test_presets_have_bert_shapes(preset):
    cfg = model_lib.BertConfig.preset(preset)
    layers, hidden, heads = model_lib.PRESETS[preset]
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads) == (layers, hidden, heads)
    assert cfg.intermediate_size == 4 * hidden
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.type_vocab_size) == (30522, 512, 2)
    assert cfg.layer_norm_eps == 1e-12 and cfg.initializer_range == 0.02


def test_pretraining_heads_add_transform_bias_and_nsp_only():
    """The MLM decoder is tied: the heads add D*D + D (transform) + 2D (its LayerNorm) + V
    (output bias) + 2D + 2 (NSP), and no V x D matrix."""
    cfg = model_lib.BertConfig.preset("tiny", vocab_size=1000)
    ids = jnp.zeros((1, 8), jnp.int32)
    pos = jnp.zeros((1, 2), jnp.int32)
    full = jax.eval_shape(lambda r: model_lib.BertForPreTraining(cfg).init(
        {"params": r}, ids, ids, ids, pos), jax.random.PRNGKey(0))
    n_full = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(full))
    d, v = cfg.hidden_size, cfg.vocab_size
    assert n_full - _count(model_lib.BertModel(cfg)) == d * d + d + 2 * d + v + 2 * d + 2


def test_initialisation_is_truncated_normal_002():
    cfg = model_lib.BertConfig.preset("tiny", vocab_size=1000)
    ids = jnp.zeros((1, 8), jnp.int32)
    params = model_lib.BertModel(cfg).init({"params": jax.random.PRNGKey(0)}, ids, ids, ids)
    kernel = np.asarray(jax.tree.leaves(
        params["params"]["layer_0"]["intermediate"]["kernel"])[0])
    assert np.abs(kernel).max() <= 2 * 0.02 + 1e-7  # truncated at two standard deviations
    assert 0.012 < kernel.std() < 0.02
    ln = params["params"]["layer_0"]["output_norm"]
    assert np.all(np.asarray(jax.tree.leaves(ln["scale"])[0]) == 1.0)


def test_bf16_compute_keeps_fp32_params_and_fp32_logits():
    cfg = model_lib.BertConfig.preset("tiny", vocab_size=1000, dtype="bfloat16")
    m = model_lib.BertForPreTraining(cfg)
    ids = jnp.ones((2, 16), jnp.int32)
    pos = jnp.array([[1, 2], [3, 4]], jnp.int32)
    variables = m.init({"params": jax.random.PRNGKey(0)}, ids, ids, ids * 0, pos)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {np.dtype("float32")}
    mlm, nsp = m.apply(variables, ids, ids, ids * 0, pos)
    assert mlm.shape == (2, 2, 1000) and nsp.shape == (2, 2)
    assert mlm.dtype == jnp.float32 and np.isfinite(np.asarray(mlm)).all()


def test_invalid_model_sizes_are_refused():
    with pytest.raises(ValueError, match="not divisible by model.num_heads"):
        model_lib.BertConfig.preset("tiny", num_heads=3)
    with pytest.raises(ValueError, match="unknown"):
        model_lib.BertConfig.preset("huge")
    with pytest.raises(ValueError, match="hidden_act"):
        model_lib.BertConfig.preset("tiny", hidden_act="swish")
