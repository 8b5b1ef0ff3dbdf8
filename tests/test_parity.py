"""bertjax against transformers' PyTorch BERT, through bertjax/interop/mapping.py.

The reference is transformers.BertForPreTraining on CPU in float32, eval mode, eager attention,
with every parameter (biases and LayerNorm affine included) randomized so that a mis-mapped
tensor cannot hide behind a zero or one initialization. Batches have padding of varied length
and two segments. Comparisons are max absolute differences over what is read: hidden states at
real tokens, the pooled output, MLM logits at the masked positions and NSP logits, each within
the float32 round-off bound of tests/tolerances.py (padded positions are printed, not asserted:
nobody reads them).

Also checked: exact import/export round trip, padding invariance, export that loads strictly
into transformers, safetensors directories both ways, and the converter's refusals.

Runs on the default device without a mesh, so it is indifferent to the number of (fake) CPU
devices; it sets no environment variable or global configuration.
"""

from __future__ import annotations

import logging

import flax
import jax
import numpy as np
import pytest
import torch
import transformers

from bertjax.interop import mapping as convert
from bertjax import model
from hf_reference import randomize_
from tolerances import chained_sums, check_f32_close

TINY = dict(hidden_size=128, num_attention_heads=2, intermediate_size=512)
BASE_WIDTH = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072)


def _hf_model(vocab_size: int, sizes: dict, seed: int = 0) -> transformers.BertForPreTraining:
    """A two-layer HF BertForPreTraining with all parameters randomized, in eval mode."""
    torch.manual_seed(seed)
    hf_config = transformers.BertConfig(
        vocab_size=vocab_size, num_hidden_layers=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager", **sizes)
    return randomize_(transformers.BertForPreTraining(hf_config).eval(), seed + 1)


def _state_dict(hf: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}


def _batch(vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """3 sequences of lengths 16, 11, 5 padded to 16; two segments; 4 masked positions each."""
    rng = np.random.default_rng(seed)
    b, length, p = 3, 16, 4
    batch = {k: np.zeros((b, length), np.int32) for k in ("input_ids", "input_mask", "segment_ids")}
    batch["masked_lm_positions"] = np.zeros((b, p), np.int32)
    for i, n in enumerate((16, 11, 5)):
        batch["input_ids"][i, :n] = rng.integers(1, vocab_size, n)
        batch["input_mask"][i, :n] = 1
        batch["segment_ids"][i, n // 2:n] = 1
        batch["masked_lm_positions"][i] = np.sort(rng.choice(n, p, replace=False))
    return batch


def _bertjax_outputs(cfg: model.BertConfig, params, batch) -> dict[str, np.ndarray]:
    @jax.jit
    def run(params, batch):
        seq, pooled = model.BertModel(cfg).apply(
            {"params": params["bert"]}, batch["input_ids"], batch["input_mask"],
            batch["segment_ids"])
        mlm, nsp = model.BertForPreTraining(cfg).apply(
            {"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
            batch["masked_lm_positions"])
        return dict(seq=seq, pooled=pooled, mlm=mlm, nsp=nsp)
    return {k: np.asarray(v) for k, v in run(params, batch).items()}


def _hf_outputs(hf: transformers.BertForPreTraining, batch) -> dict[str, np.ndarray]:
    args = dict(input_ids=torch.from_numpy(batch["input_ids"].astype(np.int64)),
                attention_mask=torch.from_numpy(batch["input_mask"].astype(np.int64)),
                token_type_ids=torch.from_numpy(batch["segment_ids"].astype(np.int64)))
    with torch.no_grad():
        enc = hf.bert(**args)
        full = hf(**args)
    # bertjax scores only the masked positions; gather HF's all-position logits to match.
    mlm = np.take_along_axis(full.prediction_logits.numpy(),
                             batch["masked_lm_positions"][..., None], axis=1)
    return dict(seq=enc.last_hidden_state.numpy(), pooled=enc.pooler_output.numpy(), mlm=mlm,
                nsp=full.seq_relationship_logits.numpy())


def _check_outputs(ours, ref, cfg: model.BertConfig, batch, what: str) -> None:
    """Every read output within the float32 bound (tests/tolerances.py) of the reference."""
    real = batch["input_mask"].astype(bool)
    k = max(cfg.hidden_size, cfg.intermediate_size, batch["input_ids"].shape[1])
    n = cfg.num_layers
    pad_diff = float(np.max(np.abs(ours["seq"][~real] - ref["seq"][~real])))
    print(f"{what}: padded positions (not read) differ by {pad_diff:.2e}")
    check_f32_close(f"{what} hidden states", ours["seq"][real], ref["seq"][real], k=k,
                    sums=chained_sums(n))
    check_f32_close(f"{what} pooled", ours["pooled"], ref["pooled"], k=k,
                    sums=chained_sums(n, heads=1))
    check_f32_close(f"{what} MLM logits", ours["mlm"], ref["mlm"], k=k,
                    sums=chained_sums(n, heads=2))
    check_f32_close(f"{what} NSP logits", ours["nsp"], ref["nsp"], k=k,
                    sums=chained_sums(n, heads=2))


@pytest.fixture(scope="module")
def tiny_hf() -> transformers.BertForPreTraining:
    return _hf_model(1000, TINY)


@pytest.fixture(scope="module")
def tiny_cfg(tiny_hf) -> model.BertConfig:
    return convert.hf_config_to_bert(tiny_hf.config.to_dict())


def _init_params(cfg: model.BertConfig, seed: int = 0):
    batch = _batch(cfg.vocab_size)
    variables = model.BertForPreTraining(cfg).init(
        jax.random.key(seed), batch["input_ids"], batch["input_mask"], batch["segment_ids"],
        batch["masked_lm_positions"])
    return jax.tree.map(np.asarray, flax.linen.meta.unbox(variables["params"]))


# --- config ----------------------------------------------------------------------------------

def test_hf_config_maps_onto_the_tiny_preset(tiny_cfg):
    assert tiny_cfg == model.BertConfig.preset(
        "tiny", vocab_size=1000, hidden_dropout=0.0, attention_dropout=0.0)
    assert convert.hf_config_to_bert(convert.bert_to_hf_config(tiny_cfg)) == tiny_cfg


@pytest.mark.parametrize("hf_act,ours", [("gelu", "gelu"), ("gelu_new", "gelu_tanh"),
                                         ("gelu_pytorch_tanh", "gelu_tanh"), ("relu", "relu")])
def test_hf_activation_names(tiny_hf, hf_act, ours):
    d = dict(tiny_hf.config.to_dict(), hidden_act=hf_act)
    assert convert.hf_config_to_bert(d).hidden_act == ours


def test_unknown_activation_and_relative_positions_are_refused(tiny_hf):
    with pytest.raises(ValueError, match="hidden_act='silu'"):
        convert.hf_config_to_bert(dict(tiny_hf.config.to_dict(), hidden_act="silu"))
    with pytest.raises(ValueError, match="relative_key"):
        convert.hf_config_to_bert(
            dict(tiny_hf.config.to_dict(), position_embedding_type="relative_key"))


# --- reference parity ------------------------------------------------------------------------

@pytest.mark.parametrize("vocab_size,sizes,attention_impl", [
    (1000, TINY, "xla"),
    (1000, TINY, "explicit"),
    (30522, TINY, "auto"),
    (1000, BASE_WIDTH, "auto"),
], ids=["tiny-v1000-xla", "tiny-v1000-explicit", "tiny-v30522", "base_width-2layer-v1000"])
def test_matches_transformers(vocab_size, sizes, attention_impl):
    hf = _hf_model(vocab_size, sizes)
    cfg = convert.hf_config_to_bert(hf.config.to_dict(), attention_impl=attention_impl)
    params, report = convert.params_from_hf(_state_dict(hf), cfg)
    assert report.unused == [] and report.missing == []
    batch = _batch(vocab_size)

    ours, ref = _bertjax_outputs(cfg, params, batch), _hf_outputs(hf, batch)
    # Sanity: the outputs are not trivially small, so the bounds mean something.
    assert np.abs(ref["mlm"]).max() > 0.5 and np.abs(ref["seq"]).max() > 1.0
    _check_outputs(ours, ref, cfg, batch,
                   f"vs transformers ({cfg.hidden_size}d, V={vocab_size}, {attention_impl})")


# --- conversion contracts --------------------------------------------------------------------

def test_mapping_table_names_every_hf_tensor_once(tiny_hf, tiny_cfg):
    names = [row.hf_name for row in convert.param_mapping(tiny_cfg)]
    assert len(names) == len(set(names))
    assert set(names) == set(tiny_hf.state_dict())


def test_round_trip_is_exact(tiny_hf, tiny_cfg):
    sd = _state_dict(tiny_hf)
    params, _ = convert.params_from_hf(sd, tiny_cfg)
    assert jax.tree.structure(params) == jax.tree.structure(_init_params(tiny_cfg))
    back = convert.params_to_hf(params, tiny_cfg)
    assert set(back) == set(sd)
    for name, x in sd.items():
        assert back[name].shape == x.shape and back[name].dtype == x.dtype, name
        np.testing.assert_array_equal(back[name], x, err_msg=name)


@pytest.mark.parametrize("attention_impl", ["xla", "explicit"])
def test_padding_is_invisible(tiny_hf, tiny_cfg, attention_impl):
    cfg = convert.hf_config_to_bert(tiny_hf.config.to_dict(), attention_impl=attention_impl)
    params, _ = convert.params_from_hf(_state_dict(tiny_hf), cfg)
    batch = _batch(cfg.vocab_size)
    pad = batch["input_mask"] == 0
    assert pad.any()
    other = dict(batch)
    other["input_ids"] = np.where(pad, (batch["input_ids"] + 7) % cfg.vocab_size + 1,
                                  batch["input_ids"])
    other["segment_ids"] = np.where(pad, 1 - batch["segment_ids"], batch["segment_ids"])
    a, b = _bertjax_outputs(cfg, params, batch), _bertjax_outputs(cfg, params, other)
    real = ~pad
    diffs = {"seq": float(np.max(np.abs(a["seq"][real] - b["seq"][real])))}
    diffs.update({k: float(np.max(np.abs(a[k] - b[k]))) for k in ("pooled", "mlm", "nsp")})
    print(f"padding invariance ({attention_impl}): {diffs}")
    # The change must reach the padded positions, or the test proves nothing.
    assert np.max(np.abs(a["seq"][pad] - b["seq"][pad])) > 1e-3
    # Masked positions all lie within each sequence, so MLM logits must not move either.
    assert all(v <= 1e-6 for v in diffs.values()), diffs


def test_export_loads_strictly_into_transformers(tiny_cfg):
    cfg = tiny_cfg
    init = _init_params(cfg, seed=3)
    # Move biases and LayerNorm affine off their 0/1 init so their mapping is exercised.
    leaves, treedef = jax.tree.flatten(init)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    params = jax.tree.unflatten(treedef, [
        np.asarray(x + 0.1 * jax.random.normal(k, x.shape)) if x.ndim == 1 else x
        for x, k in zip(leaves, keys)])
    exported = convert.params_to_hf(params, cfg)

    hf_config = transformers.BertConfig(**convert.bert_to_hf_config(cfg),
                                        attn_implementation="eager")
    hf = transformers.BertForPreTraining(hf_config).eval()
    result = hf.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()},
                                strict=False)
    # Only HF's own buffers may be absent from the export; nothing may be left over.
    buffers = {name for name, _ in hf.named_buffers()}
    assert result.unexpected_keys == []
    assert set(result.missing_keys) <= buffers, result.missing_keys

    batch = _batch(cfg.vocab_size, seed=5)
    ours, ref = _bertjax_outputs(cfg, params, batch), _hf_outputs(hf, batch)
    _check_outputs(ours, ref, cfg, batch, "export into transformers")


def test_safetensors_directories_both_ways(tiny_hf, tiny_cfg, tmp_path):
    sd = _state_dict(tiny_hf)
    tiny_hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    hf_config, tensors = convert.load_hf_checkpoint(str(tmp_path / "hf"))
    assert convert.hf_config_to_bert(hf_config) == tiny_cfg
    params, report = convert.params_from_hf(tensors, tiny_cfg)
    assert report.unused == [] and report.missing == []
    expected, _ = convert.params_from_hf(sd, tiny_cfg)
    jax.tree.map(np.testing.assert_array_equal, params, expected)

    tiny_hf.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="300KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    _, shards = convert.load_hf_checkpoint(str(tmp_path / "sharded"))
    assert shards.keys() == tensors.keys()

    convert.save_hf_checkpoint(str(tmp_path / "ours"), params, tiny_cfg)
    reloaded = transformers.BertForPreTraining.from_pretrained(
        str(tmp_path / "ours"), local_files_only=True)
    for name, x in _state_dict(reloaded).items():
        np.testing.assert_array_equal(x, sd[name], err_msg=name)


def test_bert_model_checkpoint_takes_heads_from_init(tiny_hf, tiny_cfg, caplog):
    encoder_only = _state_dict(tiny_hf.bert)  # BertModel names: no "bert." prefix, no heads
    heads = ["mlm/transform/bias", "mlm/transform/kernel", "mlm/transform_norm/bias",
             "mlm/transform_norm/scale", "mlm_bias", "nsp/bias", "nsp/kernel"]
    with pytest.raises(ValueError, match="nsp/kernel.*init_params"):
        convert.params_from_hf(encoder_only, tiny_cfg)

    init = _init_params(tiny_cfg, seed=1)
    with caplog.at_level(logging.WARNING):
        params, report = convert.params_from_hf(encoder_only, tiny_cfg, init_params=init)
    assert report.missing == heads
    assert "mlm_bias" in caplog.text and "nsp/kernel" in caplog.text
    full, _ = convert.params_from_hf(_state_dict(tiny_hf), tiny_cfg)
    jax.tree.map(np.testing.assert_array_equal, params["bert"], full["bert"])
    jax.tree.map(np.testing.assert_array_equal, params["nsp"], init["nsp"])
    np.testing.assert_array_equal(params["mlm_bias"], init["mlm_bias"])


def test_extra_tensors_and_buffers_are_reported(tiny_hf, tiny_cfg):
    sd = _state_dict(tiny_hf)
    sd["classifier.weight"] = np.zeros((3, tiny_cfg.hidden_size), np.float32)
    sd["bert.embeddings.position_ids"] = np.arange(512)[None]
    _, report = convert.params_from_hf(sd, tiny_cfg)
    assert report.unused == ["classifier.weight"]
    assert report.buffers == ["bert.embeddings.position_ids"]
    assert len(report.used) == len(sd) - 2


def test_legacy_gamma_beta_names_are_accepted(tiny_hf, tiny_cfg):
    sd = _state_dict(tiny_hf)
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                        "LayerNorm.beta"): v
              for k, v in sd.items()}
    assert legacy.keys() != sd.keys()
    params, report = convert.params_from_hf(legacy, tiny_cfg)
    expected, _ = convert.params_from_hf(sd, tiny_cfg)
    assert report.unused == []
    jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_shape_mismatch_names_tensor_and_both_shapes(tiny_hf, tiny_cfg):
    sd = _state_dict(tiny_hf)
    name = "bert.encoder.layer.1.attention.self.key.weight"
    sd[name] = sd[name][:, :64]
    with pytest.raises(ValueError, match=rf"{name}.*\(128, 64\).*\(128, 128\)"):
        convert.params_from_hf(sd, tiny_cfg)


def test_untied_decoder_is_refused(tiny_hf, tiny_cfg):
    sd = _state_dict(tiny_hf)
    sd["cls.predictions.decoder.weight"] = sd["cls.predictions.decoder.weight"] + 1.0
    with pytest.raises(ValueError, match="cls.predictions.decoder.weight.*tied"):
        convert.params_from_hf(sd, tiny_cfg)


def test_prefixed_and_bare_names_together_are_refused(tiny_hf, tiny_cfg):
    sd = _state_dict(tiny_hf)
    sd["pooler.dense.bias"] = sd["bert.pooler.dense.bias"]
    with pytest.raises(ValueError, match="pooler.dense.bias"):
        convert.params_from_hf(sd, tiny_cfg)
