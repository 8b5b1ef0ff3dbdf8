"""Fine-tune on SQuAD v1.1 or v2.0 (extractive question answering).

Usage:
  python -m bertjax.finetune --config=configs/squad.py --config.init_from=runs/base \\
      --config.data.train=squad/train-v1.1.json --config.data.dev=squad/dev-v1.1.json \\
      --workdir=runs/squad
  python -m bertjax.finetune --config=configs/squad.py:version=2.0 --config.init_from=... \\
      --config.data.tfds=squad/v2.0 --workdir=runs/squad2   # a prepared TFDS dataset

Reported: exact and f1 (official normalisation; f1 picks the kept checkpoint), for v2.0 also
HasAns/NoAns and the best null threshold on dev (pass it back as --config.data.null_threshold).
Predictions: <workdir>/predictions/dev.json (id -> answer, "" = no answer), and for v2.0
dev_null_odds.json. ``runlocal`` makes a short smoke run (30 steps, batch 16, seq 128).
"""

from bertjax.config import ConfigError, parse_arg
from bertjax.finetuning.defaults import finetune_config


def get_config(arg: str | None = None):
    args = parse_arg(arg, version="1.1", runlocal=False)
    if args.version not in ("1.1", "2.0"):
        raise ConfigError(f"config argument version={args.version!r}; expected 1.1 or 2.0 "
                          "(e.g. configs/squad.py:version=2.0)")
    c = finetune_config(f"squad_v{args.version}")
    c.family = "qa"
    c.data.version_2 = args.version == "2.0"  # questions may have no answer
    c.data.doc_stride = 128  # context tokens between the starts of a long context's windows
    c.data.max_query_length = 64  # question tokens kept
    c.data.max_answer_length = 30  # longest answer decoded, in tokens
    c.data.n_best = 20  # candidate spans kept per question while decoding
    c.data.null_threshold = 0.0  # v2.0: "" when null score - best span score exceeds this
    c.optim.lr = 3e-5
    c.num_epochs = 2.0
    c.global_batch_size = 32
    c.eval_batch_size = 64
    c.max_seq_length = 384
    if args.runlocal:
        c.total_steps, c.global_batch_size, c.max_seq_length = 30, 16, 128
        c.data.doc_stride, c.data.max_query_length = 64, 32
    return c
