"""Import and export of checkpoints in other formats.

  mapping      HF transformers' BERT parameter names <-> bertjax's parameter tree (both ways)
  tf1          google-research/bert TF1 checkpoints read without TensorFlow's graph code
  checkpoints  whole workdirs: import an HF / TF1 checkpoint as a bertjax run, export any run
               (pre-training, import, fine-tuning with its task head) to HF
  hf_tokenizer bertjax's sentencepiece tokenizer as a transformers tokenizer.json
  hf_modeling  transformers code for mean-pooling classifiers, copied into their exports (never
               imported by bertjax: it needs torch)

The command is ``python -m bertjax.convert``.
"""
