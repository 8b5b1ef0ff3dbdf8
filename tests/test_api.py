"""The Python API (bertjax.load) gives the command line's numbers and transformers' numbers.

  * fill_mask of an import with pre-training heads == transformers' pipeline("fill-mask") on
    the same model exported with ``bertjax.convert --to=hf``;
  * embed == ``python -m bertjax.embed`` on the same sentences; encode's mean over real tokens
    == embed(pooling="mean");
  * predict of fine-tuned runs == their ``--eval_only`` predictions files (classification,
    token tagging, span QA).
"""

import json
import os

import numpy as np
import pytest

import bertjax
from bertjax import config as config_lib
from bertjax.data import tasks as readers
from tests import commands
from tests.finetuning.test_finetune import FILES, custom_config, imported  # noqa: F401

SENTENCES = ["the cat sees a [MASK] near the house", "[MASK] dog runs",
             "a big red car sits near the [MASK]", "the [MASK] eats a small [MASK]"]


def test_load_gives_the_tokenizer_sizes_and_parameters(imported):  # noqa: F811
    m = bertjax.load(imported)
    assert m.kind == "import" and m.config.hidden_size == 32
    ids = m.tokenizer.special_ids
    assert ids == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert m.tokenizer.encode(["the [MASK] cat"]) == [[5, 4, 7]]
    assert set(m.params) >= {"bert", "mlm", "nsp"}
    with pytest.raises(config_lib.ConfigError, match="does not exist"):
        bertjax.load(imported + "-nope")


def test_fill_mask_equals_transformers_pipeline(imported, tmp_path):  # noqa: F811
    transformers = pytest.importorskip("transformers")
    from bertjax.interop import checkpoints

    out = str(tmp_path / "hf")
    checkpoints.export_hf(imported, out)
    pipe = transformers.pipeline("fill-mask", model=out, tokenizer=out, framework="pt",
                                 top_k=5)
    m = bertjax.load(imported)
    ours = m.fill_mask(SENTENCES, top_k=5)
    theirs = pipe(SENTENCES)
    for text, a, b in zip(SENTENCES, ours, theirs):
        a = a if text.count("[MASK]") > 1 else [a]
        b = b if text.count("[MASK]") > 1 else [b]
        for mine, ref in zip(a, b):
            assert [x["id"] for x in mine] == [x["token"] for x in ref], text
            np.testing.assert_allclose([x["score"] for x in mine], [x["score"] for x in ref],
                                       atol=1e-5, err_msg=text)
            assert [x["token"] for x in mine] == [x["token_str"] for x in ref]


def test_embed_equals_the_command_and_encode_pools_to_it(imported, tmp_path):  # noqa: F811
    texts = ["the cat sees a dog", "a big red car", "sun moon sky", "the old tree"]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(texts) + "\n")
    out = str(tmp_path / "emb.npy")
    r = commands.run("embed", f"--init_from={imported}", f"--input={path}", f"--output={out}",
                     "--batch_size=8", "--max_seq_length=16")
    assert r.returncode == 0, r.stderr[-2000:]
    m = bertjax.load(imported)
    mine = m.embed(texts, max_length=16, batch_size=8)
    np.testing.assert_allclose(mine, np.load(out), atol=1e-6)
    hidden, mask = m.encode(texts, max_length=16)
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(mean, mine, atol=1e-5)


@pytest.mark.slow
def test_predict_of_a_classifier_equals_its_eval_only_predictions(imported, tmp_path):  # noqa: F811,E501
    from bertjax.finetuning import classify

    workdir = str(tmp_path / "clf")
    classify.run(custom_config(imported), workdir)
    classify.run(custom_config(""), workdir, eval_only=True)
    with open(os.path.join(workdir, "predictions", "dev.tsv")) as f:
        written = [line.rstrip("\n").split("\t")[1] for line in f][1:]
    texts = [row.split("\t")[0] for row in open(os.path.join(FILES, "dev.tsv")).read()
             .splitlines()[1:]]
    m = bertjax.load(workdir)
    predicted = m.predict(texts, batch_size=8)
    assert [p["label"] for p in predicted] == written
    for p in predicted:
        assert abs(sum(p["scores"].values()) - 1) < 1e-5 and p["score"] == max(
            p["scores"].values())
    with pytest.raises(config_lib.ConfigError, match="without an MLM head"):
        m.fill_mask(["the [MASK]"])


@pytest.mark.slow
def test_predict_of_a_tagger_equals_its_eval_only_conll(tmp_path):
    from bertjax.finetuning import runner, tagging
    from configs import ner as ner_config
    from tests.finetuning.test_tagging import FILES as NER_FILES
    from tests.finetuning.test_tagging import make_import

    source = make_import(str(tmp_path / "import"))
    c = ner_config.get_config()
    c.init_from = source
    c.data.train = os.path.join(NER_FILES, "train.conll")
    c.data.dev = os.path.join(NER_FILES, "dev.conll")
    c.max_seq_length, c.global_batch_size, c.eval_batch_size = 16, 16, 8
    c.total_steps, c.eval_every, c.optim.lr = 40, 20, 2e-3
    c.model.hidden_dropout = c.model.attention_dropout = 0.0
    c.tensorboard = False
    workdir = str(tmp_path / "ner")
    runner.run(c, workdir, tagging.TaggingFamily())
    runner.run(ner_config.get_config(), workdir, tagging.TaggingFamily(), eval_only=True)
    blocks = [b for b in open(os.path.join(workdir, "predictions", "dev.conll")).read()
              .split("\n\n") if b.strip()]
    written = [[line.split()[2] for line in b.splitlines()] for b in blocks]
    sentences = readers.read_conll(os.path.join(NER_FILES, "dev.conll"))
    predicted = bertjax.load(workdir).predict([s["words"] for s in sentences], batch_size=8)
    assert [p["tags"] for p in predicted] == written
    assert any(p["entities"] for p in predicted)
    for p in predicted:
        for e in p["entities"]:
            assert p["tags"][e["start"]].endswith(e["type"])


@pytest.mark.slow
def test_predict_of_span_qa_equals_its_eval_only_answers(tmp_path):
    from tests.finetuning.test_qa import FILES as QA_FILES
    from tests.finetuning.test_qa import finetune_squad2, run_finetune

    workdir = str(tmp_path / "squad")
    p = finetune_squad2(workdir)
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_finetune("--config=configs/squad.py", "--eval_only", f"--workdir={workdir}")
    assert p.returncode == 0, p.stderr[-3000:]
    with open(os.path.join(workdir, "predictions", "dev.json")) as f:
        written = json.load(f)
    examples = readers.read_squad(os.path.join(QA_FILES, "dev-v2.0.json"))
    predicted = bertjax.load(workdir).predict([e["question"] for e in examples],
                                              contexts=[e["context"] for e in examples],
                                              batch_size=16)
    assert [p["answer"] for p in predicted] == [written[e["id"]] for e in examples]
