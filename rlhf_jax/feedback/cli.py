"""Command line: ``feedback validate | stats | to-pairs``.

Standalone: ``python -m rlhf_jax.feedback.cli validate data.jsonl``. Inside a larger command,
`add_feedback_subcommands` registers ``feedback`` with the same three sub-commands; each sets
``func`` (call ``args.func(args)``, which returns the exit code).

Exit codes: 0 success; 1 invalid records (``validate``), a `FeedbackError` in a strict read, a
file with no record, or a conversion that gives no pair; 2 usage errors: bad arguments
(argparse), a file that cannot be read, an output path of unknown format. Errors are one line on
stderr (``invalid: FILE:LINE: field 'F': reason`` or ``error: ...``), never a traceback.

``validate`` reads leniently and lists every bad record (``--strict`` stops at the first);
``stats`` and ``to-pairs`` are strict unless ``--lenient`` (then bad records are skipped and
listed).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rlhf_jax.feedback.consensus import METHODS, ConsensusConfig
from rlhf_jax.feedback.errors import FeedbackError, ValidationReport
from rlhf_jax.feedback.pairs import binary_to_pairs, feedback_to_pairs
from rlhf_jax.feedback.stats import binary_stats, pairwise_stats, ranked_stats
from rlhf_jax.feedback.storage import read_feedback, records_to_dataset, save_pairs
from rlhf_jax.feedback.validate import KINDS


class _Usage(Exception):
    """A usage problem (unreadable input, unknown output format): exit status 2."""


def _read(args: argparse.Namespace, *, strict: bool):
    try:
        return read_feedback(args.file, kind=args.kind, strict=strict)
    except OSError as e:
        raise _Usage(f"{args.file}: cannot read: {e.strerror or e}") from None


def _guarded(command):
    """Run ``command(args)``: a `FeedbackError` prints ``invalid: ...`` and gives 1, a usage
    problem prints ``error: ...`` and gives 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except FeedbackError as e:
            print(f"invalid: {e}", file=sys.stderr)
            return 1
        except _Usage as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    run.__doc__ = command.__doc__
    return run


def _print_skipped(report: ValidationReport) -> None:
    if not report.ok:
        print(report.summary(), file=sys.stderr)


def _consensus_config(args: argparse.Namespace) -> ConsensusConfig:
    try:
        return ConsensusConfig(method=args.method, min_agreement=args.min_agreement,
                               leave_one_out=args.leave_one_out)
    except ValueError as e:
        raise _Usage(str(e)) from None


@_guarded
def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a file; print a summary and every bad record."""
    _, report = _read(args, strict=args.strict)
    print(report.summary())
    if not report.ok:
        print("skipped records by field: " + ", ".join(
            f"{k} ({v})" for k, v in report.reasons().items()))
    return 0 if report.ok else 1


@_guarded
def cmd_stats(args: argparse.Namespace) -> int:
    """Print counts, ties, flags and the labeler agreement table."""
    records, report = _read(args, strict=not args.lenient)
    _print_skipped(report)
    print(f"{report.source}: {report.kind} feedback, {report.n_valid} valid records"
          + (f", {report.n_skipped} skipped" if report.n_skipped else ""))
    if report.kind == "ranked":
        print(ranked_stats(records, config=_consensus_config(args)).format())
    elif report.kind == "binary":
        print(binary_stats(records))
    else:
        print(pairwise_stats(records))
    return 0


@_guarded
def cmd_to_pairs(args: argparse.Namespace) -> int:
    """Convert a feedback file into a pairs dataset (Parquet or JSONL by extension)."""
    if not args.out.lower().endswith((".parquet", ".jsonl", ".json")):
        raise _Usage(f"--out {args.out}: cannot tell the format: use .parquet, .jsonl or .json")
    records, report = _read(args, strict=not args.lenient)
    _print_skipped(report)
    if report.kind == "ranked":
        ds, pairs_report = feedback_to_pairs(records, config=_consensus_config(args))
        summary = pairs_report.summary()
    elif report.kind == "binary":
        ds, pairs_report = binary_to_pairs(records)
        summary = pairs_report.summary()
    else:
        ds = records_to_dataset(records)
        summary = f"pairs: {len(ds)}"
    if len(ds) == 0:
        print(summary.replace("\n", "; "), file=sys.stderr)
        print(f"invalid: {args.file}: no preference pair (every pair tied, flagged or without "
              f"both an up and a down); nothing written to {args.out}", file=sys.stderr)
        return 1
    save_pairs(ds, args.out)
    print(summary)
    print(f"wrote {len(ds)} pairs to {args.out}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="feedback JSONL file")
    p.add_argument("--kind", choices=("auto", *KINDS), default="auto",
                   help="record kind (default auto: each record's kind from its keys; records of "
                        "a kind other than the file's most common one are errors)")


def _add_consensus(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default="borda",
                   help="consensus: borda (mean rank) or copeland (pairwise majority)")
    p.add_argument("--min-agreement", type=float, default=None,
                   help="exclude labelers whose agreement with the consensus is below this")
    p.add_argument("--leave-one-out", action="store_true",
                   help="compare each labeler with the consensus of the others")
    p.add_argument("--lenient", action="store_true",
                   help="skip bad records (listed on stderr) instead of stopping")


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the ``validate``, ``stats`` and ``to-pairs`` sub-commands to ``parser``."""
    sub = parser.add_subparsers(dest="feedback_command", required=True, metavar="COMMAND")
    p = sub.add_parser("validate", help="check every record; list the bad ones")
    _add_common(p)
    p.add_argument("--strict", action="store_true", help="stop at the first bad record")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("stats", help="counts, ties, flags and the labeler agreement table")
    _add_common(p)
    _add_consensus(p)
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("to-pairs", help="write preference pairs (.parquet or .jsonl)")
    _add_common(p)
    _add_consensus(p)
    p.add_argument("--out", required=True, help="output file: .parquet, .jsonl or .json")
    p.set_defaults(func=cmd_to_pairs)


def add_feedback_subcommands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``feedback`` (with validate / stats / to-pairs) on a parent's sub-parsers."""
    parser = subparsers.add_parser("feedback", help="human-feedback data: validate, stats, "
                                                    "convert rankings to pairs")
    add_commands(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m rlhf_jax.feedback.cli COMMAND ...``."""
    parser = argparse.ArgumentParser(prog="python -m rlhf_jax.feedback.cli",
                                     description="Human-feedback data tools.")
    add_commands(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
