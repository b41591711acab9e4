"""What every command shares: reading data files, the common flags, the run config from flags,
the config written next to the results."""

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
