"""Command line: ``label init | add-labeler | admin-token | serve | export``.

Standalone: ``python -m rlhf_jax.label.cli serve labels.db``. Inside ``rlhf-jax``,
`add_label_subcommands` registers ``label`` with the same sub-commands; each sets ``func``
(``args.func(args)`` returns the exit code: 0 success, 1 a refused input, 2 usage errors).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Sequence

from rlhf_jax.label.ranking import LabelError

DEFAULT_URL = "http://127.0.0.1:8000"


def _link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/login/{token}"


def cmd_init(args: argparse.Namespace) -> int:
    """Create the database from completions, or from prompts + a model that samples them."""
    from rlhf_jax.label.sources import read_completions, read_prompts, sample_completions
    from rlhf_jax.label.store import LabelStore

    if bool(args.completions) == bool(args.prompts):
        raise LabelError("give either --completions FILE, or --prompts FILE with --model DIR")
    if args.completions:
        items = read_completions(args.completions)
    else:
        if not args.model:
            raise LabelError("--prompts needs --model DIR (a local Hugging Face folder)")
        from rlhf_jax.rollout import SamplingConfig

        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, top_k=args.top_k)
        items = sample_completions(args.model, read_prompts(args.prompts, field=args.prompt_field),
                                   k=args.k, sampling=sampling, seed=args.seed,
                                   batch_size=args.batch_size)
    if args.instructions:
        import hashlib

        with open(args.instructions, encoding="utf-8") as f:
            text = f.read()
        inst_id = args.instructions_id or "sha256-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    else:
        from rlhf_jax.feedback import LABELER_INSTRUCTIONS_ID, labeler_instructions

        text = labeler_instructions(args.criterion)
        inst_id = args.instructions_id or LABELER_INSTRUCTIONS_ID
    _, token = LabelStore.create(args.db, items, criterion=args.criterion, instructions=text,
                                 instructions_id=inst_id,
                                 labelers_per_prompt=args.labelers_per_prompt)
    n = sum(len(it.completions) for it in items)
    print(f"{args.db}: {len(items)} prompts, {n} completions, {args.labelers_per_prompt} "
          f"labelers per prompt, criterion {args.criterion!r}, instructions {inst_id!r}")
    print(f"admin link (shown once; `label admin-token` makes a new one): "
          f"{_link(args.base_url, token)}")
    return 0


def cmd_add_labeler(args: argparse.Namespace) -> int:
    """Add a labeler and print their login link."""
    from rlhf_jax.label.store import LabelStore

    token = LabelStore(args.db).add_labeler(args.name, new_token=args.new_token)
    print(_link(args.base_url, token))
    return 0


def cmd_admin_token(args: argparse.Namespace) -> int:
    """Replace the admin token and print the new admin link."""
    from rlhf_jax.label.store import LabelStore

    print(_link(args.base_url, LabelStore(args.db).new_admin_token()))
    return 0


def bind_warning(host: str) -> str | None:
    """The warning to print when ``host`` is not a loopback address, else None."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"warning: serving on {host}, not 127.0.0.1: anyone who can reach this machine "
            "reaches the login page, and without HTTPS the login links and cookies travel in "
            "clear text (put a TLS proxy in front and pass --secure-cookie)")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the labeling app until interrupted."""
    try:
        import uvicorn

        from rlhf_jax.label.app import create_app
    except ImportError as e:
        raise LabelError(f"label serve needs the 'label' extra ({e.name} is missing): "
                         "pip install 'rlhf_jax[label]'") from e

    app = create_app(args.db, https=args.secure_cookie)
    warning = bind_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)
    print(f"serving {args.db} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level == "info")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the ranked JSONL file (validated by the feedback module)."""
    from rlhf_jax.label.export import export_ranked
    from rlhf_jax.label.store import LabelStore

    report = export_ranked(LabelStore(args.db), args.out)
    print(report.summary())
    print(f"next: rlhf-jax feedback stats {args.out}")
    return 0


def _guard(func):
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except LabelError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    run.__doc__ = func.__doc__
    return run


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the ``init``, ``add-labeler``, ``admin-token``, ``serve``, ``export`` sub-commands."""
    sub = parser.add_subparsers(dest="label_command", required=True, metavar="COMMAND")
    p = sub.add_parser("init", help="create the labeling database")
    p.add_argument("db", help="the SQLite file to create")
    p.add_argument("--completions", help="JSONL: {prompt_id?, prompt, completions: [...]} per line")
    p.add_argument("--prompts", help="JSONL with a prompt field (and optional prompt_id)")
    p.add_argument("--prompt-field", default="prompt", help="prompt field name (default: prompt)")
    p.add_argument("--model", help="local Hugging Face folder that samples the completions")
    p.add_argument("--k", type=int, default=4, help="completions sampled per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="sample length (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1.0: off)")
    p.add_argument("--top-k", type=int, default=None, help="top-k sampling (default: off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=32, help="sampling batch size")
    p.add_argument("--criterion", default="helpfulness", help="what to rank by")
    p.add_argument("--instructions", help="markdown instructions (default: the package template "
                                          "with the criterion filled in)")
    p.add_argument("--instructions-id", help="instructions_id written to the records (default: "
                                             "the template's id, or a hash of --instructions)")
    p.add_argument("--labelers-per-prompt", type=int, default=3, help="L (default 3)")
    p.add_argument("--base-url", default=DEFAULT_URL, help="server address for printed links")
    p.set_defaults(func=_guard(cmd_init))
    p = sub.add_parser("add-labeler", help="add a labeler and print their login link")
    p.add_argument("db")
    p.add_argument("name")
    p.add_argument("--new-token", action="store_true", help="re-issue an existing labeler's link")
    p.add_argument("--base-url", default=DEFAULT_URL, help="server address for the printed link")
    p.set_defaults(func=_guard(cmd_add_labeler))
    p = sub.add_parser("admin-token", help="replace the admin link")
    p.add_argument("db")
    p.add_argument("--base-url", default=DEFAULT_URL, help="server address for the printed link")
    p.set_defaults(func=_guard(cmd_admin_token))
    p = sub.add_parser("serve", help="run the labeling web app")
    p.add_argument("db")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--secure-cookie", action="store_true", help="mark the session cookie Secure "
                                                                "(behind an HTTPS proxy)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning",
                                                             "info", "debug"),
                   help="uvicorn log level (info also logs every request)")
    p.set_defaults(func=_guard(cmd_serve))
    p = sub.add_parser("export", help="write the answers as ranked feedback JSONL")
    p.add_argument("db")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.set_defaults(func=_guard(cmd_export))


def add_label_subcommands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``label`` (init / add-labeler / admin-token / serve / export) on a parent."""
    parser = subparsers.add_parser("label", help="labeling tool: people rank completions in a "
                                                 "browser; export ranked feedback")
    add_commands(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m rlhf_jax.label.cli COMMAND ...``."""
    parser = argparse.ArgumentParser(prog="python -m rlhf_jax.label.cli",
                                     description="The labeling tool.")
    add_commands(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
