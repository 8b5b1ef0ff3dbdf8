"""The run config: defaults shared by every configs/*.py file, and its validation.

A config file under configs/ starts from ``base_config()``, sets what differs and returns the
ConfigDict; ml_collections' config_flags loads it, applies ``--config.key=value`` overrides
(unknown keys and wrong types are refused there) and the entry point calls ``validate`` before
anything is compiled or written.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from bertjax import model as model_lib
from bertjax import sharding


class ConfigError(ValueError):
    """A config value is invalid; the message names it, what was expected and how to fix it."""


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses a config file's argument string, big_vision style: "phase=2,runlocal".

    A bare name sets a boolean default to True; ``key=value`` is converted to the type of the
    default. Unknown names are refused, naming the ones that exist.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"config argument {key!r} is unknown; this config takes "
                              f"{sorted(defaults)} (e.g. configs/bert_base.py:phase=2)")
        default = defaults[key]
        if not _:
            if not isinstance(default, bool):
                raise ConfigError(f"config argument {key!r} needs a value, e.g. {key}={default}")
            out[key] = True
        elif isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            try:
                out[key] = type(default)(value)
            except ValueError:
                raise ConfigError(f"config argument {key}={value!r}; expected a "
                                  f"{type(default).__name__}") from None
    return out


RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def base_config() -> ml_collections.ConfigDict:
    """Defaults for a pre-training run (bert_tiny on the embedded corpus sizes)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Random bits for dropout: "threefry2x32" (JAX's default: the same bits on every backend and
    # device count) or XLA's RngBitGenerator, "rbg" / "unsafe_rbg", far cheaper on GPU and TPU
    # where threefry's integer rounds for every dropout mask cost real step time. A run's
    # checkpoints hold a key of this kind, so it is part of the run's identity.
    c.rng_impl = "threefry2x32"

    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"  # tiny|mini|small|medium|base|large, or "custom" with the sizes below
    c.model.num_layers = 0  # 0: the preset's; any other value overrides it (imported models)
    c.model.hidden_size = 0
    c.model.num_heads = 0
    c.model.intermediate_size = 0
    c.model.vocab_size = 30522
    c.model.max_position_embeddings = 512
    c.model.type_vocab_size = 2
    c.model.hidden_dropout = 0.1
    c.model.attention_dropout = 0.1
    c.model.hidden_act = "gelu"
    c.model.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
    c.model.param_dtype = "float32"
    c.model.attention_impl = "auto"
    c.model.scan_layers = False  # one nn.scan over the layers: compiles much faster (bench, pods)
    c.model.remat = "none"  # none | full | dots: recompute layer activations in the backward
    c.model.tie_word_embeddings = True  # False: the MLM decoder has its own [V, D] matrix
    c.model.prune_last_layer = True  # last layer only at masked positions and [CLS]s (same numbers)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    c.sharding = ml_collections.ConfigDict()
    c.sharding.rules = tuple(sharding.DEFAULT_RULES)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "lamb"
    c.optim.lr = 1e-3
    c.optim.end_lr = 0.0
    c.optim.warmup_steps = 100
    c.optim.power = 1.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    # 0: the embedding tables are optimised like every other weight. > 0: they take Adam's
    # direction at this peak rate (same schedule), outside LAMB's trust ratio (bertjax/optim.py)
    c.optim.embedding_lr = 0.0

    c.global_batch_size = 64
    # 0: from the device count, so each batch-parallel device runs micro_batch_per_device rows
    # a micro-batch (``resolve_for_devices``); > 0: exactly this many micro-batches a step
    c.accum_steps = 1
    c.micro_batch_per_device = 0
    # When accumulated gradients cross devices: "step" sums micro-batches on each device and
    # reduces once a step; "micro_batch" reduces every micro-batch (FSDP's memory). train.accumulate
    c.accum_reduce = "step"
    c.max_seq_length = 128
    c.max_predictions = 20
    c.total_steps = 1000
    c.max_nonfinite_steps = 10  # skip steps with NaN/inf loss or gradient; stop after this many in a row (0: no guard)
    c.nsp = True  # False: MLM-only (RoBERTa style); the NSP head then gets no loss

    c.data = ml_collections.ConfigDict()
    c.data.source = "embedded"  # embedded | prepared | bert_tfrecords | synthetic
    c.data.path = ""  # prepared dir or TFRecord glob; embedded: cache dir (default ~/.cache)
    c.data.mask_rate = 0.15
    c.data.whole_word = False
    c.data.short_seq_prob = 0.1
    c.data.shuffle_buffer = 2048
    # NSP pairs per row: 1 is BERT's one pair per row, the rest padding; above 1, short pairs
    # share rows (attention blocked between them, positions restarting), so less padding is
    # computed. Prepared/embedded data with NSP only; evaluation always uses one pair per row.
    c.data.pairs_per_row = 1
    c.data.max_documents = 0  # embedded only: keep the first N documents (tests, demos)
    c.data.inject_nan_from = 0  # synthetic only, for fault tests: NaN weights from this batch on

    c.init_from = ""  # a bertjax workdir or checkpoint step dir: parameters only
    c.eval_every = 200
    c.eval_batch_size = 0  # 0: 64 rounded up to a multiple of the batch-parallel devices
    c.checkpoint_every = 200
    c.keep_checkpoints = 3
    c.keep_period = 0  # also keep every step divisible by this (0: none)
    c.async_checkpoints = True
    c.log_every = 20
    c.progress_bar = True
    return c


def preset_config(preset: str, arg: str | None, lr: float) -> ml_collections.ConfigDict:
    """The shared shape of configs/bert_{mini,small,medium}.py: seq 128, 20 predictions,
    batch 256, 100k steps; ``runlocal`` shrinks it to a 20-step smoke run."""
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.preset = preset
    c.global_batch_size, c.max_seq_length, c.max_predictions = 256, 128, 20
    c.total_steps, c.optim.lr, c.optim.warmup_steps = 100_000, lr, 2_000
    if args.runlocal:
        c.total_steps, c.global_batch_size, c.optim.warmup_steps = 20, 16, 5
    return c


# Rows per device a micro-batch of the two-phase presets, (phase 1, phase 2): the most that
# fit a 16 GiB v5e chip by the plan (bench/results/plan-2026-12-08: BERT-large phase 1 needs
# 26.9 GiB at 64 rows, 17.7 at 32, 13.8 at 16; phase 2 at 4 rows: 15.72 of 15.75, so on v5e
# add --config.model.remat=dots if the runtime wants more); `bertjax plan --speed` finds what a
# larger chip affords (v5p: 64 rows for large phase 1).
TWO_PHASE_ROWS_PER_DEVICE = {"base": (64, 16), "large": (16, 4)}


def two_phase_config(preset: str, arg: str | None) -> ml_collections.ConfigDict:
    """BERT's two-phase large-batch LAMB recipe (You et al., 2019) for base and large.

    Phase 1: sequences of 128 with 20 predictions, global batch 65,536, lr 6e-3, 7,038 steps;
    phase 2: 512 with 80 predictions, batch 32,768, lr 4e-3, 1,563 steps, initialised from a
    phase-1 workdir (--config.init_from=...). Polynomial decay with power 0.5, bf16 compute,
    micro-batches sized for the devices (``resolve_for_devices``), dropout bits from XLA's
    RngBitGenerator. ``runlocal`` makes a 3-step float32 smoke run.
    """
    args = parse_arg(arg, phase=1, runlocal=False)
    c = base_config()
    c.model.preset = preset
    c.model.dtype = "bfloat16"
    if args.phase == 1:
        c.max_seq_length, c.max_predictions = 128, 20
        c.global_batch_size, c.total_steps = 65_536, 7_038
        c.optim.lr, c.optim.warmup_steps = 6e-3, 2_000
    elif args.phase == 2:
        c.max_seq_length, c.max_predictions = 512, 80
        c.global_batch_size, c.total_steps = 32_768, 1_563
        c.optim.lr, c.optim.warmup_steps = 4e-3, 200
    else:
        raise ConfigError(f"phase={args.phase}; expected 1 or 2 "
                          f"(e.g. configs/bert_{preset}.py:phase=2)")
    c.optim.power = 0.5
    # Micro-batches from the device count: each batch-parallel device computes this many rows
    # a micro-batch whatever the slice (bench/results/plan-2026-12-08: the rows per device that
    # fit a 16 GiB v5e and run fastest by the compiler's estimate; `bertjax plan` searches them)
    c.accum_steps = 0
    c.micro_batch_per_device = TWO_PHASE_ROWS_PER_DEVICE[preset][args.phase - 1]
    # XLA's RngBitGenerator for dropout: threefry's integer rounds were a fifth of the step's
    # cycles on TPU (bench/results/plan-2026-12-08)
    c.rng_impl = "rbg"
    if args.runlocal:
        c.model.dtype = "float32"
        c.global_batch_size, c.accum_steps, c.total_steps = 8, 1, 3
        c.optim.warmup_steps = 1
    return c


def model_config(config: ml_collections.ConfigDict) -> model_lib.BertConfig:
    """The frozen model config described by ``config.model``."""
    m = config.model
    # .get: configs saved before these keys existed still describe their preset
    sizes = {k: m.get(k, 0) for k in ("num_layers", "hidden_size", "num_heads",
                                      "intermediate_size") if m.get(k, 0)}
    if m.preset == "custom" and len(sizes) < 4:
        raise ConfigError("model.preset='custom' needs model.num_layers, hidden_size, num_heads "
                          "and intermediate_size; set all four (or use a named preset)")
    if sizes.get("hidden_size") and "intermediate_size" not in sizes and m.preset != "custom":
        sizes["intermediate_size"] = 4 * sizes["hidden_size"]
    try:
        return model_lib.BertConfig.preset(
            "base" if m.preset == "custom" else m.preset, **sizes, vocab_size=m.vocab_size,
            max_position_embeddings=m.max_position_embeddings,
            type_vocab_size=m.type_vocab_size, hidden_dropout=m.hidden_dropout,
            attention_dropout=m.attention_dropout, hidden_act=m.hidden_act, dtype=m.dtype,
            param_dtype=m.param_dtype, attention_impl=m.attention_impl,
            scan_layers=bool(m.scan_layers), remat=m.remat,
            prune_last_layer=bool(m.prune_last_layer),
            tie_word_embeddings=bool(m.tie_word_embeddings))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def check_rng_impl(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError unless ``config.rng_impl`` is a JAX PRNG kind."""
    _check(config.rng_impl in RNG_IMPLS,
           f"config.rng_impl={config.rng_impl!r}; expected one of {RNG_IMPLS}")


EVAL_ROWS = 64  # eval_batch_size=0: at least this many rows, a multiple of the devices


def batch_split(config: ml_collections.ConfigDict, shape: tuple[int, int, int]) -> int:
    """How many ways the act_batch rule splits the batch on a mesh of ``shape``."""
    axes = dict(config.sharding.rules).get("act_batch") or ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(dict(zip(sharding.MESH_AXES, shape))[a] for a in axes)


def resolve_for_devices(config: ml_collections.ConfigDict, num_devices: int,
                        num_processes: int = 1) -> None:
    """Fills in place what a config leaves to the device count.

    * ``accum_steps=0``: the fewest micro-batches that keep each batch-parallel device at
      ``micro_batch_per_device`` rows or fewer, and that divide the global batch over those
      devices (so a preset runs the rows per device its plan found best on 8 GPUs and on 256
      chips alike);
    * ``eval_batch_size=0``: ``EVAL_ROWS`` rounded up to a multiple of the batch-parallel
      devices and the processes.

    Raises:
      ConfigError: accum_steps=0 without micro_batch_per_device, or a global batch that
        cannot be split over the devices.
    """
    try:
        shape = sharding.mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                                    num_devices)
    except sharding.MeshError as e:
        raise ConfigError(str(e)) from None
    split = batch_split(config, shape)
    if config.accum_steps == 0:
        per_device = config.micro_batch_per_device
        _check(per_device >= 1,
               f"config.accum_steps=0 (from the device count) needs config.micro_batch_per_device"
               f" >= 1, got {per_device}; set one of them")
        need = math.lcm(split, num_processes)
        _check(config.global_batch_size % need == 0 and config.global_batch_size > 0,
               f"config.global_batch_size={config.global_batch_size} is not divisible by the "
               f"batch-parallel devices ({split}) and processes ({num_processes}); use a "
               f"multiple of {need}")
        rows = config.global_batch_size // split  # per device per step
        k = max(1, -(-rows // per_device))
        while rows % k:
            k += 1
        config.accum_steps = k
    if config.eval_batch_size == 0:
        need = math.lcm(split, num_processes)
        config.eval_batch_size = -(-EVAL_ROWS // need) * need


def check_mesh(config: ml_collections.ConfigDict, mcfg: model_lib.BertConfig, num_devices: int,
               num_processes: int, accum_steps: int = 1) -> tuple[int, int, int]:
    """The mesh shape for ``config.mesh`` on ``num_devices``, with the model and batches
    checked against it; shared by pre-training, fine-tuning and embedding.

    Checks: the mesh fits the devices; the heads divide over config.mesh.tensor; 8 <=
    max_seq_length <= the model's positions; global_batch_size a multiple of the batch-parallel
    devices × accum_steps and of the processes; eval_batch_size a positive multiple of both.

    Raises:
      ConfigError: with one line naming the value, what was expected and how to fix it.
    """
    try:
        shape = sharding.mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                                    num_devices)
    except sharding.MeshError as e:
        raise ConfigError(str(e)) from None
    tensor = shape[2]
    _check(mcfg.num_heads % tensor == 0,
           f"model heads={mcfg.num_heads} ({config.model.preset}) are not divisible by "
           f"config.mesh.tensor={tensor}; pick a tensor size that divides the head count")
    _check(config.max_seq_length <= mcfg.max_position_embeddings,
           f"config.max_seq_length={config.max_seq_length} exceeds model.max_position_embeddings="
           f"{mcfg.max_position_embeddings}; lower max_seq_length")
    _check(config.max_seq_length >= 8,
           f"config.max_seq_length={config.max_seq_length}; expected at least 8")
    _check(config.global_batch_size >= 1,
           f"config.global_batch_size={config.global_batch_size}; expected >= 1")
    split = batch_split(config, shape)
    need = math.lcm(split * accum_steps, num_processes)
    hosts = f" and the processes ({num_processes})" if num_processes > 1 else ""
    _check(config.global_batch_size % need == 0,
           f"config.global_batch_size={config.global_batch_size} is not divisible by "
           f"batch-parallel devices ({split}) × config.accum_steps ({accum_steps}) = "
           f"{split * accum_steps}{hosts}; use a multiple of {need}")
    need = math.lcm(split, num_processes)
    _check(config.eval_batch_size % need == 0 and config.eval_batch_size > 0,
           f"config.eval_batch_size={config.eval_batch_size} is not a positive multiple of the "
           f"batch-parallel devices ({split}){hosts}; use a multiple of {need}")
    return shape


def validate(config: ml_collections.ConfigDict, num_devices: int,
             num_processes: int = 1) -> tuple[int, int, int]:
    """Checks a run config against itself and the devices; returns the resolved mesh shape.
    What the config leaves to the device count is filled in first (``resolve_for_devices``).

    Raises:
      ConfigError: with one line naming the value, what was expected and how to fix it.
    """
    _check(config.accum_steps >= 0, f"config.accum_steps={config.accum_steps}; expected >= 1 "
           "(or 0: from the device count and config.micro_batch_per_device)")
    resolve_for_devices(config, num_devices, num_processes)
    _check(config.get("accum_reduce", "step") in ("step", "micro_batch"),
           f"config.accum_reduce={config.get('accum_reduce')!r}; expected 'step' (one gradient "
           "reduction a step) or 'micro_batch' (one per micro-batch, FSDP's memory)")
    mcfg = model_config(config)
    shape = check_mesh(config, mcfg, num_devices, 1, config.accum_steps)
    _check(0 < config.max_predictions <= config.max_seq_length,
           f"config.max_predictions={config.max_predictions}; expected 1..max_seq_length "
           f"({config.max_seq_length})")
    check_rng_impl(config)
    _check(config.optim.embedding_lr >= 0,
           f"config.optim.embedding_lr={config.optim.embedding_lr}; expected 0 (the "
           "tables like every weight) or a positive peak rate for the embedding tables")
    _check(config.total_steps >= 1, f"config.total_steps={config.total_steps}; expected >= 1")
    for key in ("eval_every", "checkpoint_every", "log_every", "keep_checkpoints"):
        _check(config[key] >= 1, f"config.{key}={config[key]}; expected >= 1")
    o = config.optim
    _check(o.name in ("lamb", "adamw"), f"config.optim.name={o.name!r}; expected 'lamb' or 'adamw'")
    _check(0 < o.lr < 1, f"config.optim.lr={o.lr}; expected 0 < lr < 1")
    _check(0 <= o.warmup_steps <= config.total_steps,
           f"config.optim.warmup_steps={o.warmup_steps}; expected 0..total_steps "
           f"({config.total_steps})")
    _check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"config.optim.b1={o.b1}, b2={o.b2}; expected in [0, 1)")
    _check(o.weight_decay >= 0, f"config.optim.weight_decay={o.weight_decay}; expected >= 0")
    return shape


def freeze(config: ml_collections.ConfigDict) -> Any:
    """Locks the config so later code cannot add keys by accident."""
    config.lock()
    return config


# One line per key of base_config: what ``--print_config`` and ``--help`` say of it
# (tests/test_help.py checks that every key of every shipped config has a line).
MEANINGS = {
    "seed": "seed of the initialisation, the data order and dropout",
    "rng_impl": "random-bit generator for dropout: threefry2x32 (same bits everywhere) | rbg | "
                "unsafe_rbg (cheaper on GPU/TPU); part of a run's identity",
    "model.preset": "model size: tiny | mini | small | medium | base | large, or custom",
    "model.num_layers": "encoder layers; 0: the preset's",
    "model.hidden_size": "hidden width; 0: the preset's",
    "model.num_heads": "attention heads; 0: the preset's",
    "model.intermediate_size": "feed-forward width; 0: the preset's (4 x hidden)",
    "model.vocab_size": "vocabulary size (the prepared data's tokenizer sets it)",
    "model.max_position_embeddings": "longest sequence the position table holds",
    "model.type_vocab_size": "segment (token type) ids: 2 for sentence pairs",
    "model.hidden_dropout": "dropout on embeddings and every sublayer's output",
    "model.attention_dropout": "dropout on attention probabilities (0 allows xla/cudnn attention)",
    "model.hidden_act": "feed-forward activation: gelu (exact erf) | gelu_tanh | relu",
    "model.dtype": "compute dtype: float32 | bfloat16 (weights stay param_dtype)",
    "model.param_dtype": "dtype the weights and optimizer state are kept in",
    "model.attention_impl": "auto | explicit | xla | cudnn (the last two need attention_dropout=0)",
    "model.scan_layers": "one nn.scan over the layers: much faster compiles on pods",
    "model.remat": "recompute activations in the backward pass: none | full | dots",
    "model.tie_word_embeddings": "the MLM decoder reuses the word embeddings (BERT) or not",
    "model.prune_last_layer": "last layer only at masked positions and [CLS] (same numbers)",
    "mesh.data": "data-parallel axis size; -1: the devices left over",
    "mesh.fsdp": "fully-sharded axis size (weights and optimizer state split over it)",
    "mesh.tensor": "tensor-parallel axis size (heads and feed-forward split over it)",
    "sharding.rules": "logical axis name -> mesh axes (bertjax/sharding.py DEFAULT_RULES)",
    "optim.name": "lamb | adamw",
    "optim.lr": "peak learning rate (after warmup)",
    "optim.end_lr": "learning rate at the last step (polynomial decay)",
    "optim.warmup_steps": "linear warmup steps",
    "optim.power": "polynomial decay power (1: linear)",
    "optim.b1": "Adam/LAMB first-moment decay",
    "optim.b2": "Adam/LAMB second-moment decay",
    "optim.eps": "Adam/LAMB epsilon",
    "optim.weight_decay": "decoupled weight decay (not on biases and LayerNorm)",
    "optim.clip_norm": "global gradient-norm clip; 0: none",
    "optim.embedding_lr": "> 0: embedding tables take Adam at this peak rate, outside LAMB's "
                          "trust ratio; 0: like every other weight",
    "global_batch_size": "sequences per optimizer step, over all hosts and micro-batches",
    "accum_steps": "micro-batches accumulated per step (memory, not the batch, shrinks); "
                   "0: from the device count and micro_batch_per_device",
    "micro_batch_per_device": "with accum_steps=0: rows each batch-parallel device computes "
                              "a micro-batch (accum_steps follows from the device count)",
    "accum_reduce": "step: gradients summed on each device, reduced once a step (parameters "
                    "gathered once); micro_batch: reduced every micro-batch (FSDP's memory)",
    "max_seq_length": "tokens per row, [CLS]/[SEP] included",
    "max_predictions": "masked positions per row the MLM loss reads",
    "total_steps": "optimizer steps of the run",
    "max_nonfinite_steps": "stop after this many NaN/inf steps in a row (each is skipped); "
                           "0: no guard",
    "nsp": "train next-sentence prediction beside MLM; False: MLM only",
    "data.source": "embedded (stdlib docstrings) | prepared (bertjax.prepare output) | "
                   "bert_tfrecords (google-research files) | synthetic",
    "data.path": "prepared dir or TFRecord glob; embedded: cache dir (default ~/.cache/bertjax)",
    "data.mask_rate": "share of maskable tokens masked (80% [MASK], 10% random, 10% kept)",
    "data.whole_word": "mask whole words (all their pieces) together",
    "data.short_seq_prob": "share of pairs cut shorter than max_seq_length (BERT's 0.1)",
    "data.shuffle_buffer": "examples in the shuffle buffer",
    "data.pairs_per_row": "NSP pairs packed per row (1: one pair per row, BERT's layout)",
    "data.max_documents": "embedded: keep the first N documents; 0: all",
    "data.inject_nan_from": "synthetic, fault tests only: NaN weights from this batch on",
    "init_from": "start the weights from a bertjax workdir, a step dir or an import "
                 "(parameters only)",
    "eval_every": "steps between held-out evaluations",
    "eval_batch_size": "sequences per evaluation batch; 0: 64 rounded up to a multiple of the "
                       "batch-parallel devices and processes",
    "checkpoint_every": "steps between checkpoints",
    "keep_checkpoints": "latest checkpoints kept",
    "keep_period": "also keep every step divisible by this; 0: none",
    "async_checkpoints": "save in the background while training goes on",
    "log_every": "steps between logged metrics",
    "progress_bar": "show a progress bar on the terminal",
}
