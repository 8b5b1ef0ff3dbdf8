"""Downstream tasks: metrics and post-processing for fine-tuning and evaluation.

Everything here is plain numpy/Python so that evaluation can run (and be tested) on a host with
neither TensorFlow nor an accelerator; the readers that feed these functions live in
bertjax.data.tasks. Modules:

  metrics  accuracy, F1, Matthews correlation, Pearson, Spearman; the GLUE task table and
           `glue_metrics(task, predictions, labels)`.
  squad    official SQuAD v1.1/v2.0 scoring, sliding windows over long contexts with the
           max-context rule, best-span decoding with n-best and the v2 no-answer rule, and the
           dev-set threshold search.
  ner      IOB1/IOB2/IOBES tags -> entity spans (conlleval semantics), entity-level
           precision/recall/F1, first-sub-token label alignment, CoNLL output.
"""
