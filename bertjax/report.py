"""What the user sees: metrics.jsonl, TensorBoard events, a PNG of the curves, a summary.

Only process 0 writes. TensorBoard events go through tf.summary when TensorFlow is installed
(it is wherever the tf.data pipeline runs); on a JAX-only machine metrics.jsonl still has all.
Each number is written as a classic scalar summary (``simple_value``), which TensorBoard's
scalar dashboard and ``EventAccumulator.Scalars`` read; TF2's ``tf.summary.scalar`` would store
tensors that ``Scalars`` does not see.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
from typing import Any

from etils import epath  # local paths and gs:// alike


class MetricsWriter:
    """Appends {"step", "split", metrics...} lines to metrics.jsonl and TensorBoard events."""

    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.fspath(epath.Path(workdir) / "metrics.jsonl")
        self._tb = {}
        self._tf = None
        if not enabled:
            return
        self._workdir = workdir
        if not tensorboard:
            return
        try:
            tf = importlib.import_module("tensorflow")  # optional: event files only
            self._tf = tf
        except ImportError:
            logging.warning("TensorFlow is not installed: no TensorBoard events, only %s",
                            self.path)
            return
        try:  # event files need no accelerator; TF must not reserve the GPU JAX uses
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TF already initialised its devices (the input pipeline did)
            pass

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with epath.Path(self.path).open("a") as f:
            f.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        if self._tf is None:
            return
        if split not in self._tb:
            self._tb[split] = self._tf.summary.create_file_writer(
                os.path.join(self._workdir, "tb", split))
        values = [self._tf.compat.v1.Summary.Value(tag=k, simple_value=float(v))
                  for k, v in metrics.items()  # nested tables (per-type scores) stay in jsonl
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
        with self._tb[split].as_default(step=step):
            self._tf.summary.experimental.write_raw_pb(
                self._tf.compat.v1.Summary(value=values).SerializeToString(), step=step)

    def flush(self) -> None:
        for w in self._tb.values():
            w.flush()


def read_metrics(workdir: str) -> list[dict]:
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _latest(rows: list[dict], split: str) -> list[dict]:
    """The rows of one split by step; a resumed run rewrites steps after its checkpoint, so the
    latest value of a step wins."""
    last = {r["step"]: r for r in rows if r["split"] == split}
    return [last[k] for k in sorted(last)]


def _save_png(fig: Any, workdir: str, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = epath.Path(workdir) / name
    path.write_bytes(buf.getvalue())
    return os.fspath(path)


def _panel(ax: Any, title: str, ylabel: str) -> None:
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


def plot_curves(workdir: str, baseline: float | None = None) -> str | None:
    """Writes curves.png of a pre-training run: the losses; MLM accuracy with the
    most-frequent-token ``baseline`` drawn; NSP accuracy on its own axes when it was trained.
    Evaluations are marked points, training a line."""
    rows = read_metrics(workdir)
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = _latest(rows, "train"), _latest(rows, "eval")
    nsp = bool(evals) and "nsp_accuracy" in evals[0]
    fig, axes = plt.subplots(1, 3 if nsp else 2, figsize=(15 if nsp else 11, 4))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], label="train loss")
    axes[1].plot(steps, [r["mlm_accuracy"] for r in train], alpha=0.5, label="train")
    if evals:
        eval_steps = [r["step"] for r in evals]
        axes[0].plot(eval_steps, [r["loss"] for r in evals], "o-", label="eval loss")
        axes[1].plot(eval_steps, [r["mlm_accuracy"] for r in evals], "o-", label="eval")
    if baseline is not None:
        axes[1].axhline(baseline, color="gray", linestyle="--",
                        label=f"most frequent token ({baseline:.3f})")
    _panel(axes[0], "loss (MLM + NSP)" if nsp else "loss (MLM)", "cross-entropy (nats)")
    _panel(axes[1], "MLM accuracy (masked positions)", "accuracy")
    if nsp:
        axes[2].plot(eval_steps, [r["nsp_accuracy"] for r in evals], "s-", label="eval")
        axes[2].axhline(0.5, color="gray", linestyle="--", label="chance (0.5)")
        _panel(axes[2], "NSP accuracy", "accuracy")
    return _save_png(fig, workdir, "curves.png")


def plot_finetune_curves(workdir: str, headline: str) -> str | None:
    """Writes curves.png of a fine-tuning: train and dev loss; the dev ``headline`` metric
    (the one the kept checkpoint is chosen by) at each evaluation."""
    rows = read_metrics(workdir)
    train, dev = _latest(rows, "train"), _latest(rows, "dev")
    if not dev:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax1.plot([r["step"] for r in dev], [r["loss"] for r in dev], "o-", label="dev loss")
    points = [(r["step"], r[headline]) for r in dev if isinstance(r.get(headline), (int, float))]
    ax2.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"dev {headline}")
    _panel(ax1, "loss", "loss")
    _panel(ax2, f"dev {headline} (the kept checkpoint is its best)", headline)
    return _save_png(fig, workdir, "curves.png")


def summary(lines: dict[str, Any]) -> str:
    """A one-screen aligned summary."""
    width = max(len(k) for k in lines)
    body = "\n".join(f"  {k.ljust(width)}  {v}" for k, v in lines.items())
    bar = "=" * (width + 40)
    return f"{bar}\n{body}\n{bar}"
