"""TensorFlow-only data side of bertjax: tokenizer, corpus preparation and tf.data pipelines.

Nothing under this package imports JAX: it runs on hosts that have only TensorFlow and yields
host-local numpy batches. Modules:

  errors       DataError, the single exception type for bad inputs.
  text         corpus-format text files: documents, byte-range splits, sentence splitting.
  corpus       the embedded default corpus (Python standard-library docstrings).
  tokenizer    sentencepiece training/loading with BERT's special tokens at fixed ids.
  prepare      raw text / TFDS -> tokenized document shards + metadata.json (parallel, resumable).
  sources      what the pipeline reads: prepared shards or google-research/bert records; hosts.
  pairs        tf graph code turning documents into NSP pairs or packed MLM-only sequences.
  masking      vectorised dynamic MLM masking of whole batches.
  pretraining  per-host tf.data pipelines and checkpointable iterators (the train loop's API).
  bench        `python -m bertjax.data.bench`: pipeline throughput (and --stats).
"""
