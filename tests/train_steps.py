"""Running the production train step in tests, as the pre-training loop does."""

from bertjax import multihost
from bertjax import train


def run_steps(fns: train.StepFns, state, batches: list[dict]):
    """One step per host batch: ``train.jit_train_step`` fed by ``multihost.global_batch``.

    Args:
      fns: from ``train.build``.
      state: the train state to start from.
      batches: host batches (numpy dicts), all of the first one's shapes.

    Returns:
      (the final state, the loss of each step as a float, the jitted step).
    """
    step = train.jit_train_step(fns, batches[0])
    shardings = train.batch_shardings(fns, batches[0])
    losses = []
    for b in batches:
        state, metrics = step(state, multihost.global_batch(b, shardings))
        losses.append(float(metrics["loss"]))
    return state, losses, step
