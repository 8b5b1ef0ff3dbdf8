"""Extractive question answering (SQuAD v1.1 / v2.0): the span head, its loss, decoding, scores.

``QAFamily`` is this family for the shared fine-tuning loop (bertjax/finetuning/runner.py):

  * model    ``SpanQA``: BertModel + a dense layer to a start and an end logit per token; only
             context tokens and [CLS] (the v2.0 "no answer") can be chosen, the question, the
             separators and the padding are masked out of both distributions;
  * data     SQuAD JSON files (``config.data.train/dev/test``) or TFDS squad/v1.1, squad/v2.0
             (``config.data.tfds``), cut into windows of ``max_seq_length`` with
             ``config.data.doc_stride`` (bertjax.finetuning.qa_features); a row is a window.
             A training answer must stand at its answer_start (``check_examples``; from TFDS,
             whose squad before 3.0.0 misaligned 19 answers by dropping contexts' leading
             whitespace, anywhere in the context), a v1.1 answer must have text;
  * loss     the mean of the start and end cross-entropies against the answer's tokens in the
             window, or [CLS] where the window does not hold the answer;
  * metrics  each question decoded across its windows (bertjax.finetuning.squad.decode: n-best,
             ``max_answer_length``, max-context rule, v2.0 null threshold), scored with the
             official normalisation: exact and f1 (the headline), v2.0 also the HasAns/NoAns
             groups and the best null threshold found on the set;
  * output   predictions/<split>.json (id -> text, "" for no answer) and, for v2.0,
             predictions/<split>_null_odds.json (id -> null score minus best span score).

TensorFlow is not imported here.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax.data import fs
from bertjax.data import tasks as readers
from bertjax.data.errors import DataError
from bertjax.finetuning import features
from bertjax.finetuning import qa_features
from bertjax.finetuning import runner
from bertjax.finetuning import splits
from bertjax.finetuning import squad

Batch = dict[str, jax.Array]
MASKED = -1e9  # the logit SpanQA gives a position that cannot start or end an answer


# ------------------------------------------------------------------------------------ model


class SpanQA(nn.Module):
    """BERT encoder and a dense layer to (start, end) logits per token.

    The encoder is named ``bert`` as in BertForPreTraining, so pre-trained encoder parameters
    restore into it by name; the head (``qa_outputs``) is always freshly initialised.
    """

    cfg: model_lib.BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, input_mask: jax.Array, segment_ids: jax.Array,
                 deterministic: bool = True) -> dict[str, jax.Array]:
        """Returns {"start_logits", "end_logits"}: float32 [B, L], masked (see ``allowed``)."""
        seq, _ = model_lib.BertModel(self.cfg, name="bert")(
            input_ids, input_mask, segment_ids, deterministic=deterministic)  # [B, L, D]
        init = nn.initializers.truncated_normal(stddev=self.cfg.initializer_range)
        logits = nn.Dense(2, dtype=self.cfg.compute_dtype, param_dtype=self.cfg.weight_dtype,
                          kernel_init=nn.with_logical_partitioning(init, ("embed", "classes")),
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                 ("classes",)),
                          name="qa_outputs")(seq).astype(jnp.float32)  # [B, L, 2]
        ok = allowed(input_mask, segment_ids)  # [B, L]
        logits = jnp.where(ok[..., None], logits, MASKED)
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}


def allowed(input_mask: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """bool [B, L]: the positions an answer may start or end at, [CLS] (no answer) and the
    context tokens: segment 1 without its closing [SEP] (the last real token)."""
    mask = input_mask.astype(bool)  # [B, L]
    nxt = jnp.pad(mask[:, 1:], ((0, 0), (0, 1)))
    context = mask & (segment_ids == 1) & nxt  # the last real token is the final [SEP]
    return context.at[:, 0].set(True)


def loss_stats(outputs: dict[str, jax.Array], batch: Batch) -> dict[str, jax.Array]:
    """Summed (start + end) / 2 cross-entropy over real rows, and the rows whose argmax start
    and end both hit the targets (logged as span_accuracy)."""
    mask = batch["example_mask"].astype(jnp.float32)  # [B]
    start, end = batch["start_positions"], batch["end_positions"]  # [B]
    per = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(outputs["start_logits"], start)
                 + optax.softmax_cross_entropy_with_integer_labels(outputs["end_logits"], end))
    hit = ((outputs["start_logits"].argmax(-1) == start)
           & (outputs["end_logits"].argmax(-1) == end)).astype(jnp.float32)
    return {"loss_sum": jnp.sum(per * mask), "span_accuracy": jnp.sum(hit * mask),
            "count": jnp.sum(mask)}


# ----------------------------------------------------------------------------------- decode


def decode_split(outputs: dict[str, np.ndarray], questions: list[qa_features.Question],
                 version_2: bool, max_answer_length: int, n_best: int,
                 null_threshold: float) -> dict[str, squad.Answer]:
    """Question id -> decoded Answer, from the logits of every row of the split in order."""
    start, end = outputs["start_logits"], outputs["end_logits"]  # [N, L] each
    answers = {}
    for q in questions:
        rows = slice(q.first, q.first + q.count)
        answers[q.id] = squad.decode(
            list(start[rows]), list(end[rows]), q.spans, q.context_start, q.context,
            q.offsets.tolist(), max_answer_length=max_answer_length, n_best=n_best,
            version_2=version_2, null_threshold=null_threshold)
    return answers


def dataset_of(questions: list[qa_features.Question]) -> list[dict]:
    """The gold side as squad.evaluate reads it (a "data" list of one article)."""
    qas = [{"id": q.id, "answers": q.answers, "is_impossible": q.is_impossible}
           for q in questions]
    return [{"paragraphs": [{"qas": qas}]}]


def score_answers(answers: dict[str, squad.Answer], questions: list[qa_features.Question],
                  version_2: bool) -> dict[str, float]:
    """exact / f1 (percent) of the decoded answers; v2.0 adds the HasAns / NoAns groups and
    the best null threshold (best_exact, best_f1 and their thresholds)."""
    data = dataset_of(questions)
    result = squad.evaluate(data, {k: a.text for k, a in answers.items()})
    out = {k: float(v) for k, v in result.items() if k != "missing"}
    if version_2:
        out.update(squad.best_thresholds(data, {k: a.best_span for k, a in answers.items()},
                                         {k: a.null_odds for k, a in answers.items()}))
    return out


def _write_json(path: str, value: Any) -> None:
    fs.write_atomic(path, json.dumps(value, indent=1, ensure_ascii=False))


# ----------------------------------------------------------------------------------- family


def check_examples(examples: list[dict], where: str, version_2: bool, labelled: bool,
                   training: bool = False, exact: bool = True) -> None:
    """One line for a question the chosen SQuAD version cannot train or score on.

    Labelled: every question has answers (or, v2.0, is_impossible), each within its context;
    in v1.1 every answer has text (the official v1.1 script has no "no answer"; v2.0 scores an
    empty gold answer as no answer, as its script does). ``training``: each answer's text must
    stand in the context at its answer_start (``exact``, for files: the official files hold
    exactly that, and an answer elsewhere would train the wrong span), or, for TFDS, whose
    squad datasets before 3.0.0 dropped the contexts' leading whitespace and so shifted 19
    answers' offsets, occur in the context (the occurrence nearest to answer_start is trained,
    qa_features.answer_chars).
    """
    seen = set()
    for e in examples:
        if e["id"] in seen:
            raise DataError(f"{where}: question id {e['id']!r} occurs twice; ids must be unique")
        seen.add(e["id"])
        if not labelled:
            continue
        context = e["context"]
        for a in e["answers"]:
            if not 0 <= a["answer_start"] <= len(context):
                raise DataError(f"{where}: question {e['id']!r} has answer_start "
                                f"{a['answer_start']} outside its context of "
                                f"{len(context)} characters")
            if not version_2 and not a["text"].strip():
                raise DataError(f"{where}: question {e['id']!r} has an answer with empty text "
                                f"{a['text']!r}; SQuAD v1.1 answers need text (a question "
                                "without an answer is v2.0: --config=configs/squad.py:"
                                "version=2.0 with is_impossible)")
        if not e["answers"] and not e["is_impossible"]:
            raise DataError(f"{where}: question {e['id']!r} has no answers and is not marked "
                            "is_impossible; every labelled question needs an answer")
        if e["is_impossible"] and not version_2:
            raise DataError(f"{where}: question {e['id']!r} is_impossible (SQuAD v2.0) but the "
                            "config is v1.1; use --config=configs/squad.py:version=2.0")
        if training and not e["is_impossible"]:
            for a in e["answers"]:
                _check_span(e, a, where, exact)


def _check_span(e: dict, answer: dict, where: str, exact: bool) -> None:
    """A training answer's text stands at its answer_start (or, not ``exact``, somewhere in
    the context); else one line naming the question and where the text does occur."""
    text, start, context = answer["text"], answer["answer_start"], e["context"]
    if not text.strip():
        raise DataError(f"{where}: question {e['id']!r} has an answer with empty text "
                        f"{text!r} and is not is_impossible; give the answer's text, or mark "
                        "the question is_impossible with no answers")
    found = qa_features.answer_chars(context, answer)
    if found is not None and (found[0] == start or not exact):
        return
    there = context[start:start + len(text)]
    hint = (f"{text!r} occurs at {found[0]}" if found is not None
            else f"{text!r} does not occur in the context at all")
    raise DataError(f"{where}: question {e['id']!r}: answer {text!r} has answer_start {start}, "
                    f"but the context there reads {there!r} ({hint}); fix answer_start (the "
                    "character offset of the answer text in the context) or the text")


class QAFamily:
    """SQuAD-style span QA for the runner (bertjax.finetuning.runner.Family)."""

    name = "qa"

    def __init__(self):
        self.version_2 = False
        self.max_answer_length, self.n_best, self.null_threshold = 30, 20, 0.0
        self._decoded: tuple[Any, Any, dict] | None = None  # (outputs, split, answers)

    def prepare(self, config: Any) -> None:
        d = config.data
        self.version_2 = bool(d.version_2)
        self.max_answer_length, self.n_best = int(d.max_answer_length), int(d.n_best)
        self.null_threshold = float(d.null_threshold)
        for key in ("doc_stride", "max_query_length", "max_answer_length", "n_best"):
            if d[key] < 1:
                raise config_lib.ConfigError(f"config.data.{key}={d[key]}; expected >= 1")
        if d.max_query_length + 3 >= config.max_seq_length:
            raise config_lib.ConfigError(
                f"config.data.max_query_length={d.max_query_length} leaves no context in "
                f"config.max_seq_length={config.max_seq_length}; lower it below "
                f"{config.max_seq_length - 3}")
        tfds_name = d.get("tfds", "")
        if tfds_name and not tfds_name.startswith("squad"):
            raise config_lib.ConfigError(f"config.data.tfds={tfds_name!r}; the qa family reads "
                                         "squad/v1.1 or squad/v2.0")
        if tfds_name and ("v2" in tfds_name) != self.version_2:
            want = "2.0" if "v2" in tfds_name else "1.1"
            raise config_lib.ConfigError(f"config.data.tfds={tfds_name!r} does not match "
                                         f"config.data.version_2={self.version_2}; use "
                                         f"--config=configs/squad.py:version={want}")

    @property
    def task_name(self) -> str:
        return "squad_v2.0" if self.version_2 else "squad_v1.1"

    @property
    def metric_names(self) -> tuple[str, ...]:
        names = ("f1", "exact")
        if self.version_2:
            names += ("HasAns_f1", "NoAns_f1", "best_f1")
        return names

    def make_model(self, cfg: model_lib.BertConfig) -> nn.Module:
        return SpanQA(cfg)

    def read(self, config: Any, tok: features.TaskTokenizer, path: str,
             labelled: bool) -> runner.Split:
        examples = runner.examples(config, path, readers.read_squad)
        if not examples:
            raise DataError(f"{path}: holds no questions; expected a SQuAD v1.1/v2.0 JSON")
        training = labelled and path == splits.train_source(config)
        check_examples(examples, path, self.version_2, labelled, training,
                       exact=not path.startswith(runner.TFDS_PREFIX))
        d = config.data
        feats = qa_features.featurise(examples, tok, config.max_seq_length, d.max_query_length,
                                      d.doc_stride, where=path)
        if labelled and feats.unlocated:  # not in training (check_examples): dev loss only
            logging.warning("%s: %d answers not found in their context; their windows' loss "
                            "targets no answer (scores compare answer texts)", path,
                            feats.unlocated)
        return runner.Split(feats.arrays, meta=feats.questions, num_examples=len(examples))

    def loss_stats(self, outputs: dict[str, jax.Array], batch: Batch) -> dict[str, jax.Array]:
        return loss_stats(outputs, batch)

    def answers(self, outputs: dict[str, np.ndarray], split: runner.Split) -> dict:
        """Question id -> decoded squad.Answer for the split's outputs (decode_split with this
        family's settings). score() and write_predictions() get the same outputs: the answers
        of the last (outputs, split) are kept and returned again, not decoded twice."""
        if self._decoded is not None and self._decoded[0] is outputs \
                and self._decoded[1] is split:
            return self._decoded[2]
        answers = decode_split(outputs, split.meta, self.version_2, self.max_answer_length,
                               self.n_best, self.null_threshold)
        self._decoded = (outputs, split, answers)
        return answers

    def score(self, outputs: dict[str, np.ndarray], split: runner.Split) -> dict[str, float]:
        return score_answers(self.answers(outputs, split), split.meta, self.version_2)

    def write_predictions(self, directory: str, name: str, outputs: dict[str, np.ndarray],
                          split: runner.Split) -> None:
        answers = self.answers(outputs, split)
        _write_json(os.path.join(directory, f"{name}.json"),
                    {k: a.text for k, a in answers.items()})
        if self.version_2:
            _write_json(os.path.join(directory, f"{name}_null_odds.json"),
                        {k: a.null_odds for k, a in answers.items()})


def run(config: Any, workdir: str, eval_only: bool = False, overwrite: bool = False,
        tag: str = "") -> dict[str, Any]:
    """Fine-tunes (or, ``eval_only``, evaluates) on SQuAD; see bertjax.finetuning.runner.run."""
    return runner.run(config, workdir, QAFamily(), eval_only, overwrite, tag)
