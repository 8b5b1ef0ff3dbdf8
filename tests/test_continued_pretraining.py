"""Continued pre-training of an imported BERT (issue 22): ``pretrain --config.init_from=IMPORT``.

  * a bertjax run exported to HF and imported back continues where it stopped: held-out MLM
    accuracy (and loss) at step 0 equal to the original's last evaluation, its heads (an untied
    decoder) kept, the model's sizes taken from the import without being restated;
  * the real all-MiniLM-L6-v2 (a BertModel checkpoint: no pre-training heads) continued on
    the embedded corpus prepared with its WordPiece vocabulary: fresh heads said in one line,
    the decoder tied to the imported embeddings; its ``convert --to=hf`` export loads in
    transformers with MiniLM's own tokenizer files and gives bertjax's fill-mask numbers;
    fine-tuning from it reads its WordPiece tokenizer;
  * data tokenized otherwise than the model is refused in one line before anything compiles.
"""

from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest

from bertjax import config as config_lib
from bertjax import rundir
from bertjax.data import prepare as prepare_lib
from bertjax.interop import checkpoints as convert_io
from real_model import SENTENCES, minilm_dir

FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetuning", "files",
                     "finetune")


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _training(c, data: str, steps: int, batch: int):
    """Run settings shared by the runs here (everything but the model)."""
    c.data.source, c.data.path = "prepared", data
    c.max_seq_length, c.max_predictions = 32, 5
    c.global_batch_size = c.eval_batch_size = batch
    c.total_steps = c.eval_every = c.checkpoint_every = steps
    c.optim.warmup_steps = 1
    c.progress_bar, c.log_every, c.async_checkpoints = False, 1, False
    c.nsp = False
    return c


@pytest.fixture(scope="module")
def sentencepiece_data(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("sp_data"))
    prepare_lib.prepare(prepare_lib.PrepareConfig(input="embedded", output=out, vocab_size=1000,
                                                  num_shards=8, max_documents=120, processes=1,
                                                  eval_fraction=0.1))
    return out


@pytest.fixture(scope="module")
def minilm_import(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("minilm") / "import")
    convert_io.import_checkpoint("hf", minilm_dir(), out)
    return out


@pytest.fixture(scope="module")
def minilm_data(minilm_import, tmp_path_factory) -> str:
    """A slice of the embedded corpus tokenized as MiniLM tokenizes (prepare --vocab=IMPORT)."""
    out = str(tmp_path_factory.mktemp("wp_data"))
    prepare_lib.prepare(prepare_lib.PrepareConfig(input="embedded", output=out, num_shards=8,
                                                  max_documents=60, processes=1,
                                                  eval_fraction=0.1, vocab=minilm_import))
    return out


@pytest.mark.slow
def test_run_to_hf_to_import_continues_with_the_same_held_out_accuracy(
        sentencepiece_data, tmp_path, capsys):
    from bertjax import loop

    original = _training(config_lib.base_config(), sentencepiece_data, 40, 16)
    original.model.vocab_size = 1000
    original.model.hidden_dropout = original.model.attention_dropout = 0.0
    original.model.tie_word_embeddings = False  # bert_tiny's decoder: a tensor of its own
    original.optim.lr, original.optim.embedding_lr = 2e-2, 3e-4  # bert_tiny's
    first = str(tmp_path / "original")
    loop.run(original, first)
    last = [r for r in _metrics(first) if r["split"] == "eval"][-1]
    assert last["step"] == 40

    convert_io.export(first, str(tmp_path / "hf"))
    imported = str(tmp_path / "imported")
    convert_io.import_checkpoint("hf", str(tmp_path / "hf"), imported)
    assert rundir.resolve(imported).initialised() == []  # every head came along

    # The model is not restated: base_config's is BERT-sized (vocab 30522, tied decoder).
    again = _training(config_lib.base_config(), sentencepiece_data, 1, 16)
    again.model.hidden_dropout = again.model.attention_dropout = 0.0  # the original's numerics
    again.init_from = imported
    capsys.readouterr()
    second = str(tmp_path / "continued")
    loop.run(again, second)
    out = capsys.readouterr().out
    assert "continuing import" in out and "start fresh" not in out
    step0 = [r for r in _metrics(second) if r["split"] == "eval"][0]
    assert step0["step"] == 0
    print(f"original's last eval {last['mlm_accuracy']:.6f} / {last['mlm_loss']:.6f}, "
          f"continued at step 0 {step0['mlm_accuracy']:.6f} / {step0['mlm_loss']:.6f}")
    assert step0["masked_tokens"] == last["masked_tokens"] > 500
    assert step0["mlm_accuracy"] == last["mlm_accuracy"] > 0.03  # past chance: it learnt
    assert abs(step0["mlm_loss"] - last["mlm_loss"]) <= 1e-6 * last["mlm_loss"]
    saved = rundir.saved_config(second)["model"]
    assert (saved["vocab_size"], saved["tie_word_embeddings"], saved["preset"]) == (
        1000, False, "tiny")


@pytest.mark.slow
def test_minilm_continued_exports_to_transformers_and_fine_tunes(minilm_import, minilm_data,
                                                                  tmp_path, capsys):
    import transformers

    import bertjax
    from bertjax import loop
    from bertjax.finetuning import families, features, runner

    c = _training(config_lib.base_config(), minilm_data, 2, 8)
    c.optim.name, c.optim.lr = "adamw", 1e-4
    c.init_from = minilm_import
    workdir = str(tmp_path / "continued")
    capsys.readouterr()
    result = loop.run(c, workdir)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("continuing import"))
    assert ("6 layers, hidden 384, 12 heads, vocab 30522" in line and "the MLM transform" in line
            and "the NSP head start fresh" in line and "decoder tied to its word embeddings" in line)
    assert [r["step"] for r in _metrics(workdir) if r["split"] == "eval"] == [0, 2]
    assert np.isfinite(result["eval"]["mlm_loss"])
    assert rundir.resolve(workdir).tokenizer() == ("wordpiece", minilm_data)

    hf = str(tmp_path / "hf")
    summary = convert_io.export(workdir, hf)
    assert summary.tokenizer is None and summary.step == 2
    assert filecmp.cmp(os.path.join(hf, "vocab.txt"), os.path.join(minilm_dir(), "vocab.txt"),
                       shallow=False)
    tok = transformers.AutoTokenizer.from_pretrained(hf, local_files_only=True)
    ref = transformers.BertTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    assert tok(SENTENCES)["input_ids"] == ref(SENTENCES)["input_ids"]
    texts = ["A man is [MASK] a horse.", "The cat sits [MASK] the house.",
             "Return the [MASK] of the file and close it."]
    pipe = transformers.pipeline("fill-mask", model=hf, tokenizer=hf, framework="pt", top_k=5)
    mine = bertjax.load(workdir).fill_mask(texts, top_k=5)
    for text, a, b in zip(texts, mine, pipe(texts)):
        assert [x["id"] for x in a] == [x["token"] for x in b], text
        np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], atol=1e-5,
                                   err_msg=text)

    from bertjax.finetuning.defaults import finetune_config
    ft = finetune_config("custom")
    ft.init_from = workdir
    ft.data.train, ft.data.dev = (os.path.join(FILES, "train.tsv"),
                                  os.path.join(FILES, "dev.tsv"))
    ft.data.text_a, ft.data.labels = "sentence", "neg,pos"
    ft.max_seq_length, ft.global_batch_size, ft.eval_batch_size = 16, 16, 8
    ft.total_steps, ft.eval_every = 2, 2
    ft.tensorboard = False
    assert features.load_tokenizer(workdir).source.startswith("WordPiece")
    report = runner.run(ft, str(tmp_path / "ft"), families.get(ft))
    assert 0.0 <= report["dev"][report["headline"]] <= 1.0
    assert rundir.resolve(str(tmp_path / "ft")).model_config().hidden_size == 384


def test_data_tokenized_otherwise_is_refused_in_one_line(minilm_import, sentencepiece_data,
                                                        tmp_path):
    from bertjax import loop

    for source, path, expect in (
            ("prepared", sentencepiece_data, "tokenized with a sentencepiece model"),
            ("embedded", str(tmp_path / "not_prepared"), "holds no prepared data")):
        c = _training(config_lib.base_config(), path, 2, 8)
        c.data.source = source
        c.init_from = minilm_import
        with pytest.raises(config_lib.ConfigError) as e:
            loop.run(c, str(tmp_path / "run"))
        message = str(e.value)
        assert expect in message and f"--vocab={minilm_import}" in message, message
        assert "\n" not in message
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "not_prepared")
