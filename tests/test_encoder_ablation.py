"""scripts/encoder_ablation.py: the parts it changes, and the rescaling that keeps the function."""

import importlib.util
import os

import flax
import jax
import numpy as np
import pytest

from bertjax import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location(
        "encoder_ablation", os.path.join(ROOT, "scripts", "encoder_ablation.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _encoders(v=96):
    cfg = model_lib.BertConfig.preset("tiny", vocab_size=v, hidden_dropout=0.0,
                                      attention_dropout=0.0)
    ids = np.zeros((1, 8), np.int32)

    def init(seed):
        p = model_lib.BertModel(cfg).init(jax.random.key(seed), ids, np.ones_like(ids))
        return jax.tree.map(np.asarray, flax.core.unfreeze(flax.linen.meta.unbox(p["params"])))
    return cfg, init(0), init(1)


def _flat(tree):
    return flax.traverse_util.flatten_dict(tree)


def test_scaling_the_input_tables_keeps_the_function_and_resets_replace_only_their_part():
    abl = _script()
    cfg, trained, fresh = _encoders()
    before = jax.tree.map(np.copy, trained)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    encode = jax.jit(lambda p: model_lib.BertModel(cfg).apply({"params": p}, ids, mask)[0])

    scaled = abl.ablate(trained, fresh, [], 1.0, 0.3)
    np.testing.assert_allclose(encode(scaled), encode(trained), rtol=1e-4, atol=1e-4)
    w = ("embeddings", "word_embeddings", "embedding")
    np.testing.assert_allclose(_flat(scaled)[w], 0.3 * _flat(trained)[w], rtol=1e-6)
    # scaling only the word table does change the function (the position table is not scaled)
    assert not np.allclose(encode(abl.ablate(trained, fresh, [], 0.3, 1.0)), encode(trained),
                           atol=1e-3)

    cases = {"word": {w}, "layers": {k for k in _flat(trained) if k[0].startswith("layer")},
             "last": {k for k in _flat(trained) if k[0] == "layer_1"},
             "embeddings": {k for k in _flat(trained) if k[0] == "embeddings"},
             "all": set(_flat(trained)), "allbutword": set(_flat(trained)) - {w}}
    for part, replaced in cases.items():
        out = _flat(abl.ablate(trained, fresh, [(part, 0)], 1.0, 1.0))
        assert set(out) == set(_flat(trained)), part
        for key, value in out.items():
            source = _flat(fresh if key in replaced else trained)[key]
            np.testing.assert_array_equal(value, source, err_msg=f"{part}: {key}")

    rare = _flat(abl.ablate(trained, fresh, [("rare", 40)], 1.0, 1.0))[w]
    np.testing.assert_array_equal(rare[:40], _flat(trained)[w][:40])
    np.testing.assert_array_equal(rare[40:], _flat(fresh)[w][40:])
    for key, value in _flat(before).items():  # the caller's parameters are not changed
        np.testing.assert_array_equal(_flat(trained)[key], value, err_msg=str(key))


@pytest.mark.parametrize("text", ["rare", "rare:x", "words", "word:3"])
def test_unknown_parts_are_refused_in_one_line(text):
    with pytest.raises(SystemExit) as e:
        _script().parse_reset(text)
    assert "--reset" in str(e.value) and "\n" not in str(e.value)
