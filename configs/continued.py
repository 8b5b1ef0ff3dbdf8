"""Continued pre-training of an imported BERT on your own corpus (domain adaptation).

Usage:
  python -m bertjax.convert --from=hf --input=HF_BERT_DIR --output=runs/imported
  python -m bertjax.prepare --input='corpus/*.txt' --output=data/mine --vocab=runs/imported
  python -m bertjax.pretrain --config=configs/continued.py --config.init_from=runs/imported \
      --config.data.path=data/mine --workdir=runs/continued
  python -m bertjax.pretrain --config=configs/continued.py:runlocal ...   # a 20-step smoke run

The model's sizes, vocabulary and tokenizer are the import's (bertjax.loop.follow_init_from:
nothing to restate here); an import without pre-training heads gets fresh ones, said in one
line at the start. This file says how to train a model that already knows its language: MLM
only (NSP adds nothing to an encoder's downstream scores here: README, "Pre-training recipe"),
AdamW at 1e-4 for every weight with a short warm-up, so the first steps, whose gradients come
through fresh heads, do not tear the encoder (LAMB at bert_tiny's 2e-2 moves every layer by 2%
of its norm a step: right from scratch, wrong for a trained encoder), and BERT's dropout of 0.1.
docs/continued_pretraining.md has a worked example with all-MiniLM-L6-v2.
"""

from bertjax.config import base_config, parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, runlocal=False)
    c = base_config()
    c.data.source = "prepared"  # python -m bertjax.prepare --vocab=IMPORT
    c.nsp = False
    c.max_seq_length = 128
    c.max_predictions = 20
    c.global_batch_size = 32
    c.eval_batch_size = 64
    c.total_steps = 2000
    c.eval_every = 500
    c.checkpoint_every = 500
    c.optim.name = "adamw"
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 100
    c.model.hidden_dropout = 0.1
    c.model.attention_dropout = 0.1
    if args.runlocal:
        c.total_steps, c.eval_every, c.checkpoint_every = 20, 20, 20
        c.global_batch_size, c.optim.warmup_steps = 8, 2
    return c
