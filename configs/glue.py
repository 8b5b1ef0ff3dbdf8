"""Fine-tune on a GLUE task or on your own CSV/TSV/JSONL files.

Usage:
  python -m bertjax.finetune --config=configs/glue.py:task=sst2 --config.init_from=runs/base \\
      --config.data.train=glue/SST-2/train.tsv --config.data.dev=glue/SST-2/dev.tsv \\
      --workdir=runs/sst2
  python -m bertjax.finetune --config=configs/glue.py:task=custom --config.init_from=... \\
      --config.data.train=train.csv --config.data.dev=dev.csv --config.data.text_a=review \\
      --config.data.label=sentiment --config.data.labels=neg,pos --workdir=runs/reviews

  python -m bertjax.finetune --config=configs/glue.py:task=mnli --config.init_from=runs/base \
      --config.data.tfds=glue/mnli --config.data.tfds_data_dir=~/tensorflow_datasets

Tasks: cola sst2 mrpc qqp mnli qnli rte wnli stsb (regression), custom. MNLI also scores
``--config.data.dev_mismatched=dev_mismatched.tsv`` (TFDS: validation_mismatched) as
"dev_mismatched" in metrics.json; the headline stays the matched dev.
``runlocal`` makes a short smoke run (30 steps, batch 16, seq 64).
"""

from bertjax.config import parse_arg
from bertjax.finetuning.defaults import finetune_config


def get_config(arg: str | None = None):
    args = parse_arg(arg, task="sst2", runlocal=False)
    c = finetune_config(args.task)
    if args.runlocal:
        c.total_steps, c.global_batch_size, c.max_seq_length = 30, 16, 64
    return c
