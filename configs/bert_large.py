"""bert_large: 24 layers, 1024 hidden, 16 heads (340M), with BERT's two-phase LAMB recipe (see config.two_phase_config).

Usage: --config=configs/bert_large.py:phase=2[,runlocal] --config.init_from=PHASE1_WORKDIR ...
"""

from bertjax.config import two_phase_config


def get_config(arg: str | None = None):
    return two_phase_config("large", arg)
