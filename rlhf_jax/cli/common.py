"""What every command shares: reading datasets (``--data``/``--pairs``/``--prompts`` with
``--format``, ``--split``, ``--chat_template``), the model, the common flags, the run config from
flags, the config written next to the results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from rlhf_jax.config_args import config_to_dict


def read_rows(path: str) -> list[dict]:
    """Rows of a JSONL, JSON-list or Parquet file (errors name the file and line)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: bad JSON ({e.msg})") from None
        return list(rows)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: bad JSON ({e.msg})") from None
    if not rows:
        raise ValueError(f"{path}: the file holds no rows")
    return rows


def column(rows: list[dict], name: str, path: str) -> list[str]:
    """The string field ``name`` of every row (an error lists the rows without one)."""
    missing = [i + 1 for i, r in enumerate(rows) if not isinstance(r.get(name), str)]
    if missing:
        raise ValueError(f"{path}: rows {missing[:10]} have no string field {name!r}")
    return [r[name] for r in rows]


def write_config(out: str, config) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config_to_dict(config), f, indent=2)


def with_run(config, args):
    """The config with ``run.out_dir`` from ``--out`` and ``run.mesh`` from ``--mesh``."""
    run = dataclasses.replace(config.run, out_dir=args.out)
    if getattr(args, "mesh", None):
        from rlhf_jax.sharding import MeshConfig

        run = dataclasses.replace(run, mesh=MeshConfig.from_string(args.mesh))
    if getattr(args, "distributed", False):
        import jax

        jax.distributed.initialize()  # before any device use; auto-detected on TPU pods, SLURM, MPI
    return dataclasses.replace(config, run=run)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local Hugging Face folder (config.json, *.safetensors, tokenizer)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    p.add_argument("--config", help="JSON file of config values (flags override it)")
    p.add_argument("--mesh", help="device mesh, e.g. data=2,fsdp=2,tensor=2 (-1 fills one axis); default one device")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (one process per host on a pod)")


def add_data_flags(p: argparse.ArgumentParser) -> None:
    """``--format``, ``--split`` and ``--chat_template``: how a stage reads its dataset (see
    :class:`rlhf_jax.data.DataConfig`); any command that reads a dataset adds them."""
    p.add_argument("--format", default=None, metavar="FORMAT",
                   help="force the dataset format instead of detecting it from the fields: language_modeling, "
                        "prompt_only, prompt_completion, preference, implicit_preference, optionally prefixed "
                        "standard_ or conversational_ (e.g. prompt_only reads the prompts of a preference file)")
    p.add_argument("--split", default=None, help="the split of a save_to_disk folder holding a DatasetDict")
    p.add_argument("--chat_template", default=None, metavar="FILE.jinja",
                   help="a Jinja chat template for conversational data, overriding (or supplying) the tokenizer's; "
                        "it is saved with the tokenizer of every model this command writes")


def data_config(args):
    """The :class:`rlhf_jax.data.DataConfig` of ``--format``, ``--split``, ``--chat_template``."""
    from rlhf_jax.data import DataConfig

    return DataConfig(format=getattr(args, "format", None), split=getattr(args, "split", None),
                      chat_template=getattr(args, "chat_template", None))


def load_data(args, attr: str, *, field: str | None = None):
    """The rows of the dataset named by ``args.<attr>`` (a JSONL/JSON/Parquet file or a
    ``save_to_disk`` folder, ``--split`` applied), errors naming the file and row. ``field``: the
    prompts are in this field instead of ``prompt`` (``--prompt-field``)."""
    from rlhf_jax.data import DataError, load_rows

    path = getattr(args, attr)
    rows = load_rows(path, split=getattr(args, "split", None))
    if not len(rows):  # refused before the model is read or anything is written
        raise DataError(f"{rows.source}: the dataset holds no rows; give --{attr} a file with one example per row")
    return prompt_rows(rows, field)


def prompt_rows(rows, field: str | None):
    """``rows`` with the prompts of ``field`` moved to ``prompt`` (``--prompt-field``); ``rows``
    itself when ``field`` is ``None`` or ``"prompt"``."""
    from rlhf_jax.data import DataError, Rows

    if field is None or field == "prompt":
        return rows
    renamed = []
    for i, row in enumerate(rows):
        if row.get(field) is None:
            raise DataError(f"{rows.where(i)}: no field {field!r} (--prompt-field {field})")
        renamed.append({"prompt": row[field]})
    return Rows(tuple(renamed), rows.source, rows.lines)


def load_model(args, *, dtype: str | None = None):
    """``(model_config, params, tokenizer)`` of ``--model``; ``--chat_template`` becomes the
    tokenizer's template, so it travels with every tokenizer the command saves."""
    from rlhf_jax.data import resolve_chat_template
    from rlhf_jax.model import load_pretrained

    mc, params, tok = load_pretrained(args.model, dtype=dtype or args.dtype)
    if getattr(args, "chat_template", None):
        tok.chat_template = resolve_chat_template(tok, args.chat_template).text
    return mc, params, tok


def chat_template_of(tokenizer, args):
    """The chat template in use (``--chat_template`` or the tokenizer's), or None."""
    from rlhf_jax.data import resolve_chat_template

    return resolve_chat_template(tokenizer, getattr(args, "chat_template", None))


def stop_ids(args, tokenizer, model_config, report) -> tuple[int, ...]:
    """Where generation stops for a dataset read as ``report`` says: the model's and tokenizer's EOS,
    and the chat template's end of turn when the data is conversational."""
    from rlhf_jax.data import stop_token_ids

    template = chat_template_of(tokenizer, args) if report.format.startswith("conversational") else None
    return stop_token_ids(tokenizer, model_config, template)


def add_reward_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
    """``--reward FOLDER`` and ``--reward_fn module:function[:weight]`` (repeatable)."""
    p.add_argument("--reward", required=False,
                   help="reward folder: one written by `rlhf-jax reward` (over --model's base), or a Hugging Face "
                        "*ForSequenceClassification folder (detected from its config.json; shares --model's base "
                        "when its body has the same weights)" + ("" if not required else
                                                                 "; --reward and/or --reward_fn is required"))
    p.add_argument("--reward_fn", "--reward-fn", dest="reward_fn", action="append", default=[],
                   metavar="MODULE:FUNCTION[:WEIGHT]",
                   help="a Python reward fn(prompts, completions) -> one float per completion (a module importable "
                        "from the working directory, or path/to/file.py:function); repeatable; with --reward or "
                        "several, the score is the weighted sum (weight default 1)")
