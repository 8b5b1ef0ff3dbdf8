"""bert_mini: 4 layers, 256 hidden, 4 heads.

Usage: --config=configs/bert_mini.py[:runlocal] [--config.key=value ...]
"""

from bertjax.config import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.model.preset = "mini"
    c.global_batch_size = 256
    c.max_seq_length = 128
    c.max_predictions = 20
    c.total_steps = 100_000
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 2_000
    if args.runlocal:
        c.total_steps = 20
        c.global_batch_size = 16
        c.optim.warmup_steps = 5
    return c
