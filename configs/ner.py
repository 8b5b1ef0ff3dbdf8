"""Named-entity recognition (token classification) on CoNLL files or TFDS conll2003.

Usage:
  python -m bertjax.finetune --config=configs/ner.py --config.init_from=runs/base \\
      --config.data.train=conll/eng.train --config.data.dev=conll/eng.testa --workdir=runs/ner
  python -m bertjax.finetune --config=configs/ner.py --config.init_from=runs/base \\
      --config.data.tfds=conll2003 --config.data.tfds_data_dir=~/tensorflow_datasets

Files: one "word ... tag" line per token, a blank line between sentences (CoNLL-2003's
"word POS chunk NER" reads as is: the tag is the last column). Tags: IOB2 (BIO) by default,
``--config.data.scheme=IOB1`` for the original CoNLL-2003 files, or IOBES. The label set is the
training file's unless ``--config.data.labels=O,B-LOC,I-LOC,...`` lists it.
``runlocal`` makes a short smoke run (30 steps, batch 16, seq 64).
"""

from bertjax.config import parse_arg
from bertjax.finetuning.defaults import finetune_config


def get_config(arg: str | None = None):
    args = parse_arg(arg, runlocal=False)
    c = finetune_config("ner")
    c.family = "ner"
    c.data.label = ""  # unused: the tag is a column of the CoNLL file
    c.data.labels = ""  # "": the training file's tags, sorted, "O" first
    c.data.scheme = ""  # "" = IOB2 (= BIO) | IOB1 | IOBES; eval_only: the workdir's
    c.data.word_column = 0
    c.data.tag_column = -1  # -1: the last column
    c.global_batch_size = 32
    c.eval_batch_size = 64
    c.max_seq_length = 128
    c.num_epochs = 3.0
    c.optim.lr = 0.0  # 0: by the encoder's width (5e-5 at BERT-base's; tasks/run_settings.py)
    if args.runlocal:
        c.total_steps, c.global_batch_size, c.max_seq_length = 30, 16, 64
    return c
