"""Benchmarks of the bertjax train step: ``python -m bertjax.bench`` (flags in __main__.py).

  __main__  the command line: flags, then runner.run, the table, the trace summary, the JSON;
  runner    one invocation: config overrides, every participant timed, the results dict;
  timing    the System type, bertjax's step and the matmul reference, the interleaved rounds;
  flops     model FLOPs of a pre-training step (one formula) and the datasheet peaks;
  compare   transformers' Flax and torch BERT as Systems (imports torch: only for --compare);
  profile   a jax.profiler trace summarised: busy share, time by kind, top kernels (its own
            command: python -m bertjax.bench.profile TRACE);
  report    peak memory, the readable table, the JSON file, errors as one line;
  ab        the scripts/bench_*.py A/B runs' shared flags, table and ratios;
  plan      the train step compiled for a TPU slice (or this host) without running it: memory,
            fit and knobs, the compiler's time estimate, collectives (python -m bertjax.plan).

Nothing here imports another module that imports it back; runner imports compare only inside
``run`` so that a JAX-only host never needs torch. The input pipeline's benchmark is a different
thing: bertjax.data.bench.
"""
