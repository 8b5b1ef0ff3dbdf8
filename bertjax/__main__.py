"""The ``bertjax`` console command: ``bertjax <command> [--flag=value ...]`` runs
``python -m bertjax.<command>`` in this process, with the same flags, help and exit codes.

    bertjax pretrain --config=bert_tiny --workdir=runs/bert_tiny
    bertjax finetune --config=demo
    bertjax <command> --help        the command's flags and its config's keys
"""

from __future__ import annotations

import runpy
import sys

# name -> (module run as __main__, one line shown by `bertjax --help`)
COMMANDS = {
    "prepare": ("bertjax.prepare", "tokenizer + sharded pre-training data from text files"),
    "pretrain": ("bertjax.pretrain", "pre-train BERT (resumes a workdir automatically)"),
    "finetune": ("bertjax.finetune", "fine-tune and evaluate: classification, pairs, "
                 "regression, NER, QA; the demo"),
    "glue": ("bertjax.glue", "every GLUE task, a summary table and the submission zip"),
    "embed": ("bertjax.embed", "sentence embeddings and similarities from an encoder"),
    "convert": ("bertjax.convert", "import HF / google-research checkpoints; export to HF"),
    "bench": ("bertjax.bench", "step time, throughput, MFU and memory of the train step"),
    "plan": ("bertjax.plan", "compile the real step for a TPU slice here: fits? step time, "
             "collectives"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: bertjax <command> [--flag=value ...]   (bertjax <command> --help for its "
             "flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if len(argv) >= 2 else sys.stderr)
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        print(f"error: no command {name!r}; expected one of {', '.join(COMMANDS)} "
              "(bertjax --help lists them)", file=sys.stderr)
        sys.exit(2)
    module = COMMANDS[name][0]
    sys.argv = [f"bertjax {name}"] + argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
