"""bert_large: 24 layers, 1024 hidden, 16 heads (340M), with BERT's two-phase LAMB recipe.

Phase 1: sequences of 128 with 20 predictions; phase 2: 512 with 80 predictions, initialised
from a phase-1 workdir (--config.init_from=...). Global batches and learning rates follow the
large-batch LAMB recipe (You et al., 2019); gradient accumulation makes them fit any memory.

Usage: --config=configs/bert_large.py:phase=2[,runlocal] --config.accum_steps=K ...
"""

from bertjax.config import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, phase=1, runlocal=False)
    c = base_config()
    c.model.preset = "large"
    c.model.dtype = "bfloat16"
    if args.phase == 1:
        c.max_seq_length, c.max_predictions = 128, 20
        c.global_batch_size, c.total_steps = 65536, 7038
        c.optim.lr, c.optim.warmup_steps = 6e-3, 2000
    elif args.phase == 2:
        c.max_seq_length, c.max_predictions = 512, 80
        c.global_batch_size, c.total_steps = 32768, 1563
        c.optim.lr, c.optim.warmup_steps = 4e-3, 200
    else:
        raise ValueError(f"phase={args.phase}; expected 1 or 2 (e.g. configs/bert_large.py:phase=2)")
    c.optim.power = 0.5
    c.accum_steps = 64
    if args.runlocal:
        c.model.dtype = "float32"
        c.global_batch_size, c.accum_steps, c.total_steps = 8, 1, 3
        c.optim.warmup_steps = 1
    return c
