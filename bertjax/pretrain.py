"""Pre-train BERT: ``python -m bertjax.pretrain --config=configs/bert_tiny.py --workdir=...``.

Kept short on purpose: flags, then the library (bertjax/loop.py) does the work.
"""

from absl import flags

from bertjax import cli
from bertjax import console

_CONFIG = cli.define_config_file("bert_tiny.py", "Run config file (configs/*.py[:args]).")
_START_CLUSTER = cli.define_cluster_flags()
_DEBUG = cli.define_debug_flag()
_WORKDIR = flags.DEFINE_string("workdir", "runs/bert_tiny", "Where checkpoints and logs go.")
_ALLOW = flags.DEFINE_bool("allow_config_change", False,
                           "Resume a workdir even though its saved config differs.")
_INIT_TIMEOUT = flags.DEFINE_integer("init_timeout", 300, "Seconds to wait for all processes.")


def main(argv):
    cli.start(argv)
    from bertjax import inputs, loop  # after flag parsing: jax starts here

    console.log_to(_WORKDIR.value, later=True)  # a run that never got to settle its log

    with cli.input_errors(_DEBUG.value, inputs.InputError):
        _START_CLUSTER(timeout_s=_INIT_TIMEOUT.value)
        loop.run(cli.config_value(_CONFIG), _WORKDIR.value, _ALLOW.value)


if __name__ == "__main__":
    cli.run(main)
