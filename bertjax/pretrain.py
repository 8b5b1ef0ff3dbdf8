"""Pre-train BERT: ``python -m bertjax.pretrain --config=configs/bert_tiny.py --workdir=...``.

Kept short on purpose: flags, then the library (bertjax/loop.py) does the work.
"""

import os

from absl import app, flags, logging

from bertjax import cli
from bertjax import config as config_lib

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "bert_tiny.py")
_CONFIG = cli.define_config(os.path.normpath(_DEFAULT_CONFIG),
                            help_string="Run config file (configs/*.py[:args]).",
                            lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/bert_tiny", "Where checkpoints and logs go.")
_ALLOW = flags.DEFINE_bool("allow_config_change", False,
                           "Resume a workdir even though its saved config differs.")
_COORD = flags.DEFINE_string("coordinator_address", None,
                             "host:port of process 0 (multi-process runs; else auto-detected).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROC_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_INIT_TIMEOUT = flags.DEFINE_integer("init_timeout", 300, "Seconds to wait for all processes.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks for configuration errors.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.key=value")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bertjax import inputs
    from bertjax import loop  # after flag parsing: jax starts here
    from bertjax import multihost
    from bertjax.data.errors import DataError  # plain Python: no TensorFlow import

    try:
        multihost.initialize(_COORD.value, _NPROC.value, _PROC_ID.value, _INIT_TIMEOUT.value)
        loop.run(cli.config_value(_CONFIG), _WORKDIR.value, _ALLOW.value)
    except (config_lib.ConfigError, multihost.ClusterError, loop.NonFiniteError, DataError,
            inputs.InputError) as e:
        if _DEBUG.value:
            raise
        cli.fail(str(e))


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO; --verbosity=0 shows it
    app.run(main, flags_parser=cli.parse_flags)
