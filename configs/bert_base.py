"""bert_base: 12 layers, 768 hidden, 12 heads (110M), with BERT's two-phase LAMB recipe (see config.two_phase_config).

Usage: --config=configs/bert_base.py:phase=2[,runlocal] --config.init_from=PHASE1_WORKDIR ...
"""

from bertjax.config import two_phase_config


def get_config(arg: str | None = None):
    return two_phase_config("base", arg)
