"""Export of fine-tuned runs with their task heads, and of sentencepiece tokenizers, to HF.

  * the task tables (bertjax/interop/mapping.py ``task_mapping``): every head's layout against
    transformers' class (``load_state_dict(strict=True)``) and back, bitwise;
  * the export's reading of a run config (family, labels) against bertjax.finetuning's own;
  * sentencepiece: bertjax's tokenizer, trained by the project's prepare code on the embedded
    corpus, and ``AutoTokenizer.from_pretrained`` of the exported tokenizer.json give the same
    ids on every line of the corpus (unigram and BPE), and a pre-training run on that data
    exports it;
  * equality (slow): tiny fine-tuning runs of each head, exported with the convert command,
    loaded with ``transformers.pipeline(...)``, give bertjax's labels and probabilities (raw
    score for regression) within 1e-5, computed here with the family's model on the run's
    parameters read from its checkpoint.

Files: tests/finetuning/files (the fine-tuning tests' data and WordPiece vocabularies).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import unicodedata

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bertjax import model as model_lib
from bertjax import rundir
from bertjax.finetuning.defaults import finetune_config
from bertjax.interop import checkpoints as convert_io
from bertjax.interop import hf_tokenizer
from bertjax.interop import mapping
from envs import xla_flags

os.environ.setdefault("USE_TF", "0")  # transformers: torch only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = os.path.join(ROOT, "tests", "finetuning", "files")
TOL = 1e-5


def _tiny_cfg(vocab_size: int, layers: int = 1) -> model_lib.BertConfig:
    return model_lib.BertConfig(vocab_size=vocab_size, hidden_size=32, num_layers=layers,
                                num_heads=2, intermediate_size=64, max_position_embeddings=64)


def _random_params(model, seed: int, scale: float = 0.2, inputs: int = 3) -> dict:
    """Random values for every parameter of ``model`` (shapes traced, nothing compiled)."""
    import flax

    ids = jnp.zeros((1, 8), jnp.int32)
    extra = (jnp.zeros((1, 2), jnp.int32),) if inputs == 4 else ()
    shapes = flax.linen.meta.unbox(jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), ids, ids, ids, *extra)["params"]))
    rng = np.random.default_rng(seed)
    flat = {k: (1.0 + 0.1 * rng.standard_normal(v.shape) if k[-1] == "scale" else
                scale * rng.standard_normal(v.shape)).astype(v.dtype)
            for k, v in flax.traverse_util.flatten_dict(shapes).items()}
    return flax.traverse_util.unflatten_dict(flat)


def _make_import(workdir: str, vocab_size: int | None = None,
                 vocab_dir: str | None = None) -> str:
    """A bertjax workdir shaped like a `bertjax.convert` import: random tiny BERT (large
    enough weights that the heads' outputs differ clearly), with a WordPiece vocab if given
    (its size, unless ``vocab_size`` says otherwise)."""
    if vocab_size is None:
        from bertjax.finetuning import features
        vocab_size = features.WordPieceAdapter(vocab_dir).vocab_size
    cfg = _tiny_cfg(vocab_size)
    convert_io.save_workdir_state(
        workdir, _random_params(model_lib.BertForPreTraining(cfg), 3, inputs=4), cfg)
    if vocab_dir:
        for name in ("vocab.txt", "tokenizer_config.json"):
            shutil.copy(os.path.join(vocab_dir, name), workdir)
    return workdir


def _hf():
    """transformers, its pipelines used with torch (framework="pt" at each call: an earlier
    test in the same process may have imported it with TensorFlow enabled)."""
    import transformers
    transformers.logging.set_verbosity_error()
    return transformers


# ------------------------------------------------------------------------------ the tables


def _family_models(cfg):
    from bertjax.finetuning import classify, qa, tagging
    return {
        "BertForSequenceClassification": classify.SequenceClassifier(cfg, 3, pooling="cls"),
        mapping.MEAN_POOLING_CLASS: classify.SequenceClassifier(cfg, 1, pooling="mean"),
        "BertForTokenClassification": tagging.TokenTagger(cfg, 5),
        "BertForQuestionAnswering": qa.SpanQA(cfg),
    }


@pytest.mark.parametrize("architecture", sorted(mapping.TASK_CLASSES))
def test_task_table_fits_transformers_class_and_round_trips(architecture):
    transformers = _hf()
    import torch

    cfg = _tiny_cfg(40, layers=2)
    model = _family_models(cfg)[architecture]
    params = _random_params(model, 1)
    tensors = mapping.task_to_hf(params, cfg, architecture)
    head, pooler = mapping.TASK_CLASSES[architecture]
    width = params[head]["kernel"].shape[-1]
    hf_config = transformers.BertConfig(**mapping.bert_to_hf_config(cfg, architecture),
                                        num_labels=width)
    if architecture == mapping.MEAN_POOLING_CLASS:
        hf_model = _mean_pooling_module().BertMeanPoolingForSequenceClassification(
            _mean_pooling_module().BertjaxMeanPoolingConfig(**hf_config.to_dict()))
    else:
        hf_model = getattr(transformers, architecture)(hf_config)
    want = {k for k in hf_model.state_dict() if not k.endswith(("position_ids",
                                                                "token_type_ids"))}
    assert set(tensors) == want
    hf_model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    back, unused = mapping.task_from_hf(
        {k: v.numpy() for k, v in hf_model.state_dict().items()}, cfg, architecture)
    assert unused == []
    flat_in = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_back = dict(jax.tree_util.tree_flatten_with_path(back)[0])
    for path, x in flat_in:
        if not pooler and jax.tree_util.keystr(path).startswith("['bert']['pooler']"):
            assert path not in flat_back
            continue
        np.testing.assert_array_equal(flat_back[path], x, err_msg=jax.tree_util.keystr(path))


def _mean_pooling_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bertjax_hf_modeling", os.path.join(ROOT, "bertjax", "interop", "hf_modeling.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class_names_are_read_as_fine_tuning_reads_them():
    for task, data, want in [("mnli", {}, ("contradiction", "entailment", "neutral")),
                             ("stsb", {}, None),
                             ("custom", {"labels": " neg, pos ,neutral"},
                              ("neg", "pos", "neutral")),
                             ("custom", {"regression": True, "labels": ""}, None)]:
        c = finetune_config("custom")
        c.task = task
        c.data.update(data)
        got = convert_io._classify_labels(json.loads(json.dumps(c.to_dict())))
        assert got == want, (task, data)


def test_a_family_without_a_transformers_class_exports_its_encoder(tmp_path):
    """A registered family of one's own (bertjax.finetuning.families.register): its encoder as
    BertModel, the head left out and named."""
    workdir = _make_import(str(tmp_path / "run"), 40)  # no model_config.json: a run, no import
    meta = os.path.join(workdir, "checkpoints", "0", "config", "metadata")
    with open(meta) as f:
        saved = json.load(f)
    saved.update(task="mine", family="my_family")  # a fine-tuning's config names its task
    with open(meta, "w") as f:
        json.dump(saved, f)
    summary = convert_io.export(workdir, str(tmp_path / "hf"))
    assert summary.kind == "finetuning" and summary.exported.architecture == "BertModel"
    assert "family my_family" in summary.exported.left_out and "nsp" in summary.exported.left_out
    _hf().BertModel.from_pretrained(str(tmp_path / "hf"), local_files_only=True)


# ---------------------------------------------------------------------------- sentencepiece

# Beyond the corpus (English prose): whitespace at the ends and inside, control characters,
# compatibility forms, and the same lines decomposed (NFD): tokenizers' Precompiled alone
# dropped combining marks there (bertjax/interop/hf_tokenizer.py).
EXTRA_LINES = ["", "   ", "\t", "  leading  and   trailing  ", "tab\there\nnew\r\nline",
               "a\u00a0b\u3000c\u2009d", "x\u200by\ufeffz", "\x00ctrl\x07 bell",
               "Ünïcödé ﬁ ligature ① ½ ™ Ｆｕｌｌ", "日本語のテキスト～全角ＡＢＣ１２３、半角ｶﾀｶﾅ",
               "Tiếng Việt: người, những, được, Nguyễn", "한국어 문장입니다", "हिन्दी क़लम",
               "emoji 👍🏽 👨‍👩‍👧 ✔︎", " ▁ odd ▁▁ marks", "café naïve Größe cœur"]
EXTRA_LINES += [unicodedata.normalize("NFD", s) for s in EXTRA_LINES]


@pytest.fixture(scope="module")
def corpus_lines(tmp_path_factory) -> tuple[str, list[str]]:
    from bertjax.data import corpus

    path = str(tmp_path_factory.mktemp("corpus") / "stdlib.txt")
    corpus.write_embedded_corpus(path, max_documents=150)
    with open(path, encoding="utf-8") as f:
        return path, f.read().splitlines()


def _prepare(corpus_file: str, output: str, model_type: str, tokenizer_only: bool) -> str:
    from bertjax.data import prepare as prepare_lib

    prepare_lib.prepare(prepare_lib.PrepareConfig(
        input=corpus_file, output=output, vocab_size=1000, tokenizer_type=model_type,
        num_shards=2, eval_fraction=0.05, processes=1, tokenizer_only=tokenizer_only))
    return os.path.join(output, "tokenizer.model")


def _match(model_path: str, directory: str, lines: list[str]) -> tuple[int, list]:
    from bertjax.data import tokenizer as tok_lib

    hf_tok = _hf().AutoTokenizer.from_pretrained(directory, local_files_only=True)
    ours = tok_lib.Tokenizer.load(model_path).encode(lines)
    theirs = hf_tok(lines)["input_ids"]
    bad = [(line, a, b) for line, a, b in zip(lines, ours, theirs)
           if b != [tok_lib.CLS_ID] + a + [tok_lib.SEP_ID]]
    return len(lines) - len(bad), bad


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_tokenizer_gives_bertjax_ids_on_the_corpus(model_type, corpus_lines,
                                                                 tmp_path):
    from bertjax.data import tokenizer as tok_lib

    corpus_file, lines = corpus_lines
    model_path = _prepare(corpus_file, str(tmp_path / "prep"), model_type, tokenizer_only=True)
    out = str(tmp_path / "hf")
    os.makedirs(out)
    hf_tokenizer.write_sentencepiece(model_path, out, 64)
    assert sorted(os.listdir(out)) == ["special_tokens_map.json", "tokenizer.json",
                                       "tokenizer_config.json"]
    hf_tok = _hf().AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert hf_tok.is_fast and len(hf_tok) == tok_lib.Tokenizer.load(model_path).vocab_size
    assert [hf_tok.convert_tokens_to_ids(s) for s in tok_lib.SPECIAL_TOKENS] == list(range(5))
    assert len(lines) > 6000
    matched, bad = _match(model_path, out, lines)
    print(f"{model_type}: {matched}/{len(lines)} corpus lines give bertjax's ids")
    assert not bad, bad[:3]
    matched, bad = _match(model_path, out, EXTRA_LINES)
    assert not bad, bad[:3]
    # pairs: [CLS] A [SEP] B [SEP], token types 0 then 1 (bertjax's features.encode layout)
    tok = tok_lib.Tokenizer.load(model_path)
    a, b = tok.encode([lines[0], lines[1]])
    enc = hf_tok(lines[0], lines[1])
    assert enc["input_ids"] == [2] + a + [3] + b + [3]
    assert enc["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert hf_tok.decode(enc["input_ids"], skip_special_tokens=True).split() == (
        tok.decode(a).split() + tok.decode(b).split())


def test_sentencepiece_pretraining_run_exports_its_tokenizer(corpus_lines, tmp_path):
    from bertjax import checkpoint as ckpt_lib
    from bertjax import config as config_lib
    from bertjax import sharding
    from bertjax import train

    corpus_file, lines = corpus_lines
    prepared = str(tmp_path / "prepared")
    model_path = _prepare(corpus_file, prepared, "unigram", tokenizer_only=False)
    c = config_lib.base_config()
    c.data.source, c.data.path = "prepared", prepared
    c.model.preset, c.model.vocab_size = "custom", 1000
    c.model.num_layers, c.model.hidden_size, c.model.num_heads = 1, 32, 2
    c.model.intermediate_size, c.model.max_position_embeddings = 64, 64
    state, _ = train.build(c, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    workdir = str(tmp_path / "run")
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every=1,
                                 async_save=False)
    ckpt.save(1, state, c, force=True)
    ckpt.close()
    assert rundir.resolve(workdir).tokenizer() == ("sentencepiece", model_path)
    out = str(tmp_path / "hf")
    summary = convert_io.export(workdir, out)
    assert summary.tokenizer is None and summary.exported.architecture == "BertForPreTraining"
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    matched, bad = _match(model_path, out, lines[:2000])
    assert not bad, bad[:3]


# ------------------------------------------------------------------ fine-tuned runs (slow)


def _finetune_config(task: str, init_from: str, **settings) -> ml_collections.ConfigDict:
    from bertjax.finetuning.defaults import finetune_config

    c = finetune_config(task)
    c.init_from = init_from
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 32, 16, 8
    c.total_steps, c.eval_every, c.optim.lr = 3, 3, 2e-3
    c.model.hidden_dropout = c.model.attention_dropout = 0.0
    c.tensorboard = False
    c.update_from_flattened_dict(settings)
    return c


def _run(config, workdir: str) -> str:
    from bertjax.finetuning import families, runner

    runner.run(config, workdir, families.get(config))
    return workdir


def _classify(tmp_path_factory, name: str, tokenizer: str = "", vocab: int = 0, **settings):
    base = tmp_path_factory.mktemp(name)
    vocab_dir = None if tokenizer else os.path.join(FILES, "finetune", "vocab")
    if not vocab:
        from bertjax.finetuning import features
        vocab = features.WordPieceAdapter(vocab_dir).vocab_size
    source = _make_import(str(base / "import"), vocab, vocab_dir)
    c = _finetune_config("custom", source, tokenizer=tokenizer, **settings)
    c.data.train = os.path.join(FILES, "finetune", "train.tsv")
    c.data.dev = os.path.join(FILES, "finetune", "dev.tsv")
    c.data.text_a, c.data.labels = "sentence", "neg,pos"
    return _run(c, str(base / "run"))


@pytest.fixture(scope="module")
def run_mean(tmp_path_factory):
    return _classify(tmp_path_factory, "mean", pooling="mean")


@pytest.fixture(scope="module")
def run_cls(tmp_path_factory):
    return _classify(tmp_path_factory, "cls", pooling="cls")


def _task_run(tmp_path_factory, name: str, vocab_dir: str, make_config, train: str,
              dev: str) -> str:
    """A tiny fine-tuning (config ``make_config(import)``) from a fresh import."""
    base = tmp_path_factory.mktemp(name)
    c = make_config(_make_import(str(base / "import"), vocab_dir=vocab_dir))
    c.data.train, c.data.dev = train, dev
    return _run(c, str(base / "run"))


@pytest.fixture(scope="module")
def run_regression(tmp_path_factory):
    return _task_run(tmp_path_factory, "stsb", os.path.join(FILES, "finetune", "vocab"),
                     lambda source: _finetune_config("stsb", source),
                     os.path.join(FILES, "finetune", "sts_train.tsv"),
                     os.path.join(FILES, "finetune", "sts_dev.tsv"))


@pytest.fixture(scope="module")
def run_ner(tmp_path_factory):
    def config(source):
        c = _finetune_config("ner", source, family="ner")
        c.data.label = ""
        return c

    return _task_run(tmp_path_factory, "ner", os.path.join(FILES, "ner", "vocab"), config,
                     os.path.join(FILES, "ner", "train.conll"),
                     os.path.join(FILES, "ner", "dev.conll"))


@pytest.fixture(scope="module")
def run_qa(tmp_path_factory):
    base = tmp_path_factory.mktemp("qa")
    squad_dir = os.path.join(FILES, "squad", "capitals")
    vocab_dir = os.path.join(squad_dir, "vocab")
    source = _make_import(str(base / "import"), vocab_dir=vocab_dir)
    c = _squad_config()
    c.init_from = source
    c.data.train = os.path.join(squad_dir, "train-v1.1.json")
    c.data.dev = os.path.join(squad_dir, "dev-v1.1.json")
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 48, 16, 16
    c.data.doc_stride, c.data.max_query_length = 16, 16
    c.total_steps, c.eval_every, c.optim.lr = 3, 3, 2e-3
    c.model.hidden_dropout = c.model.attention_dropout = 0.0
    c.tensorboard = False
    return _run(c, str(base / "run"))


def _squad_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("squad_config",
                                                  os.path.join(ROOT, "configs", "squad.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("version=1.1")


def _export(workdir: str, out: str) -> str:
    """``python -m bertjax.convert --to=hf``; returns its stdout."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
    p = subprocess.run([sys.executable, "-m", "bertjax.convert", "--to=hf",
                        f"--input={workdir}", f"--output={out}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return p.stdout


def _bertjax_model(workdir: str):
    """(the family, its model and the run's parameters as numpy, the task tokenizer), read
    independently of the export: orbax restores the checkpoint as saved."""
    import orbax.checkpoint as ocp

    from bertjax.finetuning import families, features

    run = rundir.resolve(workdir)
    config = ml_collections.ConfigDict(run.saved)
    family = families.get(config)
    family.prepare(config)
    model = family.make_model(run.model_config())
    state = f"{run.step_dir}/state"
    meta = ocp.PyTreeCheckpointer().metadata(state)
    tree = getattr(meta, "item_metadata", meta)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    params = ocp.PyTreeCheckpointer().restore(
        state, args=ocp.args.PyTreeRestore(restore_args=args))["params"]
    tok = features.load_tokenizer("", run.saved["tokenizer"])
    return family, model, params, tok


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


TEXTS = ["the good cat sits", "old car slow green fish moon", "a bird sees the sky",
         "good good good", "tree river far small red"]


def _classification_equal(workdir: str, out: str, remote: bool) -> float:
    """Max |pipeline - bertjax| over every label's probability (or the raw score)."""
    transformers = _hf()
    from bertjax.finetuning import features

    family, model, params, tok = _bertjax_model(workdir)
    batch = features.encode([{"text_a": t, "text_b": None, "label": None} for t in TEXTS],
                            tok, 32)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    for i, ids in enumerate(hf_tok(TEXTS)["input_ids"]):
        assert ids == batch["input_ids"][i][batch["input_mask"][i] > 0].tolist()
    logits = np.asarray(model.apply({"params": params}, batch["input_ids"],
                                    batch["input_mask"], batch["segment_ids"]))
    labels = family.task.labels
    ours = logits[:, :1] if labels is None else _softmax(logits)
    names = ("score",) if labels is None else labels
    pipe = transformers.pipeline("text-classification", model=out, trust_remote_code=remote,
                                 framework="pt",
                                 device="cpu")
    got = pipe(TEXTS, top_k=None)
    diff = 0.0
    for i, rows in enumerate(got):
        scores = {r["label"]: r["score"] for r in rows}
        assert set(scores) == set(names)
        for j, name in enumerate(names):
            diff = max(diff, abs(scores[name] - float(ours[i, j])))
        if labels is not None:  # the same label on top
            assert max(scores, key=scores.get) == labels[int(logits[i].argmax())]
    assert diff < TOL, diff
    return diff


@pytest.mark.slow
def test_mean_pooling_classifier_exports_with_its_own_class(run_mean, tmp_path):
    transformers = _hf()
    out = str(tmp_path / "hf")
    stdout = _export(run_mean, out)
    assert "for transformers.BertMeanPoolingForSequenceClassification" in stdout
    load = [line for line in stdout.splitlines() if line.startswith("load:")]
    assert len(load) == 1 and "pooling mean" in load[0] and "trust_remote_code=True" in load[0]
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "modeling_bertjax.py",
                                       "special_tokens_map.json", "tokenizer_config.json",
                                       "vocab.txt"]
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["model_type"] == "bertjax_mean_pooling" and config["auto_map"]
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert config["problem_type"] == "single_label_classification"
    diff = _classification_equal(run_mean, out, remote=True)
    print(f"mean-pooling classifier: max |pipeline - bertjax| = {diff:.2e}")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        out, trust_remote_code=True, local_files_only=True)
    assert type(model).__name__ == mapping.MEAN_POOLING_CLASS
    # Without trust_remote_code nothing loads (not BertForSequenceClassification, silently).
    with pytest.raises(ValueError, match="trust_remote_code"):
        transformers.AutoModelForSequenceClassification.from_pretrained(
            out, trust_remote_code=False, local_files_only=True)
    # The check can tell the poolings apart: BERT's [CLS] pooler on these weights differs.
    cls_model = transformers.BertForSequenceClassification.from_pretrained(
        out, local_files_only=True).eval()
    import torch
    enc = transformers.AutoTokenizer.from_pretrained(out)(TEXTS, padding=True,
                                                          return_tensors="pt")
    with torch.no_grad():
        gap = (torch.softmax(model.eval()(**enc).logits, -1)
               - torch.softmax(cls_model(**enc).logits, -1)).abs().max().item()
    assert gap > 100 * TOL


@pytest.mark.slow
def test_cls_pooling_classifier_exports_transformers_own_class(run_cls, tmp_path):
    out = str(tmp_path / "hf")
    stdout = _export(run_cls, out)
    assert "for transformers.BertForSequenceClassification" in stdout
    assert "pooling cls" in stdout and "trust_remote_code" not in stdout
    assert "modeling_bertjax.py" not in os.listdir(out)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["model_type"] == "bert" and "auto_map" not in config
    diff = _classification_equal(run_cls, out, remote=False)
    print(f"cls-pooling classifier: max |pipeline - bertjax| = {diff:.2e}")


@pytest.mark.slow
def test_regression_exports_the_raw_score(run_regression, tmp_path):
    out = str(tmp_path / "hf")
    _export(run_regression, out)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "score"}
    diff = _classification_equal(run_regression, out, remote=True)  # mean pooling: default
    print(f"regression: max |pipeline - bertjax| = {diff:.2e}")


def _exported(run: str, tmp_path, cls: str) -> tuple:
    """(transformers, the export of ``run`` as ``cls``, bertjax's model of it)."""
    transformers = _hf()
    out = str(tmp_path / "hf")
    assert f"for transformers.{cls}" in _export(run, out)
    return transformers, out, _bertjax_model(run)


@pytest.mark.slow
def test_token_tagger_exports_as_token_classification(run_ner, tmp_path):
    from bertjax.data import tasks as readers
    from bertjax.finetuning import tagging

    transformers, out, (family, model, params, tok) = _exported(
        run_ner, tmp_path, "BertForTokenClassification")
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["id2label"] == {str(i): t for i, t in enumerate(family.labels)}
    sentences = readers.read_conll(os.path.join(FILES, "ner", "dev.conll"))[:6]
    arrays, meta = tagging.encode(sentences, tok, 32, None)
    assert len(arrays["input_ids"]) == len(sentences)  # one window each
    logits = np.asarray(model.apply({"params": params}, arrays["input_ids"],
                                    arrays["input_mask"], arrays["segment_ids"]))
    probs = _softmax(logits)
    pipe = transformers.pipeline("token-classification", model=out, device="cpu", framework="pt",
                                 aggregation_strategy="none", ignore_labels=[])
    diff, tokens = 0.0, 0
    for r, s in enumerate(sentences):
        got = pipe(" ".join(s["words"]))
        n = int(arrays["input_mask"][r].sum())
        assert [g["index"] for g in got] == list(range(1, n - 1))  # every piece, no specials
        for g in got:
            i = g["index"]
            assert g["entity"] == family.labels[int(probs[r, i].argmax())]
            diff = max(diff, abs(g["score"] - probs[r, i].max()))
            tokens += 1
    print(f"token classification: {tokens} tokens, max |pipeline - bertjax| = {diff:.2e}")
    assert diff < TOL, diff


@pytest.mark.slow
def test_span_qa_exports_as_question_answering(run_qa, tmp_path):
    from bertjax.finetuning import qa_features

    transformers, out, (family, model, params, tok) = _exported(
        run_qa, tmp_path, "BertForQuestionAnswering")
    examples = [{"id": str(i), "question": q, "context": c, "answers": [],
                 "is_impossible": False} for i, (q, c) in enumerate([
                     ("What is the capital of Norland?",
                      "The capital of Norland is Dunford. Brevia is near Orenia."),
                     ("Which place is near Orenia?",
                      "Sunmark is near Orenia. The capital of Kestria is Torwick."),
                     ("What is the capital of Valdor?",
                      "Estéria is near Brevia. The capital of Valdor is Morvia, near Sunmark.")])]
    feats = qa_features.featurise(examples, tok, 48, 16, 16)
    assert len(feats.arrays["input_ids"]) == len(examples)  # one window each
    out_logits = model.apply({"params": params}, feats.arrays["input_ids"],
                             feats.arrays["input_mask"], feats.arrays["segment_ids"])
    pipe = transformers.pipeline("question-answering", model=out, device="cpu", framework="pt")
    top, max_len, diff = 3, 15, 0.0
    for r, (e, q) in enumerate(zip(examples, feats.questions)):
        p_start = _softmax(np.asarray(out_logits["start_logits"][r]))
        p_end = _softmax(np.asarray(out_logits["end_logits"][r]))
        p_start[0] = p_end[0] = 0.0  # [CLS]: no answer, which the pipeline leaves out here
        n_ctx = len(q.offsets)
        spans = sorted(((p_start[s] * p_end[t], s, t)
                        for s in range(q.context_start, q.context_start + n_ctx)
                        for t in range(s, min(s + max_len, q.context_start + n_ctx))),
                       reverse=True)[:top]
        # align_to_words=False: the spans' own characters (else widened to whole words)
        got = pipe(question=e["question"], context=e["context"], top_k=top,
                   align_to_words=False)
        for g, (score, s, t) in zip(got, spans):
            start = int(q.offsets[s - q.context_start][0])
            end = int(q.offsets[t - q.context_start][1])
            assert (g["start"], g["end"]) == (start, end), (g, start, end)
            assert g["answer"] == e["context"][start:end]
            diff = max(diff, abs(g["score"] - score))
    print(f"question answering: max |pipeline - bertjax| span score = {diff:.2e}")
    assert diff < TOL, diff


@pytest.fixture(scope="module")
def run_sentencepiece(tmp_path_factory, corpus_lines):
    prep = str(tmp_path_factory.mktemp("sp_prep"))
    model_path = _prepare(corpus_lines[0], prep, "unigram", tokenizer_only=True)
    return _classify(tmp_path_factory, "sp", tokenizer=model_path, vocab=1000, pooling="mean")


@pytest.mark.slow
def test_sentencepiece_finetuning_exports_its_tokenizer_and_head(run_sentencepiece, tmp_path):
    out = str(tmp_path / "hf")
    stdout = _export(run_sentencepiece, out)
    assert "no tokenizer files" not in stdout
    assert {"tokenizer.json", "modeling_bertjax.py"} <= set(os.listdir(out))
    diff = _classification_equal(run_sentencepiece, out, remote=True)
    print(f"sentencepiece classifier: max |pipeline - bertjax| = {diff:.2e}")
