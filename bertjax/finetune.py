r"""Fine-tune BERT on a sentence (pair) task, token tags (NER) or spans::

    python -m bertjax.finetune --config=configs/glue.py:task=sst2 --config.init_from=WORKDIR \
        --config.data.train=... --config.data.dev=... --workdir=runs/sst2
    python -m bertjax.finetune --config=configs/ner.py --config.init_from=WORKDIR \
        --config.data.train=eng.train --config.data.dev=eng.testa --workdir=runs/ner

Kept short on purpose: flags, then the library does the work (bertjax/finetuning/runner.py with the
task's family: classify.py, tagging.py, ...; bertjax/finetuning/families.py picks it).
``--eval_only`` evaluates the checkpoint a fine-tuning kept; ``--config=configs/demo.py`` runs the
README demo (pre-trained vs from scratch).
"""

import os

from absl import flags

from bertjax import cli
from bertjax import console

_CONFIG = cli.define_config_file("glue.py", "Fine-tuning config file (configs/glue.py:task=...).")
_START_CLUSTER = cli.define_cluster_flags()
_DEBUG = cli.define_debug_flag()
_WORKDIR = flags.DEFINE_string("workdir", "", "Where checkpoints, predictions and metrics go "
                               "(default runs/<task>).")
_EVAL_ONLY = flags.DEFINE_bool("eval_only", False, "Evaluate the workdir's kept checkpoint.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an earlier fine-tuning in workdir.")


def main(argv):
    cli.start(argv)
    from bertjax.finetuning import demo, families, runner  # after flag parsing: jax starts here

    config = cli.config_value(_CONFIG)
    workdir = _WORKDIR.value or os.path.join("runs", config.task)
    console.log_to(workdir, later=True)  # also when nothing trains (a finished demo reported)
    with cli.input_errors(_DEBUG.value):
        _START_CLUSTER()
        if config.task == "demo" and not _EVAL_ONLY.value:
            runner.check_settings(config)  # before the demo writes its data
            config = demo.prepare(config, workdir, _OVERWRITE.value)
        if config.compare_scratch and not _EVAL_ONLY.value:
            demo.compare(config, workdir, _OVERWRITE.value)
        else:
            family = families.get(config, workdir, _EVAL_ONLY.value)
            runner.run(config, workdir, family, _EVAL_ONLY.value, _OVERWRITE.value)


if __name__ == "__main__":
    cli.run(main)
