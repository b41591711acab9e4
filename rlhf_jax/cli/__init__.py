"""The ``rlhf-jax`` command: the demo, one subcommand per stage, ``feedback``, ``label``,
``evaluate`` and ``export``.

Each stage is driven by the same frozen configs as the Python API: every config field is a flag
(``--optim.learning_rate 1e-4``), ``--config FILE.json`` gives values the flags override, and the
config used is written next to the results (``config.json``). Models and tokenizers are local
Hugging Face folders; data is JSONL, a JSON list, Parquet or a ``save_to_disk`` folder in TRL's
standard or conversational formats (``--format``, ``--split``, ``--chat_template``). Nothing is
downloaded.

A mistake in the input prints one line ``error: ...`` and exits with status 2; a run that cannot
make progress (non-finite weights, losses or rewards) exits with status 1. ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rlhf_jax.cli.critic_free import add_critic_free_commands
from rlhf_jax.cli.demo import add_demo_command
from rlhf_jax.cli.dpo import add_dpo_command
from rlhf_jax.cli.evaluate import add_evaluate_command
from rlhf_jax.cli.export import add_export_command
from rlhf_jax.cli.train import add_train_commands

USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, PermissionError)
"""Exceptions that mean "fix the input" (exit 2)."""


def build_parser() -> argparse.ArgumentParser:
    from rlhf_jax.feedback.cli import add_feedback_subcommands
    from rlhf_jax.label.cli import add_label_subcommands

    parser = argparse.ArgumentParser(prog="rlhf-jax", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_demo_command(sub)
    add_train_commands(sub)
    add_critic_free_commands(sub)
    add_dpo_command(sub)
    add_feedback_subcommands(sub)
    add_label_subcommands(sub)
    add_evaluate_command(sub)
    add_export_command(sub)
    return parser


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError) and e.args:
        text = f"missing key {e.args[0]!r}"
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    from rlhf_jax.train.errors import NonFiniteError, RunError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except NonFiniteError as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except (RunError, *USER_ERRORS) as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
