"""TensorFlow-only data side of bertjax: tokenizer, corpus preparation and tf.data pipelines.

Nothing under this package imports JAX: it runs on hosts that have only TensorFlow and yields
host-local numpy batches. Modules:

  errors       DataError, the single exception type for bad inputs.
  fs           every file path, local or gs://: etils.epath, plus globs and whole-file writes.
  text         corpus-format text files: whole-file check, documents, byte-ranges, sentences.
  corpus       the embedded default corpus (Python standard-library docstrings).
  tokenizer    sentencepiece training/loading with BERT's special tokens at fixed ids.
  records      TFRecord files: expand globs (checked), read every record (CRC-checked), count.
  prepare      raw text / TFDS -> tokenized document shards + metadata.json (parallel, resumable);
               checks of a prepared directory (check_prepared before training, verify).
  sources      what the pipeline reads: prepared shards or google-research/bert records; hosts.
  pairs        tf graph code turning documents into NSP pairs or packed MLM-only sequences.
  masking      vectorised dynamic MLM masking of whole batches.
  pretraining  per-host tf.data pipelines and checkpointable iterators (the train loop's API).
  bench        `python -m bertjax.data.bench`: pipeline throughput (and --stats).
  wordpiece    WordPiece tokenization for imported checkpoints, id-for-id like transformers'.
  glue         the GLUE task table: columns, label lists and metric names of the nine tasks.
  tasks        readers of downstream-task data: GLUE TSVs, CSV/JSONL, SQuAD, CoNLL, TFDS.

Modules import only within this package, never upward into the rest of bertjax.
"""
