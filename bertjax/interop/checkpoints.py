"""Directory-level conversion: HF / google-research checkpoints -> bertjax workdir, and back.

An imported workdir is what the pre-training command writes, so ``--config.init_from=WORKDIR``
takes its parameters::

  WORKDIR/checkpoints/0/{state,config}   orbax: a full TrainState (fresh optimizer) + run config
  WORKDIR/model_config.json              the bertjax BertConfig, the HF config, the import report
  WORKDIR/vocab.txt, tokenizer_config.json, special_tokens_map.json   (when the source has them)

Nothing is half-written: every output is assembled in a hidden sibling directory and renamed
into place at the end; on any error the sibling is removed and the output path never appears.

Tensor-level mapping lives in bertjax/interop/mapping.py; this module only reads and writes directories.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable

import jax
import numpy as np
from flax import traverse_util

from bertjax import model as model_lib
from bertjax import rundir
from bertjax.data import wordpiece
from bertjax.interop import mapping as convert
from bertjax.interop import tf1 as convert_tf

MODEL_CONFIG = rundir.MODEL_CONFIG


class ConvertError(ValueError):
    """Bad conversion input; the message is one line naming what is wrong."""


@dataclasses.dataclass
class ImportSummary:
    """What an import did (printed by the CLI)."""

    workdir: str
    cfg: model_lib.BertConfig
    report: convert.ConversionReport
    ignored: list[str]
    do_lower_case: bool | None


def _atomic_dir(output: str, fill: Callable[[str], None]) -> None:
    """Runs ``fill(tmp)`` on a fresh sibling of ``output`` and renames it to ``output``."""
    output = os.path.abspath(output)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise ConvertError(f"--output={output} already exists and is not empty; choose a new "
                           "directory (nothing is overwritten)")
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
            config, tensors = convert.load_hf_checkpoint(directory)
        elif kind == "tf":
            config, tensors = convert_tf.load_tf_checkpoint(directory)
        else:
            raise ConvertError(f"--from={kind!r}; expected 'hf' or 'tf'")
    except (FileNotFoundError, json.JSONDecodeError) as e:
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
                      do_lower_case: bool | None = None) -> ImportSummary:
    """Imports an HF (``kind="hf"``) or google-research (``"tf"``) checkpoint into a new workdir.

    Raises:
      ConvertError: one line naming the bad input; nothing is left at ``workdir``.
    """
    config = _read_config(kind, input_dir)  # checked before any (big) weights are read
    if config.get("model_type", "bert") != "bert":
        raise ConvertError(f"{input_dir}: model_type={config['model_type']!r}; only BERT "
                           "checkpoints (model_type 'bert') can be imported")
    try:
        cfg = convert.hf_config_to_bert(config)
    except (ValueError, TypeError) as e:
        raise ConvertError(f"{input_dir}: {e}") from None
    _, tensors, _ = _read_source(kind, input_dir)
    ignored: list[str] = []
    try:
        if kind == "tf":
            tensors, ignored = convert_tf.tf_to_hf_tensors(tensors, cfg)
        params, report = convert.params_from_hf(tensors, cfg, init_params=_init_params(cfg))
    except ValueError as e:
        raise ConvertError(str(e)) from None
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
            json.dump({"bertjax": dataclasses.asdict(cfg), "hf": convert.bert_to_hf_config(cfg),
                       "source": {"format": kind, "path": os.path.abspath(input_dir)},
                       "import": {"unused": report.unused, "buffers": report.buffers,
                                  "ignored": ignored, "initialised": report.missing}},
                      f, indent=2)
        if os.path.exists(vocab):
            _write_tokenizer(tmp, vocab, settings, cfg)
            if "do_lower_case" not in settings:  # guessed: say so where fine-tuning reads it
                os.remove(os.path.join(tmp, "tokenizer_config.json"))

    _atomic_dir(workdir, fill)
    return ImportSummary(os.path.abspath(workdir), cfg, report, ignored,
                         settings.get("do_lower_case"))


def load_workdir_params(workdir: str) -> tuple[Any, model_lib.BertConfig, int]:
    """(params as numpy, model config, step) of a workdir's newest complete checkpoint (or of
    the step directory given); a scan_layers run's encoder comes back per layer (and its config
    says so).

    Raises:
      ConfigError: ``workdir`` is not a bertjax run directory (bertjax.rundir, one line).
    """
    import orbax.checkpoint as ocp

    run = rundir.resolve(workdir, "--input")
    cfg = run.model_config()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device)
                for k, v in convert.expected_params(cfg).items()}
    target = {"params": traverse_util.unflatten_dict(abstract)}
    restored = ocp.PyTreeCheckpointer().restore(
        f"{run.step_dir}/state",
        args=ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils
                                    .construct_restore_args(target), partial_restore=True))
    params = jax.tree.map(np.asarray, restored["params"])
    if cfg.scan_layers:  # exports and imports name layers one by one
        params["bert"] = jax.tree.map(np.asarray, model_lib.unstack_layers(params["bert"]))
        cfg = dataclasses.replace(cfg, scan_layers=False)
    return params, cfg, run.step


def export_hf(workdir: str, output: str) -> tuple[model_lib.BertConfig, int, bool]:
    """Writes an HF BertForPreTraining directory from a workdir's latest checkpoint.

    Returns:
      (model config, step exported, whether tokenizer files were written).
    """
    params, cfg, step = load_workdir_params(workdir)
    vocab = os.path.join(workdir, "vocab.txt")
    settings = wordpiece.read_tokenizer_config(workdir)

    def fill(tmp: str) -> None:
        convert.save_hf_checkpoint(tmp, params, cfg)
        if os.path.exists(vocab):
            _write_tokenizer(tmp, vocab, settings, cfg)

    _atomic_dir(output, fill)
    if not os.path.exists(vocab):
        logging.warning("%s has no vocab.txt: the HF directory has no tokenizer files", workdir)
    return cfg, step, os.path.exists(vocab)
