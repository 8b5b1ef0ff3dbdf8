"""The README demo: is a docstring sentence in its written word order, or have words been swapped?

A binary task derived offline and deterministically from the embedded corpus (bertjax.data.corpus).
Each chosen sentence gives two examples: the sentence as written (``original``) and a copy in
which two of its words trade places (``swapped``). Only interior, all-lowercase, purely alphabetic
words move, so the first word keeps its capital, the last its full stop, and no punctuation
changes place; the two versions hold exactly the same words. A bag-of-words model therefore
scores exactly chance, and so does anything that only learns which words occur: the label is in
the order alone.

Why pre-training should help: masked-language-model pre-training is trained to predict a word
from the words around it in their order, which is local syntax ("the" before a noun, a verb after
"to"). A model fine-tuned from scratch has to discover that from a few hundred labelled pairs.
The comparison shows only what the encoder has learned: one still at the unigram stage of MLM
(predicting "." for nearly every mask) knows no more order than a fresh one, and both stay at
chance; a pre-trained encoder that reads order (an imported MiniLM, say) leaves scratch behind.

Splits. Dev sentences come from the documents that pre-training holds out: the same hash of the
document text that ``bertjax.data.prepare`` uses to pick its eval split (of the embedded corpus,
as ``python -m bertjax.pretrain`` prepares it); a held-out sentence that a pre-training document
repeats is dropped, so the pre-trained encoder has never seen a dev sentence. Train sentences
come from the pre-training documents; the two splits share no sentence.

``compare`` fine-tunes the pre-trained encoder and, with the same model, steps and data, one from
random initialisation, and prints the two dev accuracies and their difference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Iterable, Sequence

import ml_collections
import numpy as np

from bertjax.data import corpus
from bertjax.data import fs
from bertjax.data import prepare as prepare_lib
from bertjax.data import text

LABELS = ("original", "swapped")
MIN_WORDS, MAX_WORDS = 8, 30  # 30 words stay well inside max_seq_length 64 (~1.4 pieces a word)
DEFAULT_TRAIN, DEFAULT_DEV = 600, 0  # examples (two per sentence); dev 0: every held-out one
# The fraction `python -m bertjax.pretrain` prepares the embedded corpus with (inputs.py uses
# PrepareConfig's default), so "held out" here is held out there.
EVAL_FRACTION = {f.name: f for f in dataclasses.fields(prepare_lib.PrepareConfig)}[
    "eval_fraction"].default
_MOVABLE = re.compile(r"[a-z]+")


def movable_positions(words: Sequence[str]) -> list[int]:
    """Indices of the words a corruption may move: interior, lowercase letters only."""
    return [i for i in range(1, len(words) - 1) if _MOVABLE.fullmatch(words[i])]


def swap_words(sentence: str, rng: np.random.Generator) -> str:
    """The sentence with two different movable words exchanged (same multiset of words).

    Raises:
      ValueError: the sentence has fewer than two distinct movable words.
    """
    words = sentence.split()
    pos = movable_positions(words)
    pairs = [(i, j) for a, i in enumerate(pos) for j in pos[a + 1:] if words[i] != words[j]]
    if not pairs:
        raise ValueError(f"no two different movable words in {sentence!r}")
    i, j = pairs[rng.integers(len(pairs))]
    words[i], words[j] = words[j], words[i]
    return " ".join(words)


def _usable(sentence: str) -> bool:
    words = sentence.split()
    pos = movable_positions(words)
    return (MIN_WORDS <= len(words) <= MAX_WORDS
            and len({words[i] for i in pos}) >= 2)


def split_sentences(documents: Iterable[list[str]],
                    eval_fraction: float = EVAL_FRACTION) -> tuple[list[str], list[str]]:
    """Distinct usable sentences of the documents, split as pre-training splits documents.

    Args:
      documents: corpus documents, each a list of paragraph lines (corpus.stdlib_documents()).
      eval_fraction: the fraction of documents pre-training held out.

    Returns:
      (train-side sentences, held-out sentences), each distinct and in corpus order; a
      held-out sentence that also occurs in a pre-training document is dropped, so the two
      lists never share a sentence.
    """
    train, held = [], []
    for doc in documents:
        lines = [line.strip() for line in doc if line.strip()]  # as text.read_documents reads
        # The same document id and test as prepare._run_job, so the split matches pre-training.
        doc_id = prepare_lib.document_hash("\n".join(lines))
        side = held if prepare_lib.is_eval(doc_id, eval_fraction) else train
        side.extend(" ".join(s.split()) for s in text.document_sentences(lines))
    seen = set(train)  # a held-out sentence repeated in a pre-training document was seen
    held = list(dict.fromkeys(s for s in held if _usable(s) and s not in seen))
    train = list(dict.fromkeys(s for s in train if _usable(s)))
    return train, held


def make_examples(sentences: Sequence[str], n_sentences: int,
                  rng: np.random.Generator) -> list[tuple[str, str]]:
    """(text, label) rows: ``n_sentences`` picked at random, each as written and swapped,
    in a shuffled order (so exactly half of the rows are each label)."""
    picked = [sentences[i] for i in rng.permutation(len(sentences))[:n_sentences]]
    rows = [row for s in picked for row in ((s, LABELS[0]), (swap_words(s, rng), LABELS[1]))]
    return [rows[i] for i in rng.permutation(len(rows))]


def write_demo_data(directory: str, train_size: int, dev_size: int, seed: int = 0,
                    documents: Iterable[list[str]] | None = None, replace: bool = True,
                    write: bool = True) -> tuple[str, str, dict[str, int]]:
    """Writes train.tsv / dev.tsv (columns sentence, label) into ``directory``.

    Args:
      directory: created if needed.
      train_size: training examples (rounded down to even: two per sentence).
      dev_size: dev examples; 0 takes every usable held-out sentence.
      seed: picks the sentences, the swaps and the row order.
      documents: the corpus (default corpus.stdlib_documents()).
      replace: False: files already there must hold exactly these rows.
      write: False: only the check (the other processes of a multi-process run).

    Returns:
      (train path, dev path, {"train": n, "dev": n, "train_available": sentences,
      "dev_available": sentences}).

    Raises:
      FileExistsError: ``replace`` is False and a file there holds other rows (nothing written).
    """
    train_pool, dev_pool = split_sentences(
        corpus.stdlib_documents() if documents is None else documents)
    rng = np.random.default_rng([seed, 0x0de1])
    n_dev = len(dev_pool) if dev_size <= 0 else min(dev_size // 2, len(dev_pool))
    splits = {"train": make_examples(train_pool, min(train_size // 2, len(train_pool)), rng),
              "dev": make_examples(dev_pool, n_dev, rng)}
    texts = {name: "sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows)
             for name, rows in splits.items()}
    files = [os.path.join(directory, f"{name}.tsv") for name in texts]
    if not replace:
        for path, body in zip(files, texts.values()):
            if fs.path(path).exists() and fs.path(path).read_text() != body:
                raise FileExistsError(path)
    if write:
        fs.path(directory).mkdir(parents=True, exist_ok=True)
        for path, body in zip(files, texts.values()):
            fs.write_atomic(path, body)
    return files[0], files[1], {"train": len(splits["train"]), "dev": len(splits["dev"]),
                                "train_available": len(train_pool),
                                "dev_available": len(dev_pool)}


def prepare(config: Any, workdir: str, overwrite: bool = False) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose data are the demo files, written into ``workdir/data``
    (chief).

    Raises:
      ConfigError: the files there were written for other settings (seed, sizes) and
        ``overwrite`` is False; they belong to an earlier demo and stay as they are.
    """
    from bertjax import config as config_lib
    from bertjax import multihost

    d = config.data
    directory = os.path.join(workdir, "data")
    try:  # every process checks, so all of them stop on the same error
        write_demo_data(directory, d.demo_train or DEFAULT_TRAIN, d.demo_dev or DEFAULT_DEV,
                        config.seed, replace=overwrite, write=multihost.is_chief())
    except FileExistsError as e:
        raise config_lib.ConfigError(
            f"{e} holds the demo data of other settings (seed or sizes); use another "
            "--workdir, or --overwrite to replace the earlier demo") from None
    multihost.barrier("demo data written")
    out = ml_collections.ConfigDict(config.to_dict())
    d = out.data
    d.train, d.dev = os.path.join(directory, "train.tsv"), os.path.join(directory, "dev.tsv")
    d.text_a, d.label, d.labels, d.format = "sentence", "label", ",".join(LABELS), "tsv"
    return out


def compare(config: Any, workdir: str, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tunes from ``config.init_from`` and from scratch (workdir/scratch), same steps and
    data, and prints the two dev scores and their difference."""
    from bertjax import multihost
    from bertjax import rundir
    from bertjax.finetuning import families, features, runner

    def fine_tune(cfg: Any, path: str, tag: str) -> dict[str, Any]:
        # A finished run with the same settings is reported again (so the README's first
        # command can be rerun); different settings reach the runner, which refuses them.
        saved = None if overwrite else rundir.saved_config(path)
        done = os.path.join(path, "metrics.json")
        if saved is not None and fs.path(done).exists() and not runner.setting_difference(
                saved, cfg):
            result = json.loads(fs.path(done).read_text())
            if multihost.is_chief():
                print(f"[{tag}] already fine-tuned in {path} (--overwrite to redo)", flush=True)
            return result
        return runner.run(cfg, path, families.get(cfg), overwrite=overwrite, tag=tag)

    pre = fine_tune(config, workdir, "pre-trained")
    # The config the pre-trained run saved holds the encoder's exact sizes and its tokenizer:
    # the scratch run trains the same model on the same rows.
    scratch_config = ml_collections.ConfigDict(rundir.saved_config(workdir))
    scratch_config.init_from = ""
    scratch = fine_tune(scratch_config, os.path.join(workdir, "scratch"), "scratch")
    head = pre["headline"]
    if multihost.is_chief():
        a, b = pre["dev"][head], scratch["dev"][head]
        title = "word order" if config.task == "demo" else config.task
        chance = ", chance 0.5" if config.task == "demo" else ""
        print(f"\n{title}: pre-trained vs from scratch ({pre['train_examples']} train / "
              f"{pre['dev']['examples']} dev examples, {pre['steps']} steps each{chance})")
        print(f"dev {head} pre-trained   {a:.4f}  ({config.init_from}, {pre['seconds']:.0f} s)")
        print(f"dev {head} from scratch  {b:.4f}  ({scratch['seconds']:.0f} s)")
        print(f"difference              {a - b:+.4f}  (workdirs {workdir} and "
              f"{os.path.join(workdir, 'scratch')})", flush=True)
        # within two standard errors of chance (a binomial accuracy over the dev examples)
        if config.task == "demo" and a - 0.5 < 2 * (0.25 / pre["dev"]["examples"]) ** 0.5:
            print("the pre-trained encoder is at chance: it has not learned word order yet "
                  "(README, Fine-tuning: what a longer-trained encoder scores)", flush=True)
    return {"pretrained": pre, "scratch": scratch}
