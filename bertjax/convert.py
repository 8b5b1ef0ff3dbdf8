"""Convert checkpoints: ``python -m bertjax.convert``.

  --from=hf --input=HF_DIR --output=WORKDIR   config.json + model.safetensors (or .bin)
  --from=tf --input=TF_DIR --output=WORKDIR   google-research/bert: bert_config.json + *.ckpt
  --to=hf --input=WORKDIR --output=HF_DIR     for transformers: BertForPreTraining (a
                                              pre-training run, an import), a fine-tuning as
                                              BertFor{SequenceClassification,TokenClassification,
                                              QuestionAnswering} with its head (a mean-pooling
                                              classifier: trust_remote_code=True); tokenizer too

An imported WORKDIR is usable as ``--config.init_from=WORKDIR`` of bertjax.pretrain. Kept short
on purpose: the work is in bertjax/interop/.
"""

from absl import flags

from bertjax import cli
from bertjax import console
from bertjax import lock
from bertjax import progress

_DEBUG = cli.define_debug_flag()
_FROM = flags.DEFINE_enum("from", None, ["hf", "tf"], "Import this checkpoint format.")
_TO = flags.DEFINE_enum("to", None, ["hf"], "Export a bertjax workdir to this format.")
_INPUT = flags.DEFINE_string("input", None, "Checkpoint directory (import) or workdir (export).")
_OUTPUT = flags.DEFINE_string("output", None, "New directory to write (must not exist).")
_LOWER = flags.DEFINE_bool("do_lower_case", None, "Tokenizer casing when the checkpoint does "
                           "not say it (tokenizer_config.json); True for uncased models.")


def _print_import(s) -> None:
    r = s.report
    print(f"imported {len(r.used)} tensors into {s.workdir} "
          f"({s.cfg.num_layers} layers, hidden {s.cfg.hidden_size}, vocab {s.cfg.vocab_size})")
    print(f"  unused tensors ({len(r.unused)}): {r.unused}")
    print(f"  ignored optimizer/bookkeeping variables ({len(s.ignored)}): {s.ignored}")
    print(f"  skipped buffers ({len(r.buffers)}): {r.buffers}")
    print(f"  missing, initialised fresh ({len(r.missing)}): {r.missing}")
    casing = {None: "unknown (pass --do_lower_case)", True: "uncased", False: "cased"}
    print(f"  tokenizer: {casing[s.do_lower_case]}")
    print(f"use it with: python -m bertjax.pretrain --config.init_from={s.workdir}")


def _print_export(s) -> None:
    if s.skipped:
        print(f"warning: --input={_INPUT.value}: passed over step directories "
              f"{', '.join(s.skipped)}; exported step {s.step}", flush=True)
    cfg = s.exported.cfg
    print(f"exported step {s.step} of {_INPUT.value} ({s.kind}, {cfg.num_layers} layers, hidden "
          f"{cfg.hidden_size}) to {s.output} for transformers.{s.exported.architecture}"
          + (f" (no tokenizer files: {s.tokenizer})" if s.tokenizer else ""))
    if s.exported.left_out:
        print(f"note: {s.exported.left_out}")
    if s.exported.load:
        print(f"load: {s.exported.load}")


def main(argv):
    cli.start(argv, "use --flag=value")
    if (_FROM.value is None) == (_TO.value is None):
        cli.fail("give exactly one of --from=hf|tf (import) or --to=hf (export)")
    if not _INPUT.value or not _OUTPUT.value:
        cli.fail("--input and --output are both required")
    from bertjax.interop import checkpoints  # after flag parsing: jax starts here

    with cli.input_errors(_DEBUG.value, checkpoints.ConvertError), \
            lock.hold(_OUTPUT.value, inside=False, what="--output"):
        # the bars show after a second: a refused input draws none
        if _FROM.value:
            console.log_to(_OUTPUT.value, later=True)  # the imported workdir keeps the log
            with progress.bar(checkpoints.IMPORT_STAGES, "stage", "import", delay=1) as bar:
                summary = checkpoints.import_checkpoint(_FROM.value, _INPUT.value,
                                                        _OUTPUT.value, _LOWER.value, bar=bar)
            _print_import(summary)
        else:
            with progress.bar(checkpoints.EXPORT_STAGES, "stage", "export", delay=1) as bar:
                summary = checkpoints.export(_INPUT.value, _OUTPUT.value, bar=bar)
            _print_export(summary)


if __name__ == "__main__":
    cli.run(main)
