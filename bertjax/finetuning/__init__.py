"""Fine-tuning, evaluation and embeddings on top of a pre-trained (or imported) encoder.

  runner        the loop every task family shares, in phases: settle -> build -> train -> report
  run_settings  settings checked before anything is read; eval_only and resume rules; the rate
  families      which family a config asks for (classify, ner, qa), imported only when asked
  encoder       the encoder's sizes from ``init_from`` (bertjax.rundir) and the mesh checks
  defaults      the fine-tuning config defaults (configs/glue.py, demo.py, ner.py, squad.py)
  splits        where a task's splits come from (files or TFDS) and how they are batched
  features      text (pairs) -> model inputs, with the tokenizer that belongs to the checkpoint
  packing       several short examples per row
  classify      sequence classification and regression (GLUE, custom CSV/TSV/JSONL)
  tagging, ner  token classification: the family, and tag schemes / entity scoring
  qa, qa_features, squad   span QA: the family, windowed features, SQuAD scoring and decoding
  metrics       accuracy, F1, Matthews, Pearson, Spearman and each GLUE task's metrics
  glue_suite    every GLUE task from one command, one summary table
  demo          the README's word-order demo, pre-trained vs from scratch
  embedding     sentence embeddings: pooling, sharded batched inference, file modes

State, steps and restores come from the kit (bertjax.train); the data readers from
bertjax.data.tasks. Scoring is plain numpy, testable without TensorFlow or an accelerator.
"""
