"""The fine-tuning demo: asyncio vs email docstring sentences (bertjax/tasks/demo.py), a
pre-trained bert_tiny against the same model from scratch, a couple of minutes on a laptop CPU.

Usage: python -m bertjax.finetune --config=configs/demo.py --config.init_from=runs/bert_tiny
"""

from bertjax.config import parse_arg
from bertjax.tasks.ft_config import finetune_config


def get_config(arg: str | None = None):
    args = parse_arg(arg, runlocal=False)
    c = finetune_config("demo")
    c.init_from = "runs/bert_tiny"  # what `python -m bertjax.pretrain` writes
    c.compare_scratch = True
    c.max_seq_length = 64  # docstring sentences: 95% fit in 64 pieces
    c.global_batch_size = 32
    c.eval_batch_size = 128
    c.total_steps = 150  # 12 epochs of the 400 training sentences
    c.eval_every = 50
    c.optim.lr = 5e-4  # a 2-layer encoder takes a larger step than BERT-base's 2e-5..5e-5
    if args.runlocal:
        c.total_steps, c.eval_every = 20, 10
    return c
