"""Directory-level conversion: HF / google-research checkpoints -> bertjax workdir, and back.

An imported workdir is what the pre-training command writes, so ``--config.init_from=WORKDIR``
takes its parameters::

  WORKDIR/checkpoints/0/{state,config}   orbax: a full TrainState (fresh optimizer) + run config
  WORKDIR/model_config.json              the bertjax BertConfig, the HF config, the import report
  WORKDIR/vocab.txt, tokenizer_config.json, special_tokens_map.json   (when the source has them)

Export (``export``) writes an HF directory (one reader per run kind: ``EXPORTS``): a
pre-training run or an import as BertForPreTraining; a fine-tuning with its task head, as its
family's transformers class (``TASK_HEADS``): BertForSequenceClassification (labels and
problem_type in config.json; a mean-pooling classifier as bertjax's own class in
modeling_bertjax.py, loaded with ``trust_remote_code=True``), BertForTokenClassification (the
tags), BertForQuestionAnswering. The tokenizer comes along: WordPiece as vocab.txt, bertjax's
sentencepiece as tokenizer.json (bertjax/interop/hf_tokenizer.py), both for AutoTokenizer. It
reads the newest complete step that can be read: stray step directories and unreadable steps
are passed over and listed.

Nothing is half-written: every output is assembled in a hidden sibling directory and renamed
into place at the end; on any error the sibling is removed and the output path never appears.
An existing, non-empty output is refused before anything is read.

Tensor-level mapping lives in bertjax/interop/mapping.py; this module only reads and writes
directories.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from etils import epath
from flax import traverse_util

from bertjax import config as config_lib
from bertjax import model as model_lib
from bertjax import progress
from bertjax import rundir
from bertjax.data import glue
from bertjax.data import wordpiece
from bertjax.data.errors import DataError
from bertjax.finetuning import families
from bertjax.interop import hf_tokenizer
from bertjax.interop import mapping
from bertjax.interop import tf1

MODEL_CONFIG = rundir.MODEL_CONFIG
IMPORT_STAGES, EXPORT_STAGES = 3, 2  # a progress bar's steps: read, map, write / read, write


class ConvertError(ValueError):
    """Bad conversion input; the message is one line naming what is wrong."""


@dataclasses.dataclass
class ImportSummary:
    """What an import did (printed by the CLI)."""

    workdir: str
    cfg: model_lib.BertConfig
    report: mapping.ConversionReport
    ignored: list[str]
    do_lower_case: bool | None


def check_output(output: str) -> None:
    """Refuses an ``--output`` that exists and is not an empty directory (one line)."""
    output = os.path.abspath(output)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise ConvertError(f"--output={output} already exists and is not empty; choose a new "
                           "directory (nothing is overwritten)")


def _atomic_dir(output: str, fill: Callable[[str], None]) -> None:
    """Runs ``fill(tmp)`` on a fresh sibling of ``output`` and renames it to ``output``."""
    output = os.path.abspath(output)
    check_output(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output should not be
        fill(tmp)
        if os.path.isdir(output):
            os.rmdir(output)  # empty, checked above
        os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_source(kind: str, directory: str) -> tuple[dict, dict[str, np.ndarray], str]:
    """(config dict, tensors under HF names, what to call the source) for hf or tf input."""
    if not os.path.isdir(directory):
        raise ConvertError(f"--input={directory} is not a directory")
    try:
        if kind == "hf":
            config, tensors = mapping.load_hf_checkpoint(directory)
        elif kind == "tf":
            config, tensors = tf1.load_tf_checkpoint(directory)
        else:
            raise ConvertError(f"--from={kind!r}; expected 'hf' or 'tf'")
    except (FileNotFoundError, ValueError) as e:  # ValueError: unreadable weights, bad JSON
        raise ConvertError(str(e).splitlines()[0]) from None
    return config, tensors, kind


def _read_config(kind: str, directory: str) -> dict:
    """The checkpoint's config.json (hf) or bert_config.json (tf), without the weights."""
    if not os.path.isdir(directory):
        raise ConvertError(f"--input={directory} is not a directory")
    names = ("config.json",) if kind == "hf" else ("bert_config.json", "config.json")
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    config = json.load(f)
            except json.JSONDecodeError as e:
                raise ConvertError(f"{path} is not valid JSON ({e})") from None
            if not isinstance(config, dict):
                raise ConvertError(f"{path} holds no JSON object")
            return config
    what = ("an HF BERT checkpoint directory holds config.json and model.safetensors"
            if kind == "hf" else "a google-research/bert directory holds bert_config.json and "
            "model.ckpt.*")
    raise ConvertError(f"{directory} has no {names[0]}; {what}")


def _init_params(cfg: model_lib.BertConfig, seed: int = 0) -> Callable[[list], Any]:
    """For ``params_from_hf``: fresh values of just the missing parameters (numpy).

    The whole model's init is traced, but only the missing leaves are returned from the jitted
    function, so XLA drops the random draws for the rest (a BERT-base embedding table alone
    takes seconds of threefry on a CPU). The values are those of a full init with this seed.
    """
    import flax.linen as nn
    import jax.numpy as jnp

    def init(missing: list) -> Any:
        ids = jnp.zeros((1, 1), jnp.int32)

        def some(key):
            full = nn.meta.unbox(model_lib.BertForPreTraining(cfg).init(
                key, ids, jnp.ones_like(ids), ids, ids)["params"])
            flat = traverse_util.flatten_dict(full)
            return {"/".join(p): flat[p] for p in missing}

        picked = jax.jit(some)(jax.random.key(seed))
        return traverse_util.unflatten_dict(
            {tuple(k.split("/")): np.asarray(v) for k, v in picked.items()})
    return init


def _casing(directory: str, do_lower_case: bool | None) -> dict[str, Any]:
    """Tokenizer settings: the flag, else tokenizer_config.json, else the google-research
    directory name (uncased_L-12_H-768_A-12 / cased_L-12_H-768_A-12)."""
    settings = wordpiece.read_tokenizer_config(directory)
    if do_lower_case is not None:
        settings["do_lower_case"] = do_lower_case
    elif "do_lower_case" not in settings:
        name = os.path.basename(os.path.normpath(directory)).lower()
        if "uncased" in name:
            settings["do_lower_case"] = True
        elif "cased" in name:
            settings["do_lower_case"] = False
    return settings


def _write_tokenizer(directory: str, vocab: str, settings: dict,
                     cfg: model_lib.BertConfig) -> None:
    """vocab.txt and the HF tokenizer files for ``settings`` (do_lower_case and friends)."""
    wordpiece.write_tokenizer_files(
        directory, vocab, do_lower_case=settings.get("do_lower_case", True),
        strip_accents=settings.get("strip_accents"),
        tokenize_chinese_chars=settings.get("tokenize_chinese_chars", True),
        model_max_length=cfg.max_position_embeddings)


def run_config_for(cfg: model_lib.BertConfig) -> Any:
    """A pre-training run config whose model is ``cfg`` (preset name when the sizes match one;
    the explicit sizes are recorded as well)."""
    from bertjax import config as config_lib

    c = config_lib.base_config()
    sizes = (cfg.num_layers, cfg.hidden_size, cfg.num_heads)
    preset = next((name for name, s in model_lib.PRESETS.items()
                   if s == sizes and cfg.intermediate_size == 4 * cfg.hidden_size), "custom")
    m = c.model
    m.preset = preset
    for key in ("vocab_size", "max_position_embeddings", "type_vocab_size", "hidden_act",
                "dtype", "param_dtype", "attention_impl"):
        m[key] = getattr(cfg, key)
    m.hidden_dropout, m.attention_dropout = cfg.hidden_dropout, cfg.attention_dropout
    m.tie_word_embeddings = cfg.tie_word_embeddings
    for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size"):
        m[key] = getattr(cfg, key)
    return c


def _check_leaf(want: jax.ShapeDtypeStruct, got: jax.Array) -> None:
    if want.shape != got.shape or want.dtype != got.dtype:
        raise RuntimeError(f"imported train state leaf {got.shape} {got.dtype} differs from "
                           f"the pre-training state's {want.shape} {want.dtype}")


def save_workdir_state(directory: str, params: Any, cfg: model_lib.BertConfig) -> None:
    """Writes ``directory/checkpoints/0`` as the pre-training loop would: a TrainState built on
    a one-device mesh (fresh optimizer state, step 0) with ``params`` in it, and the run config."""
    import jax.numpy as jnp

    from bertjax import checkpoint as ckpt_lib
    from bertjax import optim
    from bertjax import sharding
    from bertjax import train

    config = run_config_for(cfg)
    # One device, so every leaf is simply replicated there; restore re-shards onto any mesh.
    # The state is the kit's (train.state_from_params: step 0, a fresh optimizer state); its
    # structure is checked against train.create_train_state traced abstractly (running it would
    # randomly initialise every parameter only to throw them away: seconds for BERT-base).
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    repl = sharding.replicated(mesh)
    tx, _ = optim.make_optimizer(config)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    abstract = jax.eval_shape(lambda: train.create_train_state(
        model_lib.BertForPreTraining(cfg), tx, mesh, rules, config.seed)[0])
    run_key = jax.random.split(jax.random.PRNGKey(config.seed))[1]  # as create_train_state's
    state = jax.jit(lambda p, key: train.state_from_params(p, tx, key), out_shardings=repl)(
        jax.device_put(params, repl), run_key)
    jax.tree.map(_check_leaf, abstract, state)
    ckpt = ckpt_lib.Checkpointer(os.path.join(directory, "checkpoints"), every=1, keep=1,
                                 async_save=False)
    ckpt.save(0, state, config, force=True)
    ckpt.close()


def import_checkpoint(kind: str, input_dir: str, workdir: str,
                      do_lower_case: bool | None = None, bar: Any = None) -> ImportSummary:
    """Imports an HF (``kind="hf"``) or google-research (``"tf"``) checkpoint into a new workdir.
    ``bar`` (bertjax.progress.bar of IMPORT_STAGES) is advanced after reading, mapping and
    writing, with the tensors and bytes done.

    Raises:
      ConvertError: one line naming the bad input; nothing is left at ``workdir``.
    """
    bar = progress.Off() if bar is None else bar
    check_output(workdir)
    config = _read_config(kind, input_dir)  # checked before any (big) weights are read
    if config.get("model_type", "bert") != "bert":
        raise ConvertError(f"{input_dir}: model_type={config['model_type']!r}; only BERT "
                           "checkpoints (model_type 'bert') can be imported")
    try:
        cfg = mapping.hf_config_to_bert(config)
    except (ValueError, TypeError) as e:
        raise ConvertError(f"{input_dir}: {e}") from None
    _, tensors, _ = _read_source(kind, input_dir)
    _stage(bar, f"read {len(tensors)} tensors, {_megabytes(tensors)}")
    ignored: list[str] = []
    try:
        if kind == "tf":
            tensors, ignored = tf1.tf_to_hf_tensors(tensors, cfg)
        params, report = mapping.params_from_hf(tensors, cfg, init_params=_init_params(cfg))
    except ValueError as e:
        raise ConvertError(str(e)) from None
    _stage(bar, f"mapped {len(report.used)} tensors")
    settings = _casing(input_dir, do_lower_case)
    vocab = os.path.join(input_dir, "vocab.txt")
    if os.path.exists(vocab):
        vocab_size = len(wordpiece.load_vocab(vocab))
        if vocab_size > cfg.vocab_size:
            raise ConvertError(f"{vocab} has {vocab_size} tokens but the model's vocab_size is "
                               f"{cfg.vocab_size}; the vocab does not belong to this checkpoint")
    else:
        logging.warning("%s has no vocab.txt; the workdir gets no tokenizer files", input_dir)

    def fill(tmp: str) -> None:
        save_workdir_state(tmp, params, cfg)
        with open(os.path.join(tmp, MODEL_CONFIG), "w") as f:
            json.dump({"bertjax": dataclasses.asdict(cfg), "hf": mapping.bert_to_hf_config(cfg),
                       "source": {"format": kind, "path": os.path.abspath(input_dir)},
                       "import": {"unused": report.unused, "buffers": report.buffers,
                                  "ignored": ignored, "initialised": report.missing}},
                      f, indent=2)
        if os.path.exists(vocab):
            _write_tokenizer(tmp, vocab, settings, cfg)
            if "do_lower_case" not in settings:  # guessed: say so where fine-tuning reads it
                os.remove(os.path.join(tmp, "tokenizer_config.json"))

    _atomic_dir(workdir, fill)
    _stage(bar, f"wrote {_megabytes(jax.tree.leaves(params))}")
    return ImportSummary(os.path.abspath(workdir), cfg, report, ignored,
                         settings.get("do_lower_case"))


def _stage(bar: Any, done: str) -> None:
    """One stage of a conversion done; the bar says what it did."""
    bar.set_postfix_str(done, refresh=False)
    bar.update(1)


def _megabytes(tensors: Any) -> str:
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return f"{sum(np.asarray(v).nbytes for v in values) / 1e6:,.1f} MB"


def _read_pretraining(run: rundir.Run) -> tuple[Any, model_lib.BertConfig]:
    """(params as numpy, model config) of a pre-training run's or an import's step; a
    scan_layers run's encoder comes back per layer (and its config says so)."""
    import orbax.checkpoint as ocp

    cfg = run.model_config()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device)
                for k, v in mapping.expected_params(cfg).items()}
    target = {"params": traverse_util.unflatten_dict(abstract)}
    restored = ocp.PyTreeCheckpointer().restore(
        f"{run.step_dir}/state",
        args=ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils
                                    .construct_restore_args(target), partial_restore=True))
    params = jax.tree.map(np.asarray, restored["params"])
    if cfg.scan_layers:  # exports and imports name layers one by one
        params["bert"] = jax.tree.map(np.asarray, model_lib.unstack_layers(params["bert"]))
        cfg = dataclasses.replace(cfg, scan_layers=False)
    return params, cfg


def load_workdir_params(workdir: str) -> tuple[Any, model_lib.BertConfig, int]:
    """(params as numpy, model config, step) of a workdir's newest complete checkpoint (or of
    the step directory given); a scan_layers run's encoder comes back per layer (and its config
    says so).

    Raises:
      ConfigError: ``workdir`` is not a bertjax run directory (bertjax.rundir, one line).
    """
    run = rundir.resolve(workdir, "--input")
    params, cfg = _read_pretraining(run)
    return params, cfg, run.step


# ------------------------------------------------------------------------------------ export


@dataclasses.dataclass
class Exported:
    """One run kind's model, read and ready to write as an HF directory.

    Attributes:
      cfg: the model config (per layer).
      architecture: the transformers class the weights are for.
      tensors: {HF name: numpy array}.
      left_out: what of the run the directory does not hold (one sentence), or None.
      hf_config: config.json entries beyond the encoder's sizes (labels, problem_type, auto_map).
      files: {name in the directory: file to copy there} (remote modeling code).
      load: how to load the directory in transformers (one sentence), or None.
    """

    cfg: model_lib.BertConfig
    architecture: str
    tensors: dict[str, np.ndarray]
    left_out: str | None = None
    hf_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    load: str | None = None


@dataclasses.dataclass
class ExportSummary:
    """What an export did (printed by the CLI).

    Attributes:
      output: the HF directory written (absolute).
      kind: the run kind exported ("pretraining", "finetuning", "import").
      step: the checkpoint step exported.
      exported: the model written.
      tokenizer: None when tokenizer files were written, else why there are none.
      skipped: the step directories passed over, each with why (newest first).
    """

    output: str
    kind: str
    step: int
    exported: Exported
    tokenizer: str | None
    skipped: list[str]


def _pretraining_export(run: rundir.Run) -> Exported:
    """A pre-training run or an import: the whole BertForPreTraining (MLM and NSP heads)."""
    params, cfg = _read_pretraining(run)
    return Exported(cfg, "BertForPreTraining", mapping.params_to_hf(params, cfg),
                    load="BertForPreTraining.from_pretrained(DIR), or AutoModelForMaskedLM / "
                    "pipeline('fill-mask', model=DIR) for the MLM head")


def _classify_labels(saved: dict) -> tuple[str, ...] | None:
    """The class names of a classification run in class-id order, None for regression, read
    as the fine-tuning reads them (bertjax.finetuning.classify.resolve_task)."""
    import ml_collections

    from bertjax.finetuning import classify

    task = classify.resolve_task(ml_collections.ConfigDict(saved))
    return task.labels


def _labels_config(labels: tuple[str, ...]) -> dict[str, Any]:
    return {"id2label": {str(i): name for i, name in enumerate(labels)},
            "label2id": {name: i for i, name in enumerate(labels)}}


class TaskHead(NamedTuple):
    """What a fine-tuned family's model exports as.

    Attributes:
      architecture: the transformers class (a key of mapping.TASK_CLASSES).
      num_outputs: the head's width the run's config implies (checked against the checkpoint).
      hf_config: config.json entries (labels, problem_type, classifier_dropout, auto_map).
      files: {name in the directory: file to copy there}.
      load: how to load it in transformers (one sentence, printed).
    """

    architecture: str
    num_outputs: int
    hf_config: dict[str, Any]
    files: dict[str, str]
    load: str


MODELING_FILE = "modeling_bertjax.py"  # the mean-pooling classifier's code (hf_modeling.py)
_MODELING_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_modeling.py")


def _classify_head(saved: dict) -> TaskHead:
    """A classifier or regressor: BERT's [CLS] pooler as transformers' own class; mean
    pooling (bertjax's default) as bertjax's class in modeling_bertjax.py, under a model type
    of its own so that nothing loads it without trust_remote_code=True."""
    labels = _classify_labels(saved)
    extra: dict[str, Any] = {"classifier_dropout": saved.get("head_dropout"), "problem_type":
                             "regression" if labels is None else "single_label_classification"}
    extra.update(_labels_config(("score",) if labels is None else labels))
    pooling = saved.get("pooling", "cls")
    if pooling == "cls":
        return TaskHead("BertForSequenceClassification", len(extra["id2label"]), extra, {},
                        "pooling cls (BERT's pooler on [CLS]): transformers' own class, "
                        "AutoModelForSequenceClassification.from_pretrained(DIR) or "
                        "pipeline('text-classification', model=DIR)")
    if pooling != "mean":
        raise ConvertError(f"the fine-tuning's pooling={pooling!r}; expected 'cls' or 'mean'")
    module = MODELING_FILE.removesuffix(".py")
    extra.update(model_type="bertjax_mean_pooling", pooling="mean", auto_map={
        "AutoConfig": f"{module}.BertjaxMeanPoolingConfig",
        "AutoModelForSequenceClassification": f"{module}.{mapping.MEAN_POOLING_CLASS}"})
    return TaskHead(mapping.MEAN_POOLING_CLASS, len(extra["id2label"]), extra,
                    {MODELING_FILE: _MODELING_SOURCE},
                    f"pooling mean: bertjax's own class in {MODELING_FILE}, which needs "
                    "trust_remote_code=True: AutoModelForSequenceClassification.from_pretrained("
                    "DIR, trust_remote_code=True) or pipeline('text-classification', model=DIR, "
                    "trust_remote_code=True)")


def _tagging_head(saved: dict) -> TaskHead:
    labels = tuple(x.strip() for x in str(saved.get("data", {}).get("labels") or "").split(",")
                   if x.strip())  # the tags the run recorded, in id order (tagging.py)
    extra = {"classifier_dropout": saved.get("head_dropout"), **_labels_config(labels)}
    return TaskHead("BertForTokenClassification", len(labels), extra, {},
                    "AutoModelForTokenClassification.from_pretrained(DIR) or "
                    "pipeline('token-classification', model=DIR)")


def _qa_head(saved: dict) -> TaskHead:
    del saved
    return TaskHead("BertForQuestionAnswering", 2, {}, {},
                    "AutoModelForQuestionAnswering.from_pretrained(DIR) or "
                    "pipeline('question-answering', model=DIR)")


# Task family (bertjax.finetuning.families) -> what its fine-tuned model exports as.
TASK_HEADS: dict[str, Callable[[dict], TaskHead]] = {
    "classify": _classify_head,
    "ner": _tagging_head,
    "qa": _qa_head,
}


def _read_finetuned(run: rundir.Run, cfg: model_lib.BertConfig,
                    head: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the fine-tuned parameters as numpy: the encoder per layer and ``head``; the tree of
    what the checkpoint holds)."""
    from bertjax import params_io  # orbax
    from bertjax import sharding

    state_dir = f"{run.step_dir}/state"
    saved = params_io.saved_params(state_dir)
    abstract = {"bert": traverse_util.unflatten_dict({path[1:]: shape for path, shape in
                                                      mapping.expected_params(cfg).items()
                                                      if path[0] == "bert"})}
    if head is not None:
        if head not in saved:
            raise ConvertError(f"{run.step_dir}: the fine-tuned checkpoint has no {head!r} "
                               f"parameters (it holds {', '.join(sorted(saved))})")
        abstract[head] = {k: jax.ShapeDtypeStruct(tuple(v.shape), np.dtype(v.dtype))
                          for k, v in saved[head].items()}
    repl = sharding.replicated(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    restored = params_io.restore(state_dir, abstract, jax.tree.map(lambda _: repl, abstract),
                                 run.step_dir)
    return jax.tree.map(np.asarray, restored), saved


def _finetuning_export(run: rundir.Run) -> Exported:
    """A fine-tuning: its encoder and task head as the family's transformers class
    (``TASK_HEADS``); a family with none there exports its encoder as an HF BertModel, the
    head left out and said so."""
    cfg = dataclasses.replace(run.model_config(), scan_layers=False)  # HF names each layer
    family = families.family_name(run.saved)
    if family not in TASK_HEADS:
        params, saved = _read_finetuned(run, cfg, None)
        heads = sorted(k for k in saved if k != "bert")
        left_out = (f"the task head of this fine-tuning (family {family}: "
                    f"{', '.join(heads) or 'none'}) has no transformers class to export to: the "
                    "directory holds its encoder, for transformers.BertModel")
        return Exported(cfg, "BertModel", mapping.encoder_to_hf(params["bert"], cfg), left_out,
                        load="BertModel.from_pretrained(DIR) (the encoder alone)")
    task = TASK_HEADS[family](run.saved)
    head = mapping.TASK_CLASSES[task.architecture][0]
    params, _ = _read_finetuned(run, cfg, head)
    width = params[head]["kernel"].shape[-1]
    if width != task.num_outputs:
        raise ConvertError(f"{run.step_dir}: the {head} head has {width} outputs but the run's "
                           f"config names {task.num_outputs} (family {family}, task "
                           f"{run.saved.get('task')!r})")
    try:
        tensors = mapping.task_to_hf(params, cfg, task.architecture)
    except ValueError as e:
        raise ConvertError(f"{run.step_dir}: {e}") from None
    return Exported(cfg, task.architecture, tensors, hf_config=task.hf_config, files=task.files,
                    load=task.load)


# One reader per run kind (rundir.Run.kind): what its checkpoint exports as.
EXPORTS: dict[str, Callable[[rundir.Run], Exported]] = {
    "pretraining": _pretraining_export,
    "import": _pretraining_export,
    "finetuning": _finetuning_export,
}


@dataclasses.dataclass(frozen=True)
class _Tokenizer:
    """The tokenizer an export writes: kind "wordpiece" (vocab.txt + casing settings) or
    "sentencepiece" (a .model file, written as tokenizer.json)."""

    kind: str
    path: str
    settings: dict[str, Any]


def _tokenizer_of(run: rundir.Run) -> tuple[_Tokenizer | None, str | None]:
    """(the run's tokenizer, or None and why there is none)."""
    if run.kind == "import":
        found = ("wordpiece", run.root) if os.path.exists(
            os.path.join(run.root, rundir.VOCAB)) else None
    else:
        found = run.tokenizer()
    if found is None:
        return None, (f"the import {run.root} has no vocab.txt" if run.kind == "import" else
                      "the run's tokenizer cannot be found")
    kind, where = found
    if kind != "wordpiece":
        if not os.path.isfile(where):
            return None, f"the run's sentencepiece model {where} does not exist"
        return _Tokenizer("sentencepiece", where, {}), None
    vocab = os.path.join(where, rundir.VOCAB)
    if not os.path.exists(vocab):
        return None, f"the run's WordPiece vocabulary {vocab} does not exist"
    settings = wordpiece.read_tokenizer_config(where)
    casing = str(run.saved.get("do_lower_case", "")).lower()  # a fine-tuning's own choice
    if casing in ("true", "false"):
        settings["do_lower_case"] = casing == "true"
    return _Tokenizer("wordpiece", vocab, settings), None


def _candidates(path: str) -> tuple[list[str], list[str]]:
    """(the complete step directories to try, newest first; the stray ones passed over)."""
    p = epath.Path(path)
    if rundir.is_step_dir(p):
        return [str(p)], []
    for root in (p / rundir.CHECKPOINTS, p):
        found = rundir.steps(root)
        if found:
            strays = [f"{c.name} (not a complete checkpoint)" for c in rundir.stray_steps(root)]
            return [str(root / str(step)) for step in reversed(found)], strays
    return [], []


def _error_line(e: BaseException) -> str:
    """``Type: reason`` in one short line (a one-line error's hint is left out)."""
    text = str(e).strip()
    if isinstance(e, (ConvertError, config_lib.ConfigError)):
        text = text.split("; ")[0]
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def export(path: str, output: str, bar: Any = None) -> ExportSummary:
    """Writes an HF directory from a workdir's newest readable checkpoint (or the step given);
    ``bar`` (bertjax.progress.bar of EXPORT_STAGES) is advanced after reading and writing.

    What is written depends on the run kind (``EXPORTS``): a pre-training run or an import as
    BertForPreTraining, a fine-tuning as its task family's class with the head (``TASK_HEADS``).
    Stray step directories and steps that cannot be read are passed over
    (``ExportSummary.skipped``); the tokenizer files come along (WordPiece or sentencepiece).

    Raises:
      ConfigError: ``path`` is no bertjax run directory (bertjax.rundir, one line).
      ConvertError: ``output`` exists, or no step of ``path`` can be read (one line).
    """
    bar = progress.Off() if bar is None else bar
    check_output(output)
    candidates, skipped = _candidates(path)
    if not candidates:
        rundir.resolve(path, "--input")  # its one line: missing, not a directory, no checkpoint
    from bertjax import checkpoint as ckpt_lib  # orbax

    ckpt_lib.quiet_failed_restore()
    failed: list[str] = []
    for step_dir in candidates:
        try:
            run = rundir.resolve(step_dir, "--input")
            exported = EXPORTS[run.kind](run)
            break
        except Exception as e:  # a damaged step: try the one before it
            if len(candidates) == 1 and isinstance(e, (ConvertError, config_lib.ConfigError)):
                raise  # the step given: its own one line
            failed.append(f"{epath.Path(step_dir).name} ({_error_line(e)})")
            if len(failed) == len(candidates):
                older = f" (and {len(failed) - 1} older)" if len(failed) > 1 else ""
                raise ConvertError(f"--input={path}: no checkpoint step can be exported: step "
                                   f"{failed[0]}{older}") from e
    skipped += failed
    _stage(bar, f"read step {run.step}: {len(exported.tensors)} tensors")
    tokenizer, no_tokenizer = _tokenizer_of(run)
    if tokenizer is not None and tokenizer.kind == "sentencepiece":
        try:  # checked before anything is written
            hf_tokenizer.read_model(tokenizer.path)
        except (DataError, hf_tokenizer.TokenizerExportError) as e:
            tokenizer, no_tokenizer = None, str(e)

    def fill(tmp: str) -> None:
        hf_config = mapping.bert_to_hf_config(exported.cfg, exported.architecture)
        hf_config.update(exported.hf_config)
        mapping.save_hf_directory(tmp, exported.tensors, hf_config)
        for name, source in exported.files.items():
            shutil.copyfile(source, os.path.join(tmp, name))
        if tokenizer is None:
            return
        if tokenizer.kind == "wordpiece":
            _write_tokenizer(tmp, tokenizer.path, tokenizer.settings, exported.cfg)
        else:
            hf_tokenizer.write_sentencepiece(tokenizer.path, tmp,
                                             exported.cfg.max_position_embeddings)

    _atomic_dir(output, fill)
    _stage(bar, f"wrote {_megabytes(exported.tensors)}")
    return ExportSummary(os.path.abspath(output), run.kind, run.step, exported, no_tokenizer,
                         skipped)


def export_hf(workdir: str, output: str) -> tuple[model_lib.BertConfig, int, bool]:
    """``export``, answering (model config, step exported, whether tokenizer files were
    written)."""
    summary = export(workdir, output)
    return summary.exported.cfg, summary.step, summary.tokenizer is None
