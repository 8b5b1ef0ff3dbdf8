"""The fine-tuning demo: word order (bertjax/finetuning/demo.py). Is a docstring sentence as written, or
have two of its words been swapped? Both versions hold the same words, so only a model that reads
order can beat chance (0.5); masked-LM pre-training is where an encoder learns that order.

The pre-trained encoder (``init_from``) and the same model from random initialisation train on the
same 600 examples (300 sentences, each as written and swapped) for the same steps; dev is every
usable sentence of the documents pre-training held out (261 sentences, 522 examples). Up to 4
sentences share a row (bertjax/finetuning/packing.py); both runs take about 40 seconds together on
two CPU cores.

Usage: python -m bertjax.finetune --config=configs/demo.py [--config.init_from=runs/bert_tiny]
       python -m bertjax.finetune --config=configs/demo.py:runlocal   # a 20-step smoke run
"""

from bertjax.config import parse_arg
from bertjax.finetuning.defaults import finetune_config


def get_config(arg: str | None = None):
    args = parse_arg(arg, runlocal=False)
    c = finetune_config("demo")
    c.init_from = "runs/bert_tiny"  # what `python -m bertjax.pretrain` writes
    c.compare_scratch = True
    c.data.demo_train = 600  # examples: 300 sentences, each as written and with a swap
    c.data.demo_dev = 0  # 0: all held-out sentences (two examples each)
    c.max_seq_length = 64  # sentences of 8-30 words: ~1.4 sentencepiece pieces a word
    c.data.examples_per_row = 4  # ~2 sentences share a row (bertjax/finetuning/packing.py)
    c.global_batch_size = 32
    c.eval_batch_size = 128
    # 16 epochs of the 600 training examples: a pre-trained encoder leaves the 0.5 plateau
    # after 150-200 steps (scratch after ~450), so 150 steps cut it off at the edge, and an
    # encoder pre-trained 4x longer was still at 0.50 there (README, "Pre-training recipe").
    c.total_steps = 300
    c.eval_every = 50
    c.optim.lr = 5e-4  # a 2-layer encoder takes a larger step than BERT-base's 2e-5..5e-5
    # The mean of the token states, not the [CLS] pooler: a swap is a local anomaly that the
    # mean carries to the classifier at once (0.58 vs 0.51 dev with the same bert_tiny encoder).
    c.pooling = "mean"
    if args.runlocal:
        c.total_steps, c.eval_every = 20, 10
        c.data.demo_train, c.data.demo_dev = 128, 128
    return c
