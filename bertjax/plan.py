"""Plan a pre-training run before launching it: compile its real train step for a TPU slice
(or this host's CPU devices) and report memory per device, whether it fits, what to turn when
it does not, the compiler's step-time estimate and the collectives in the step.

    python -m bertjax.plan --config=configs/bert_large.py:phase=2 --topology=v5e:16x16 \\
        [--config.mesh.fsdp=4 --config.mesh.data=-1 --config.accum_steps=32 ...]

TPU slices need libtpu (pip install 'bertjax[tpu]'), not a TPU. Nothing is allocated: the state
and batch are shapes with shardings. Exit status 0 when it fits, 1 when it does not, 2 for bad
input. Kept short on purpose: the work is in bertjax/bench/plan.py.
"""

import os
import sys

# Before JAX starts: compile for the named topology, never take this host's accelerators (on a
# TPU VM that a run is using, or with libtpu installed on a machine without TPUs).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

from bertjax import cli  # noqa: E402

_CONFIG = cli.define_config_file("bert_tiny.py", "Run config file (configs/*.py[:args]).")
_DEBUG = cli.define_debug_flag()
_TOPOLOGY = flags.DEFINE_string(
    "topology", "cpu", "What to compile for: a TPU slice as GENERATION:SHAPE (v4:2x2x2, "
    "v5e:16x16, v5p:4x4x4, v6e:8x8, tpu7x:2x2x1; needs libtpu) or cpu / cpu:N (this host).")
_SEARCH = flags.DEFINE_bool("search", True, "When it does not fit, compile with accum_steps, "
                            "model.remat and mesh.fsdp changed to find values that fit.")
_MAX_TRIES = flags.DEFINE_integer("max_tries", 8, "At most this many extra compiles for "
                                  "--search.")
_ESTIMATE = flags.DEFINE_bool("estimate", False, "For a step with loops (accum_steps > 1, "
                              "scan_layers), also time it from loop-free 1- and 2-layer "
                              "compiles and the optimizer update alone: a second estimate "
                              "beside the cycles one (TPU only; three more compiles).")
_SPEED = flags.DEFINE_bool("speed", False, "Also search for speed: compile the step with the "
                           "rows per device a micro-batch, the dropout RNG, the data/fsdp "
                           "split, remat and the attention implementation changed, and print "
                           "the fastest that fit by the compiler's step time, with the "
                           "--config overrides that give them (TPU only; at most --max_tries "
                           "compiles).")
_ROW = flags.DEFINE_bool("row", False, "Also print the plan as one markdown table row "
                         "(docs/plan.md).")


def main(argv):
    cli.start(argv)
    topology = _TOPOLOGY.value
    # cpu:N: N devices, set before JAX's CPU backend starts
    if topology.startswith("cpu:") and topology[4:].isdigit() and int(topology[4:]) >= 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                                   f"platform_device_count={topology[4:]}").strip()
    from bertjax import config as config_lib
    from bertjax.bench import plan as plan_lib  # jax starts here

    with cli.input_errors(_DEBUG.value, plan_lib.PlanError):
        config = cli.config_value(_CONFIG)
        target = plan_lib.target(topology)
        if _MAX_TRIES.value < 0:
            raise plan_lib.PlanError(f"--max_tries={_MAX_TRIES.value}; expected >= 0")
        if _SPEED.value and target.platform != "tpu":
            raise plan_lib.PlanError(f"--speed on --topology={topology}: only the TPU compiler "
                                     "estimates a step's time; name a TPU slice such as "
                                     "v5e:16x16")
        try:
            plan = plan_lib.make_plan(config, target, _SEARCH.value, _MAX_TRIES.value,
                                      estimate=_ESTIMATE.value)
        except config_lib.ConfigError as e:
            raise config_lib.ConfigError(f"{e} (for {target.name}: {len(target.devices)} "
                                         "devices)") from None
    name = " ".join(a for a in sys.argv[1:] if a.startswith("--config"))  # as given
    print(plan_lib.format_plan(plan, name), flush=True)
    if _SPEED.value:
        from bertjax.bench import search
        found = search.search_speed(plan.first.config, target, _MAX_TRIES.value, plan.first)
        print(search.format_search(found), flush=True)
    if _ROW.value:
        print(plan_lib.markdown_row(plan, name), flush=True)
    raise SystemExit(0 if plan.fits else 1)


if __name__ == "__main__":
    cli.run(main)
