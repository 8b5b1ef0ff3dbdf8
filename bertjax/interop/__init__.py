"""Import and export of checkpoints in other formats.

  mapping      HF transformers' BERT parameter names <-> bertjax's parameter tree (both ways)
  tf1          google-research/bert TF1 checkpoints read without TensorFlow's graph code
  checkpoints  whole workdirs: import an HF / TF1 checkpoint as a bertjax run, export a run to HF

The command is ``python -m bertjax.convert``.
"""
