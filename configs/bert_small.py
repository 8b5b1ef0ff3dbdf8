"""bert_small: 4 layers, 512 hidden, 8 heads; seq 128, batch 256, LAMB lr 1.5e-3.

Usage: --config=configs/bert_small.py[:runlocal] [--config.key=value ...]
"""

from bertjax.config import preset_config


def get_config(arg: str | None = None):
    return preset_config("small", arg, lr=1.5e-3)
