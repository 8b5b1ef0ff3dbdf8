"""bertjax.convert on bad input, and the export of a fine-tuned model.

Every bad input is one ``error:`` line naming the file or value and the fix, exit 2, no
traceback, and nothing written: neither the output nor its hidden temporary sibling appears, and
an existing output is left as it was (checksums). The fine-tuning export is checked against
transformers: ``BertModel.from_pretrained`` on the exported directory gives bertjax's hidden
states of the fine-tuned encoder.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bertjax import model as model_lib
from bertjax.interop import checkpoints as convert_io
from bertjax.interop import mapping
from commands import assert_one_error, checksums, run

FINETUNE_FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetuning", "files",
                              "finetune")
VOCAB_DIR = os.path.join(FINETUNE_FILES, "vocab")


def _tiny_cfg(vocab_size: int = 40) -> model_lib.BertConfig:
    return model_lib.BertConfig(vocab_size=vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                intermediate_size=64, max_position_embeddings=64)


def _params(cfg: model_lib.BertConfig, seed: int = 3):
    ids = jnp.zeros((1, 8), jnp.int32)
    params = model_lib.BertForPreTraining(cfg).init(
        jax.random.PRNGKey(seed), ids, ids, ids, jnp.zeros((1, 2), jnp.int32))["params"]
    return jax.tree.map(np.asarray, nn.meta.unbox(params))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> str:
    """A small, good HF BertForPreTraining directory (written by bertjax's own exporter)."""
    path = str(tmp_path_factory.mktemp("hf") / "good")
    cfg = _tiny_cfg()
    mapping.save_hf_checkpoint(path, _params(cfg), cfg)
    return path


def _variant(hf_dir: str, where, name: str) -> str:
    """A copy of the good HF directory under ``where`` to break."""
    path = os.path.join(str(where), name)
    shutil.copytree(hf_dir, path)
    return path


def _import(source: str, out: str, kind: str = "hf"):
    return run("convert", f"--from={kind}", f"--input={source}", f"--output={out}")


def _nothing_written(parent, *keep: str) -> None:
    assert sorted(os.listdir(parent)) == sorted(keep), os.listdir(parent)  # no output, no .tmp


# --- case 1: a truncated weights file ----------------------------------------------------------

def test_truncated_safetensors_is_one_line_naming_the_file(hf_dir, tmp_path):
    src = _variant(hf_dir, tmp_path, "truncated")
    weights = os.path.join(src, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    assert_one_error(_import(src, str(tmp_path / "out")), weights, "truncated",
                     "copy or save it again")
    _nothing_written(tmp_path, "truncated")


# --- case 6: more bad imports (new messages and pinned ones) ----------------------------------

def _break_config(src: str, **changes) -> None:
    path = os.path.join(src, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def test_config_json_but_no_weights(hf_dir, tmp_path):  # pinned: already one line
    src = _variant(hf_dir, tmp_path, "noweights")
    os.remove(os.path.join(src, "model.safetensors"))
    assert_one_error(_import(src, str(tmp_path / "out")), src, "model.safetensors",
                     "save_pretrained")
    _nothing_written(tmp_path, "noweights")


def test_config_of_another_model_type(hf_dir, tmp_path):  # pinned: already one line
    src = _variant(hf_dir, tmp_path, "roberta")
    _break_config(src, model_type="roberta")
    assert_one_error(_import(src, str(tmp_path / "out")), "model_type='roberta'",
                     "only BERT checkpoints")
    _nothing_written(tmp_path, "roberta")


def test_config_size_that_is_not_a_number_names_the_key(hf_dir, tmp_path):
    src = _variant(hf_dir, tmp_path, "words")
    _break_config(src, hidden_size="big")
    assert_one_error(_import(src, str(tmp_path / "out")), "hf_config.hidden_size='big' is not "
                     "an integer", "config.json")
    _nothing_written(tmp_path, "words")


def test_config_json_that_is_not_json(hf_dir, tmp_path):  # pinned: already one line
    src = _variant(hf_dir, tmp_path, "badjson")
    with open(os.path.join(src, "config.json"), "w") as f:
        f.write('{"model_type": ')
    assert_one_error(_import(src, str(tmp_path / "out")),
                     os.path.join(src, "config.json"), "is not valid JSON")
    _nothing_written(tmp_path, "badjson")


SHARD = "model-00001-of-00002.safetensors"


@pytest.mark.parametrize("index, fragments", [
    ({"weight_map": {"bert.pooler.dense.bias": SHARD}},  # names a shard that is not there
     (SHARD, "does not exist", "model.safetensors.index.json lists it")),
    ({"metadata": {}}, ("model.safetensors.index.json", "no weight_map")),
], ids=["missing_shard", "no_weight_map"])
def test_a_sharded_checkpoint_index_that_does_not_hold(hf_dir, tmp_path, index, fragments):
    src = _variant(hf_dir, tmp_path, "sharded")
    os.remove(os.path.join(src, "model.safetensors"))
    with open(os.path.join(src, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    line = assert_one_error(_import(src, str(tmp_path / "out")), *fragments[1:])
    assert fragments[0] in line
    _nothing_written(tmp_path, "sharded")


def test_pytorch_bin_that_is_not_a_state_dict(hf_dir, tmp_path):
    src = _variant(hf_dir, tmp_path, "bin")
    os.remove(os.path.join(src, "model.safetensors"))
    with open(os.path.join(src, "pytorch_model.bin"), "wb") as f:
        f.write(os.urandom(2000))
    assert_one_error(_import(src, str(tmp_path / "out")),
                     os.path.join(src, "pytorch_model.bin"), "cannot be loaded by torch",
                     "safe_serialization=True")
    _nothing_written(tmp_path, "bin")


def test_input_that_is_a_file(hf_dir, tmp_path):  # pinned: already one line
    weights = os.path.join(hf_dir, "model.safetensors")
    assert_one_error(_import(weights, str(tmp_path / "out")), weights, "is not a directory")
    _nothing_written(tmp_path)


def _tf_checkpoint(directory: str, cfg: model_lib.BertConfig) -> None:
    """A google-research style directory: bert_config.json and a one-variable TF1 checkpoint."""
    import tensorflow as tf

    hf = mapping.bert_to_hf_config(cfg)
    with open(os.path.join(directory, "bert_config.json"), "w") as f:
        json.dump({k: v for k, v in hf.items() if k not in ("model_type", "architectures")}, f)
    graph = tf.Graph()
    with graph.as_default():
        var = tf.compat.v1.Variable(np.zeros(cfg.hidden_size, np.float32),
                                    name="bert/pooler/dense/bias")
        saver = tf.compat.v1.train.Saver(var_list={"bert/pooler/dense/bias": var})
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, os.path.join(directory, "bert_model.ckpt"), write_meta_graph=False)


def test_tf_checkpoint_missing_its_data_file(tmp_path):
    src = tmp_path / "uncased_L-1_H-32_A-2"
    src.mkdir()
    _tf_checkpoint(str(src), _tiny_cfg())
    for name in os.listdir(src):
        if ".data-" in name:
            os.remove(src / name)
    assert_one_error(_import(str(src), str(tmp_path / "out"), "tf"),
                     str(src / "bert_model.ckpt"), "TensorFlow cannot read this checkpoint",
                     "copy them again")
    _nothing_written(tmp_path, src.name)


def test_tf_checkpoint_missing_its_index(tmp_path):  # pinned: already one line
    src = tmp_path / "tf"
    src.mkdir()
    hf = mapping.bert_to_hf_config(_tiny_cfg())
    (src / "bert_config.json").write_text(json.dumps(hf))
    (src / "bert_model.ckpt.data-00000-of-00001").write_bytes(os.urandom(100))
    assert_one_error(_import(str(src), str(tmp_path / "out"), "tf"), str(src),
                     "has no TF checkpoint", "bert_model.ckpt.index")
    _nothing_written(tmp_path, "tf")


# --- export refusals ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory) -> str:
    """An import of the small HF directory: a complete bertjax workdir."""
    workdir = str(tmp_path_factory.mktemp("imported") / "workdir")
    convert_io.import_checkpoint("hf", hf_dir, workdir, do_lower_case=True)
    return workdir


def test_export_into_an_existing_directory_overwrites_nothing(imported, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "config.json").write_text("{}")
    before = checksums(str(out))
    result = run("convert", "--to=hf", f"--input={imported}", f"--output={out}")
    assert_one_error(result, f"--output={out} already exists and is not empty",
                     "nothing is overwritten")
    assert checksums(str(out)) == before
    _nothing_written(tmp_path, "exists")


def test_export_of_a_directory_that_is_no_run(tmp_path):  # pinned: already one line
    data = tmp_path / "prepared"  # e.g. a bertjax.prepare output
    data.mkdir()
    (data / "metadata.json").write_text("{}")
    result = run("convert", "--to=hf", f"--input={data}", f"--output={tmp_path / 'out'}")
    assert_one_error(result, f"--input='{data}'", "holds no complete bertjax checkpoint")
    _nothing_written(tmp_path, "prepared")


def test_export_of_a_run_whose_only_step_is_damaged(imported, tmp_path):
    workdir = tmp_path / "damaged"
    shutil.copytree(imported, workdir)
    for name in os.listdir(workdir / "checkpoints" / "0" / "state"):
        if name.startswith(("ocdbt", "manifest", "d")) and name != "_METADATA":
            path = workdir / "checkpoints" / "0" / "state" / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = checksums(str(workdir))
    result = run("convert", "--to=hf", f"--input={workdir}", f"--output={tmp_path / 'out'}")
    assert_one_error(result, f"--input={workdir}", "no checkpoint step can be exported",
                     "step 0 (")
    assert checksums(str(workdir)) == before
    _nothing_written(tmp_path, "damaged")


# --- case 2: a fine-tuned model exports ---------------------------------------------------------

@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> dict:
    """A tiny fine-tuning (2 steps of sentence classification) from a tiny import whose
    tokenizer is the test vocabulary's WordPiece (as tests/finetuning/test_finetune.py)."""
    from bertjax.finetuning import classify, features
    from bertjax.finetuning.defaults import finetune_config

    base = tmp_path_factory.mktemp("ft")
    source = str(base / "import")
    cfg = _tiny_cfg(features.WordPieceAdapter(VOCAB_DIR).vocab_size)
    start = _params(cfg)
    convert_io.save_workdir_state(source, start, cfg)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(VOCAB_DIR, name), source)
    c = finetune_config("custom")
    c.init_from = source
    c.data.train = os.path.join(FINETUNE_FILES, "train.tsv")
    c.data.dev = os.path.join(FINETUNE_FILES, "dev.tsv")
    c.data.text_a, c.data.labels = "sentence", "neg,pos"
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 16, 16, 8
    c.total_steps, c.eval_every, c.optim.lr = 2, 2, 2e-3
    c.model.hidden_dropout = c.model.attention_dropout = 0.0
    c.pooling = "cls"  # transformers' own class: BertModel inside it, pooler included
    workdir = str(base / "run")
    classify.run(c, workdir)
    return dict(workdir=workdir, cfg=cfg, start=start)


def _saved_bert(workdir: str) -> dict:
    """The fine-tuned checkpoint's encoder, read with orbax directly (as numpy)."""
    import orbax.checkpoint as ocp

    from bertjax import rundir

    state = f"{rundir.resolve(workdir).step_dir}/state"
    meta = ocp.PyTreeCheckpointer().metadata(state)
    tree = getattr(meta, "item_metadata", meta)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ocp.PyTreeCheckpointer().restore(
        state, args=ocp.args.PyTreeRestore(restore_args=args))["params"]["bert"]


def test_finetuned_encoder_exports_and_loads_as_hf_bert_model(finetuned, tmp_path):
    import os as _os
    _os.environ.setdefault("USE_TF", "0")
    import torch
    import transformers

    from bertjax.finetuning import features
    from tolerances import chained_sums, check_f32_close

    out = str(tmp_path / "hf")
    result = run("convert", "--to=hf", f"--input={finetuned['workdir']}", f"--output={out}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    # the head is exported with the encoder (tests/test_hf_export.py checks the head itself)
    assert not [l for l in result.stdout.splitlines() if l.startswith("note:")], result.stdout
    assert "for transformers.BertForSequenceClassification" in result.stdout
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors",
                                       "special_tokens_map.json", "tokenizer_config.json",
                                       "vocab.txt"]

    bert = _saved_bert(finetuned["workdir"])
    moved = np.abs(bert["layer_0"]["output"]["kernel"]
                   - finetuned["start"]["bert"]["layer_0"]["output"]["kernel"]).max()
    assert moved > 0  # the fine-tuned encoder, not the import it started from

    tok = features.WordPieceAdapter(VOCAB_DIR)
    texts = ["the good cat sits", "old car slow green fish moon"]
    batch = features.encode([{"text_a": t, "text_b": None, "label": None} for t in texts], tok, 12)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    ref_ids = hf_tok(texts, max_length=12, padding="max_length", truncation=True)["input_ids"]
    np.testing.assert_array_equal(batch["input_ids"], np.array(ref_ids))

    hf = transformers.BertModel.from_pretrained(out, local_files_only=True,
                                                attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(batch["input_ids"]).long(),
                 attention_mask=torch.from_numpy(batch["input_mask"]).long(),
                 token_type_ids=torch.from_numpy(batch["segment_ids"]).long())
    cfg = finetuned["cfg"]
    seq, pooled = model_lib.BertModel(cfg).apply({"params": bert}, batch["input_ids"],
                                                 batch["input_mask"], batch["segment_ids"])
    real = batch["input_mask"].astype(bool)
    k = max(cfg.hidden_size, cfg.intermediate_size, 12)
    check_f32_close("fine-tuned encoder vs transformers.BertModel: hidden states",
                    np.asarray(seq)[real], ref.last_hidden_state.numpy()[real], k=k,
                    sums=chained_sums(cfg.num_layers))
    check_f32_close("fine-tuned encoder vs transformers.BertModel: pooled",
                    np.asarray(pooled), ref.pooler_output.numpy(), k=k,
                    sums=chained_sums(cfg.num_layers, heads=1))


def test_export_table_has_one_reader_per_run_kind():
    assert set(convert_io.EXPORTS) == {"pretraining", "finetuning", "import"}
