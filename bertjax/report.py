"""What the user sees: metrics.jsonl, TensorBoard events, a PNG of the curves, a summary.

Only process 0 writes. TensorBoard events go through tf.summary when TensorFlow is installed
(it is wherever the tf.data pipeline runs); on a JAX-only machine metrics.jsonl still has all.
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
        with self._tb[split].as_default(step=step):
            for k, v in metrics.items():
                if isinstance(v, (int, float)):  # nested tables (per-type scores) stay in jsonl
                    self._tf.summary.scalar(k, v)

    def flush(self) -> None:
        for w in self._tb.values():
            w.flush()


def read_metrics(workdir: str) -> list[dict]:
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(workdir: str) -> str | None:
    """Writes curves.png (train loss, eval loss and MLM accuracy against step)."""
    rows = read_metrics(workdir)
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = {}  # a resumed run rewrites steps after its checkpoint: keep the latest value
    for r in rows:
        last[(r["split"], r["step"])] = r
    train = sorted((v for (s, _), v in last.items() if s == "train"), key=lambda r: r["step"])
    evals = sorted((v for (s, _), v in last.items() if s == "eval"), key=lambda r: r["step"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        ax1.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss")
        ax2.plot([r["step"] for r in evals], [r["mlm_accuracy"] for r in evals], "o-",
                 label="eval MLM accuracy")
        if "nsp_accuracy" in evals[0]:
            ax2.plot([r["step"] for r in evals], [r["nsp_accuracy"] for r in evals], "s-",
                     label="eval NSP accuracy")
    ax2.plot([r["step"] for r in train], [r["mlm_accuracy"] for r in train], alpha=0.5,
             label="train MLM accuracy")
    for ax, title in ((ax1, "loss"), (ax2, "accuracy")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = epath.Path(workdir) / "curves.png"
    path.write_bytes(buf.getvalue())
    return os.fspath(path)


def summary(lines: dict[str, Any]) -> str:
    """A one-screen aligned summary."""
    width = max(len(k) for k in lines)
    body = "\n".join(f"  {k.ljust(width)}  {v}" for k, v in lines.items())
    bar = "=" * (width + 40)
    return f"{bar}\n{body}\n{bar}"
