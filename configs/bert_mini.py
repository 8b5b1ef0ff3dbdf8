"""bert_mini: 4 layers, 256 hidden, 4 heads; seq 128, batch 256, LAMB lr 2e-3.

Usage: --config=configs/bert_mini.py[:runlocal] [--config.key=value ...]
"""

from bertjax.config import preset_config


def get_config(arg: str | None = None):
    return preset_config("mini", arg, lr=2e-3)
