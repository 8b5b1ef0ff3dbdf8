"""bertjax: BERT pre-training, resume and fine-tuning in JAX/Flax on TPU and GPU pods."""

__version__ = "0.1.0"
