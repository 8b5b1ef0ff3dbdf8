"""Reading a run's metrics.jsonl in tests (shared by the pre-training and multi-host tests)."""

import json
import os


def train_losses(workdir) -> dict[int, float]:
    """step -> train loss, the last value written for each step (a resumed run rewrites)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["split"] == "train":
                out[r["step"]] = r["loss"]
    return out
