"""Model FLOPs of a BERT pre-training step (one formula) and the datasheet peaks they meet.

``model_flops`` counts the matmuls of one step for any implementation (bertjax's sparse MLM head
and pruned last layer, or transformers' dense head); ``pretraining_flops`` is that count for a
bertjax run config. ``table_peak_flops`` is an accelerator's dense bf16 peak, the denominator of
MFU (on CPU, where there is no datasheet, the runner measures a matmul instead).
``Utilization`` is what the pre-training loop reports from them: model FLOP/s per device and
MFU, counting real (non-padding) tokens only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from bertjax import config as config_lib
from bertjax import model as model_lib

# Dense bf16 tensor-core peaks (no sparsity) from the vendors' datasheets, per chip, in
# TFLOP/s. Matched as substrings of jax's device_kind, most specific first. Where a chip shows
# as several jax devices (TPU7x), a device's peak is the chip's over them: device_peak_flops.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM; device_kind "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),  # same chip as the H100 SXM, more memory
    ("A100", 312.0),
    # Cloud TPU chips (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e); "TPU v5 lite" is v5e and
    # must come before "TPU v5" (v5p). One chip is one device on these (v4 in megacore mode).
    ("TPU v5 lite", 197.0),
    ("TPU v5", 459.0),
    ("TPU v6 lite", 918.0),
    ("TPU v4", 275.0),
    # TPU7x (Ironwood): 2307 TFLOP/s bf16 per chip (docs.cloud.google.com/tpu/docs/tpu7x,
    # "Peak compute per chip (BF16)"); no megacore, so jax shows its two TensorCores as two
    # devices (device_kind "TPU7x") and one device has half.
    ("TPU7x", 2307.0),
)


def pretraining_flops(config: Any, training: bool = True) -> dict[str, float]:
    """``model_flops`` of bertjax's pre-training step for a run config: sparse MLM head, and
    the last layer at the masked positions and [CLS]s (unless the layers are scanned)."""
    cfg = config_lib.model_config(config)
    m = config.data.pairs_per_row if config.data.pairs_per_row > 1 else 1
    rows = (config.max_predictions + m if cfg.prune_last_layer and not cfg.scan_layers
            else None)
    return model_flops(cfg, config.global_batch_size, config.max_seq_length,
                       config.max_predictions, training, last_layer_rows=rows)


def model_flops(cfg: model_lib.BertConfig, batch: int, seq_len: int, mlm_positions: int,
                training: bool = True, last_layer_rows: int | None = None) -> dict[str, float]:
    """Model FLOPs of one BERT pre-training step (matmuls only; 1 multiply-add = 2 FLOPs).

    With B = batch, L = seq_len, D hidden, F intermediate, N layers, V vocabulary and
    P = mlm_positions rows given to the MLM head, the forward pass costs:

      encoder_dense  2·(4·D² + 2·D·F)·B·L·N   Q, K, V, attention-output and the two MLP matmuls
                                              (6·N_dense·tokens for training: fwd + bwd = 3×);
      attention      2 · 2·B·L²·D · N         QKᵀ and softmax·V, summed over heads;
      mlm_head       2·(D² + D·V)·B·P         the transform dense and the tied decoder,
                                              at the P rows the head is evaluated on;
      pooler_nsp     2·(D² + 2·D)·B           pooler dense on [CLS] and the 2-way NSP classifier.

    Embedding lookups are gathers, not matmuls, and elementwise work (GELU, LayerNorm, softmax,
    the optimizer) is not counted: this is the usual "model FLOPs" of MFU, so it does not grow
    when an implementation recomputes or adds work. Training multiplies the forward by 3
    (backward = gradients w.r.t. inputs and weights, each a forward's worth), which is exact
    here because every matmul input needs its gradient (it descends from the embeddings).

    bertjax evaluates the MLM head sparsely: P = max_predictions. transformers' BERT evaluates
    it densely over every position: pass P = L to count what it computes.

    bertjax also computes the last encoder layer only at the R rows that are read (the P masked
    positions and the M [CLS]s; ``model.EncoderLayer``): its K and V projections still run on
    all L rows, its Q, attention-output and MLP matmuls and its attention on R rows. Pass
    ``last_layer_rows`` = R for that (``pretraining_flops`` does); None counts the whole layer.

    Args:
      cfg: the model sizes.
      batch, seq_len: B and L (padding tokens included: they are computed).
      mlm_positions: P, rows per sequence the MLM head runs on.
      training: forward + backward (×3) if True, else the forward only.
      last_layer_rows: R, rows per sequence the last layer is computed at (None: all L).

    Returns:
      {"encoder_dense", "attention", "mlm_head", "pooler_nsp", "total"} in FLOPs.
    """
    b, l, p = batch, seq_len, mlm_positions
    d, f, n, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
    r = l if last_layer_rows is None else last_layer_rows
    passes = 3 if training else 1
    terms = {
        # N-1 whole layers; the last: K, V on L rows, Q, output and the MLP on R rows
        "encoder_dense": 2 * (4 * d * d + 2 * d * f) * b * l * (n - 1)
                         + 2 * (2 * d * d * l + (2 * d * d + 2 * d * f) * r) * b,
        "attention": 2 * (2 * b * l * l * d) * (n - 1) + 2 * (2 * b * r * l * d),
        "mlm_head": 2 * (d * d + d * v) * b * p,
        "pooler_nsp": 2 * (d * d + 2 * d) * b,
    }
    out = {k: float(passes * x) for k, x in terms.items()}
    out["total"] = sum(out.values())
    return out


def table_peak_flops(device_kind: str) -> float | None:
    """The dense bf16 peak FLOP/s of one chip from ``PEAK_BF16_TFLOPS``, or None if unknown."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_kind.lower():
            return tflops * 1e12
    return None


def device_peak_flops(devices: Sequence[Any]) -> float | None:
    """The dense bf16 peak FLOP/s of one of ``devices`` (jax devices of one kind), or None.

    The datasheet gives a chip's peak; a chip may show as several devices. A TPU device carries
    its chip's ``coords``, so the devices at the first one's coords are its chip's (two on
    TPU7x and on a v4 outside megacore mode; one on v4 and v5p in megacore mode, v5e and v6e:
    checked on libtpu's topology descriptions). Devices without coords (GPUs) are one a chip.
    None on CPU and for a kind ``PEAK_BF16_TFLOPS`` lacks.
    """
    peak = table_peak_flops(devices[0].device_kind)
    if peak is None:
        return None
    coords = getattr(devices[0], "coords", None)
    per_chip = (1 if coords is None else
                sum(1 for d in devices if getattr(d, "coords", None) == coords))
    return peak / max(per_chip, 1)


def flops_per_token(config: Any) -> float:
    """Model FLOPs of a pre-training step per token position: ``pretraining_flops`` over the
    step's B·L positions. Times the real (non-padding) tokens of a step, it is the step's
    real-token model FLOPs, what ``Utilization`` reports.

    Why spread per token: it is the convention of the published BERT MFU figures bertjax is
    compared with (MLPerf, DeepLearningExamples: 6·N + 12·layers·L·D FLOPs a token, counted on
    real tokens), and the loop knows each step's real tokens (a sum on the device) but not each
    row's length. A padding position is computed yet does no work, so padding shows as lost
    MFU and packing (``config.data.pairs_per_row``) as MFU regained.

    It is exact for rows without padding and one sequence each, and an approximation
    otherwise. Attention is quadratic in length: each token is charged its query against all L
    keys, as computed, while the work that counts in a row of r real tokens is r² (padding
    keys masked), and in a packed row the sum of its pairs' lengths squared (the mask is block
    diagonal); for such rows the attention term is an upper bound. The MLM head (max_predictions
    rows a sequence) and the pooler (one row) do not shrink with padding either; spread per
    token, a half-padded row is charged half of them.
    """
    return pretraining_flops(config)["total"] / (config.global_batch_size
                                                 * config.max_seq_length)


@dataclasses.dataclass(frozen=True)
class Utilization:
    """Model FLOP/s per device and MFU of a pre-training run, counting real tokens only.

    Attributes:
      flops_per_token: ``flops_per_token(config)``.
      devices: all devices of the run (jax.device_count()): the FLOP/s are shared by them.
      peak: one device's dense bf16 peak FLOP/s (``device_peak_flops``); None without one.
      device_kind: jax's name of the devices, for the summary line.
    """

    flops_per_token: float
    devices: int
    peak: float | None
    device_kind: str

    @classmethod
    def of(cls, config: Any, devices: Sequence[Any]) -> Utilization:
        """For a run config on ``devices`` (jax.devices(): every host's)."""
        return cls(flops_per_token(config), len(devices), device_peak_flops(devices),
                   devices[0].device_kind)

    def flops_per_s(self, real_tokens: float, seconds: float) -> float:
        """Model FLOP/s per device of ``real_tokens`` (non-padding, all devices) in
        ``seconds``."""
        return self.flops_per_token * real_tokens / max(seconds, 1e-9) / self.devices

    def mfu(self, flops_per_s: float) -> float | None:
        """``flops_per_s`` (per device) over the device's peak; None without a datasheet peak
        (a CPU: no datasheet, and measuring one costs time a training run should not spend)."""
        return flops_per_s / self.peak if self.peak else None

    def line(self, flops_per_s: float) -> str:
        """The summary's value for ``flops_per_s`` (per device): see ``utilization_line``."""
        return utilization_line(flops_per_s, self.mfu(flops_per_s), self.device_kind)


def utilization_line(flops_per_s: float, mfu: float | None, device_kind: str | None) -> str:
    """'1.23 TFLOP/s (real tokens), MFU 41.2% of TPU v5 lite's bf16 peak', or '..., MFU n/a: no
    datasheet peak for cpu'. ``device_kind`` None (a finished run reported again from its
    metrics.jsonl, which does not name the devices) says "the run's devices" instead."""
    devices = device_kind or "the run's devices"
    head = f"{format_flops(flops_per_s)} (real tokens), "
    if mfu is None:
        return head + f"MFU n/a: no datasheet peak for {devices}"
    peak = f"{device_kind}'s bf16 peak" if device_kind else "the bf16 peak of the run's devices"
    return head + f"MFU {100 * mfu:.1f}% of {peak}"


def format_flops(flops_per_s: float) -> str:
    """FLOP/s with an SI prefix and three significant digits: '1.23 TFLOP/s'."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(flops_per_s) >= scale:
            return f"{flops_per_s / scale:.3g} {prefix}FLOP/s"
    return f"{flops_per_s:.3g} FLOP/s"
