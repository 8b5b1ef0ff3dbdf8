"""Model sizes and structure, from eval_shape (no parameter memory is allocated)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import model as model_lib
from bertjax import synthetic
from tolerances import chained_sums, check_f32_close


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


@pytest.mark.parametrize("impl,remat,pairs_per_row", [
    ("explicit", "none", 1), ("xla", "none", 3),
    pytest.param("xla", "full", 1, marks=pytest.mark.slow),
    pytest.param("explicit", "dots", 3, marks=pytest.mark.slow)])
def test_pruned_last_layer_computes_what_the_whole_layer_gives_there(impl, remat, pairs_per_row):
    """The last layer at the read rows only (masked positions, [CLS]s) = the whole layer read
    there: logits and the gradient of every parameter, one pair per row and packed."""
    import flax

    cfg = model_lib.BertConfig.preset("tiny", vocab_size=512, attention_impl=impl, remat=remat,
                                      hidden_dropout=0.0, attention_dropout=0.0)
    b = synthetic.batch(np.random.default_rng(0), 4, 64, 6, 512, pairs_per_row=pairs_per_row)
    module = model_lib.BertForPreTraining(cfg)
    args = (b["input_ids"], b["input_mask"], b["segment_ids"], b["masked_lm_positions"],
            b.get("position_ids"))
    kw = dict(pack_ids=b.get("pack_ids"), next_sentence_positions=b.get("next_sentence_positions"))
    params = flax.linen.meta.unbox(module.init(jax.random.key(0), *args, **kw)["params"])

    def run(p, prune):
        return module.apply({"params": p}, *args, **kw, prune_last_layer=prune)

    def loss(p, prune):
        mlm, nsp = run(p, prune)
        return jnp.mean(jax.nn.logsumexp(mlm, -1)) + jnp.mean(nsp ** 2)

    k, n = max(cfg.hidden_size, cfg.intermediate_size, 64), cfg.num_layers
    for name, pruned, whole in zip(("MLM logits", "NSP logits"), jax.jit(run, static_argnums=1)(
            params, True), jax.jit(run, static_argnums=1)(params, False)):
        check_f32_close(f"pruned vs whole last layer: {name}", pruned, whole, k=k,
                        sums=chained_sums(n, heads=2))
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_pruned, g_whole = grad(params, True), grad(params, False)
    floor = 1e-6 * max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_whole))
    for (path, gp), gw in zip(jax.tree_util.tree_leaves_with_path(g_pruned),
                              jax.tree.leaves(g_whole)):
        name = f"gradient {jax.tree_util.keystr(path)}"
        if float(jnp.abs(gw).max()) < floor:  # zero in exact arithmetic (attention key bias:
            assert float(jnp.abs(gp).max()) < floor, name  # softmax ignores it): both vanish
            continue
        # a gradient flows back through every layer: the chain of forward and backward sums
        check_f32_close(name, gp, gw, k=k, sums=2 * chained_sums(n, heads=2))
