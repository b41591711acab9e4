"""Build (or reload) a whole toy world on disk: prompts, SFT corpus, tokenizer, toxicity classifier.

Layout of ``out_dir``::

    world_config.json        the WorldConfig used
    prompts_train.jsonl      {prompt_id, family, topic, subject, text} per line
    prompts_held_out.jsonl   same, never used for SFT (evaluation prompts)
    sft_corpus.jsonl         {prompt_id, prompt, completion, kind} per line (train prompts only)
    tokenizer/               Hugging Face tokenizer folder (AutoTokenizer.from_pretrained)
    toxicity_classifier.json ToxicityClassifier.save (absent if config.toxicity is None)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from rlhf_jax.toyworld.corpus import (
    CorpusConfig,
    SFTExample,
    load_corpus,
    make_sft_corpus,
    save_corpus,
)
from rlhf_jax.toyworld.prompts import (
    Prompt,
    load_prompts,
    make_prompts,
    save_prompts,
    split_prompts,
)
from rlhf_jax.toyworld.tokenizer import save_tokenizer, train_tokenizer
from rlhf_jax.toyworld.toxicity import ToxicityClassifier, ToxicityConfig, train_toxicity_classifier


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Everything that determines a toy world."""

    seed: int = 0
    """Seed of the prompt sample and of the train / held-out split."""
    n_prompts: int = 300
    """Distinct prompts drawn from the world's 324."""
    held_out_fraction: float = 0.2
    """Share of prompts (per family) kept out of SFT for evaluation."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """The SFT corpus (its own seed)."""
    toxicity: ToxicityConfig | None = field(default_factory=ToxicityConfig)
    """The toxicity classifier (its own seed); ``None`` skips it."""


@dataclass(frozen=True, kw_only=True)
class World:
    """A built toy world: where its files are and the objects they hold."""

    config: WorldConfig
    """The config it was built from."""
    out_dir: Path
    """Folder of the world."""
    tokenizer_dir: Path
    """Hugging Face tokenizer folder."""
    train_prompts_path: Path
    """JSONL of the training prompts."""
    held_out_prompts_path: Path
    """JSONL of the held-out prompts."""
    corpus_path: Path
    """JSONL of the SFT corpus."""
    toxicity_path: Path | None
    """JSON of the toxicity classifier, or ``None``."""
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    """The tokenizer."""
    train_prompts: list[Prompt] = field(repr=False)
    """Training prompts (SFT, labeling, PPO)."""
    held_out_prompts: list[Prompt] = field(repr=False)
    """Held-out prompts (evaluation)."""
    corpus: list[SFTExample] = field(repr=False)
    """The SFT demonstrations."""
    toxicity: ToxicityClassifier | None = field(repr=False)
    """The toxicity classifier, or ``None``."""


def _paths(out: Path, with_toxicity: bool) -> dict[str, Path | None]:
    return {
        "tokenizer_dir": out / "tokenizer",
        "train_prompts_path": out / "prompts_train.jsonl",
        "held_out_prompts_path": out / "prompts_held_out.jsonl",
        "corpus_path": out / "sft_corpus.jsonl",
        "toxicity_path": out / "toxicity_classifier.json" if with_toxicity else None,
    }


def build_world(
    out_dir: str | Path, *, config: WorldConfig = WorldConfig(), verbose: bool = False
) -> World:
    """Generate the world of ``config`` and write it to ``out_dir`` (see the module docstring)."""
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if verbose:
            print(f"[toyworld {time.perf_counter() - t0:5.1f}s] {msg}", flush=True)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = _paths(out, config.toxicity is not None)
    prompts = make_prompts(config.n_prompts, seed=config.seed)
    train, held_out = split_prompts(
        prompts, held_out_fraction=config.held_out_fraction, seed=config.seed
    )
    save_prompts(paths["train_prompts_path"], train)
    save_prompts(paths["held_out_prompts_path"], held_out)
    say(f"{len(train)} train and {len(held_out)} held-out prompts")
    corpus = make_sft_corpus(train, config=config.corpus)
    save_corpus(paths["corpus_path"], corpus)
    say(f"SFT corpus: {len(corpus)} examples")
    tokenizer = train_tokenizer(f"{ex.prompt} {ex.completion}" for ex in corpus)
    save_tokenizer(tokenizer, paths["tokenizer_dir"])
    say(f"tokenizer: {len(tokenizer)} tokens")
    toxicity = None
    if config.toxicity is not None:
        toxicity = train_toxicity_classifier(config=config.toxicity)
        toxicity.save(paths["toxicity_path"])
        say(f"toxicity classifier: held-out accuracy {toxicity.metrics['held_out_accuracy']:.3f}")
    (out / "world_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return World(config=config, out_dir=out, tokenizer=tokenizer, train_prompts=train,
                 held_out_prompts=held_out, corpus=corpus, toxicity=toxicity,
                 **paths)  # type: ignore[arg-type]  # fmt: skip


def load_world(out_dir: str | Path) -> World:
    """Read a world written by :func:`build_world` (nothing is regenerated)."""
    out = Path(out_dir)
    raw = json.loads((out / "world_config.json").read_text())
    config = WorldConfig(
        seed=raw["seed"],
        n_prompts=raw["n_prompts"],
        held_out_fraction=raw["held_out_fraction"],
        corpus=CorpusConfig(**raw["corpus"]),
        toxicity=None if raw["toxicity"] is None else ToxicityConfig(**raw["toxicity"]),
    )
    paths = _paths(out, config.toxicity is not None)
    return World(
        config=config,
        out_dir=out,
        # Not AutoTokenizer: it imports torch when torch is installed.
        tokenizer=PreTrainedTokenizerFast.from_pretrained(
            paths["tokenizer_dir"], local_files_only=True
        ),
        train_prompts=load_prompts(paths["train_prompts_path"]),
        held_out_prompts=load_prompts(paths["held_out_prompts_path"]),
        corpus=load_corpus(paths["corpus_path"]),
        toxicity=None if paths["toxicity_path"] is None
        else ToxicityClassifier.load(paths["toxicity_path"]),
        **paths,  # type: ignore[arg-type]
    )
