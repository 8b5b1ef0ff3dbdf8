r"""Fine-tune on every GLUE task and summarise the dev scores::

    python -m bertjax.glue --glue_dir=glue_data --init_from=runs/base --workdir=runs/glue \
        [--tasks=cola,sst2,mrpc] [--config.optim.lr=2e-5 --config.num_epochs=3 ...]

Kept short on purpose: flags, then the library (bertjax/finetuning/glue_suite.py) does the work.
Each task runs in WORKDIR/<task> with the same config (configs/glue.py and the overrides);
tasks whose files are missing are skipped; finished tasks are not rerun unless --overwrite.
WORKDIR/summary.md and summary.json hold the table and the GLUE-style average. With the test
files (--predict_test, the default), WORKDIR/glue_submission.zip is the GLUE server's submission
(files also in WORKDIR/submission/; MNLI's model also predicts MNLI-mm and AX, the diagnostic
set); a task not run gets no file, and the server refuses a zip without all 11, unless
--fill_missing fills them with the majority class.
"""

import os

from absl import flags

from bertjax import cli
from bertjax import console

_CONFIG = cli.define_config_file("glue.py", "Fine-tuning config for every task (configs/glue.py); "
                                 "--config.key=value overrides apply to all tasks.")
_START_CLUSTER = cli.define_cluster_flags()
_DEBUG = cli.define_debug_flag()
_GLUE_DIR = flags.DEFINE_string("glue_dir", "", "The GLUE download: CoLA/, SST-2/, MRPC/, STS-B/,"
                                " QQP/, MNLI/, QNLI/, RTE/, WNLI/ with train.tsv, dev.tsv.")
_INIT_FROM = flags.DEFINE_string("init_from", "", "The encoder: a pre-training workdir or an "
                                 "import (default: --config.init_from).")
_WORKDIR = flags.DEFINE_string("workdir", os.path.join("runs", "glue"),
                               "Each task runs in WORKDIR/<task>; the summary goes here.")
_TASKS = flags.DEFINE_string("tasks", "", "Comma-separated subset (default: all nine).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rerun tasks that finished earlier.")
_TEST = flags.DEFINE_bool("predict_test", True, "Also predict the test files: "
                          "predictions/test.tsv per task, and the submission zip "
                          "WORKDIR/glue_submission.zip.")
_FILL = flags.DEFINE_bool("fill_missing", False, "Fill the submission files of tasks not run "
                          "(whose test and training files are in --glue_dir) with the majority "
                          "class of the training file (STS-B: the mean score), so that the zip "
                          "holds all 11 files the GLUE server requires; they score at chance.")


def main(argv):
    cli.start(argv)
    from bertjax.finetuning import glue_suite  # after flag parsing: jax starts here

    console.log_to(_WORKDIR.value, later=True)  # a suite that never got to settle its log

    config = cli.config_value(_CONFIG)
    with cli.input_errors(_DEBUG.value):
        tasks = glue_suite.parse_tasks(_TASKS.value)
        _START_CLUSTER()
        glue_suite.run_suite(config, _GLUE_DIR.value, _WORKDIR.value, tasks, _INIT_FROM.value,
                             _OVERWRITE.value, _TEST.value, _FILL.value)


if __name__ == "__main__":
    cli.run(main)
