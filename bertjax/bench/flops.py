"""Model FLOPs of a BERT pre-training step (one formula) and the datasheet peaks they meet.

``model_flops`` counts the matmuls of one step for any implementation (bertjax's sparse MLM head
and pruned last layer, or transformers' dense head); ``pretraining_flops`` is that count for a
bertjax run config. ``table_peak_flops`` is an accelerator's dense bf16 peak, the denominator of
MFU (on CPU, where there is no datasheet, the runner measures a matmul instead).
"""

from __future__ import annotations

from typing import Any

from bertjax import config as config_lib
from bertjax import model as model_lib

# Dense bf16 tensor-core peaks (no sparsity) from the vendors' datasheets, per chip, in
# TFLOP/s. Matched as substrings of jax's device_kind, most specific first.
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
