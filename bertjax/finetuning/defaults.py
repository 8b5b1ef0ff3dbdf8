"""Defaults of a fine-tuning run, shared by configs/glue.py and configs/demo.py.

It starts from the pre-training ``base_config`` (mesh, sharding rules, model, optimizer keys mean
the same thing) and replaces ``data`` with the task's files and columns. The encoder's sizes come
from ``init_from`` (a pre-training workdir, one of its steps WORKDIR/checkpoints/N, or an
import); ``config.model`` matters only for a run from scratch.
"""

from __future__ import annotations

import ml_collections

from bertjax.config import base_config


def finetune_config(task: str) -> ml_collections.ConfigDict:
    """BERT's fine-tuning recipe: AdamW, 10% warmup then linear decay, 3 epochs, batch 32,
    sequences of 128, dropout 0.1 on the pooled output; the peak rate by the encoder's width
    (BERT's 5e-5 at BERT-base's 768, larger for narrower encoders: run_settings.learning_rate)."""
    c = base_config()
    c.task = task  # a GLUE task name (sst2, mrpc, stsb, ...), "custom" or "demo"
    c.family = ""  # classify | ner | qa; "": from the task name (bertjax.finetuning.families)
    c.data = ml_collections.ConfigDict()
    c.data.train = ""  # files: GLUE TSV for GLUE tasks; .csv/.tsv/.jsonl for custom tasks
    c.data.dev = ""
    c.data.test = ""  # optional, unlabelled: predictions/test.tsv
    c.data.dev_mismatched = ""  # MNLI: the mismatched dev set, reported as dev_mismatched
    c.data.tfds = ""  # instead of files: a prepared TFDS dataset (glue/sst2, conll2003, ...)
    c.data.tfds_data_dir = ""  # its data_dir ("": TFDS's default); nothing is downloaded
    c.data.tfds_splits = ""  # role=split overrides, e.g. "dev=validation[:50%],test=test"
    c.data.text_a = ""  # custom tasks: column names
    c.data.text_b = ""
    c.data.label = "label"
    c.data.labels = ""  # custom classification: comma-separated, in class-id order
    c.data.regression = False
    c.data.format = ""  # csv | tsv | jsonl; "" = from the file extension
    c.data.examples_per_row = 1  # >1: short examples share rows (tasks/packing.py; not QA)
    c.data.demo_train = 0  # demo: examples per split (0: the demo's defaults)
    c.data.demo_dev = 0
    c.tokenizer = ""  # "": the checkpoint's; or a sentencepiece .model / a dir with vocab.txt
    c.do_lower_case = ""  # "", "true", "false": WordPiece casing if the import did not record it
    c.optim.name = "adamw"
    c.optim.lr = 0.0  # 0: by the encoder's width, 5e-5 at BERT-base's (tasks/run_settings.py)
    c.optim.warmup_steps = -1  # -1: warmup_fraction of the steps
    c.optim.weight_decay = 0.01
    c.warmup_fraction = 0.1
    c.num_epochs = 3.0
    c.total_steps = 0  # 0: num_epochs over the training set
    c.global_batch_size = 32
    c.eval_batch_size = 64
    c.max_seq_length = 128
    c.head_dropout = 0.1
    # What the classification head reads: mean (the mean of the example's last hidden states) or
    # cls (BERT's tanh pooler on [CLS]). Mean by default: higher dev accuracy from scratch and
    # pre-trained on every task the README reports (Fine-tuning), most for small encoders.
    c.pooling = "mean"
    c.eval_every = 0  # 0: once per epoch (and at the end)
    c.log_every = 10
    c.checkpoint_every = 200  # the resumable latest state (kept until the run finishes)
    c.tensorboard = True  # events in WORKDIR/tb/{train,dev} besides metrics.jsonl (needs TF)
    c.compare_scratch = False  # also train the same model from random init, same steps
    return c


# One line per fine-tuning key (the rest mean what config.MEANINGS says; the NER and QA keys
# are set by configs/ner.py and configs/squad.py).
MEANINGS = {
    "task": "GLUE task name (sst2, mrpc, stsb, ...), custom, ner, squad_v1.1/2.0 or demo",
    "family": "classify | ner | qa; empty: from the task name",
    "data.train": "training file (GLUE TSV, or .csv/.tsv/.jsonl for custom tasks, CoNLL, SQuAD "
                  "JSON)",
    "data.dev": "dev file, evaluated during and after training",
    "data.test": "optional unlabelled file: predictions/test.tsv",
    "data.dev_mismatched": "MNLI: the mismatched dev file",
    "data.tfds": "instead of files: a prepared TFDS dataset (glue/sst2, conll2003, squad...)",
    "data.tfds_data_dir": "its TFDS data_dir; empty: TFDS's default (never downloaded)",
    "data.tfds_splits": "role=split overrides, e.g. dev=validation[:50%],test=test",
    "data.text_a": "custom tasks: the first text column",
    "data.text_b": "custom tasks: the second text column (pairs); empty: single sentences",
    "data.label": "custom tasks: the label column",
    "data.labels": "classes, comma-separated in id order; empty: from the training file",
    "data.regression": "custom tasks: the label is a number (mean-squared-error head)",
    "data.format": "csv | tsv | jsonl; empty: from the file extension",
    "data.examples_per_row": "> 1: short examples share rows (attention kept within each)",
    "data.demo_train": "demo: training examples; 0: the demo's default",
    "data.demo_dev": "demo: dev examples; 0: every held-out sentence",
    "data.scheme": "NER tags: IOB2 (BIO, empty) | IOB1 | IOBES",
    "data.word_column": "NER: column of the word in the CoNLL file",
    "data.tag_column": "NER: column of the tag; -1: the last",
    "data.version_2": "SQuAD 2.0: questions may have no answer",
    "data.doc_stride": "QA: context tokens between the starts of a long context's windows",
    "data.max_query_length": "QA: question tokens kept",
    "data.max_answer_length": "QA: longest answer decoded, in tokens",
    "data.n_best": "QA: candidate spans kept per question while decoding",
    "data.null_threshold": "SQuAD 2.0: answer empty when null score - best span exceeds this",
    "tokenizer": "empty: the checkpoint's; or a sentencepiece .model / a dir with vocab.txt",
    "do_lower_case": "WordPiece casing when the import did not record it: true | false",
    "warmup_fraction": "share of the steps spent warming up (when optim.warmup_steps is -1)",
    "num_epochs": "passes over the training set (when total_steps is 0)",
    "head_dropout": "dropout on the head's input",
    "pooling": "what the classification head reads: mean of the last hidden states | cls",
    "tensorboard": "also write TensorBoard events in WORKDIR/tb",
    "compare_scratch": "also train the same model from random initialisation, same steps",
    "optim.lr": "peak learning rate; 0: by the encoder's width (5e-5 at BERT-base's 768)",
    "optim.warmup_steps": "linear warmup steps; -1: warmup_fraction of the steps",
    "total_steps": "optimizer steps; 0: num_epochs over the training set",
    "eval_every": "steps between dev evaluations; 0: once per epoch",
    "checkpoint_every": "steps between resumable checkpoints (kept until the run finishes)",
    "init_from": "the encoder: a pre-training workdir, WORKDIR/checkpoints/N or an import; "
                 "empty: random initialisation",
}
