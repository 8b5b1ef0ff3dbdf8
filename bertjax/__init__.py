"""bertjax: BERT pre-training, resume and fine-tuning in JAX/Flax on TPU and GPU pods.

From Python, ``bertjax.load(path)`` opens any run directory (bertjax.api); the commands are
``python -m bertjax.<command>``. Importing the package itself loads nothing heavy: the data
side (bertjax.data) never needs JAX.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("load", "Model", "Tokenizer"):
        from bertjax import api
        return getattr(api, name)
    raise AttributeError(f"module 'bertjax' has no attribute {name!r}")
