"""A built-in synthetic stand-in for the seeds' detoxification lab.

Small enough that a tiny Llama-style model trained from scratch on CPU learns it in minutes, rich
enough that RLHF has something to fix: the SFT model is capable but sometimes toxic, simulated
labelers rank its samples with a hidden gold rubric plus noise, and a bag-of-words toxicity
classifier measures the result. Everything is deterministic from seeds.

- :mod:`~rlhf_jax.toyworld.prompts`: prompts in four families (product, hotel, advice, animals).
- :mod:`~rlhf_jax.toyworld.completions`: completions of known kinds (informative, neutral, toxic,
  hype, repeated hype, broken, empty, unfinished).
- :mod:`~rlhf_jax.toyworld.corpus`: the SFT corpus, kinds mixed at known rates.
- :mod:`~rlhf_jax.toyworld.tokenizer`: a word-level ``PreTrainedTokenizerFast``.
- :mod:`~rlhf_jax.toyworld.gold`: the hidden gold rubric (labelers and evaluation only).
- :mod:`~rlhf_jax.toyworld.labelers`: simulated labelers writing ranked-feedback records.
- :mod:`~rlhf_jax.toyworld.toxicity`: the toxicity classifier.
- :mod:`~rlhf_jax.toyworld.topics`: is a completion on its prompt's topic family (evaluation).
- :mod:`~rlhf_jax.toyworld.world`: ``build_world`` writes all of it to a folder.
"""

from rlhf_jax.toyworld.banks import (
    BOS,
    EOS,
    FAMILIES,
    HYPE_WORDS,
    PAD,
    SPECIAL_TOKENS,
    TOXIC_LEXICON,
    UNK,
)
from rlhf_jax.toyworld.completions import (
    COMPLETION_KINDS,
    MAX_WORDS,
    MIN_WORDS,
    sample_completion,
    sample_completions,
)
from rlhf_jax.toyworld.corpus import (
    CorpusConfig,
    SFTExample,
    kind_counts,
    load_corpus,
    make_sft_corpus,
    save_corpus,
)
from rlhf_jax.toyworld.gold import (
    GoldDetails,
    GoldWeights,
    gold_details,
    gold_score,
    hype_count,
    lexicon_toxicity,
)
from rlhf_jax.toyworld.labelers import (
    CRITERION,
    INSTRUCTIONS_ID,
    LabelerConfig,
    agreement_with_gold,
    label_prompts,
)
from rlhf_jax.toyworld.prompts import (
    Prompt,
    all_prompts,
    as_prompt,
    load_prompts,
    make_prompts,
    prompt_from_id,
    prompt_from_text,
    save_prompts,
    split_prompts,
)
from rlhf_jax.toyworld.text import canonicalize, completion_words, split_tokens
from rlhf_jax.toyworld.tokenizer import save_tokenizer, train_tokenizer, world_words
from rlhf_jax.toyworld.topics import (
    FUNCTION_WORDS,
    completion_family,
    on_topic,
    on_topic_scores,
    prompt_family,
    topic_markers,
    topic_votes,
)
from rlhf_jax.toyworld.toxicity import (
    ToxicityClassifier,
    ToxicityConfig,
    make_toxicity_data,
    train_toxicity_classifier,
)
from rlhf_jax.toyworld.world import World, WorldConfig, build_world, load_world

__all__ = [
    "BOS",
    "COMPLETION_KINDS",
    "CRITERION",
    "EOS",
    "FAMILIES",
    "FUNCTION_WORDS",
    "HYPE_WORDS",
    "INSTRUCTIONS_ID",
    "MAX_WORDS",
    "MIN_WORDS",
    "PAD",
    "SPECIAL_TOKENS",
    "TOXIC_LEXICON",
    "UNK",
    "CorpusConfig",
    "GoldDetails",
    "GoldWeights",
    "LabelerConfig",
    "Prompt",
    "SFTExample",
    "ToxicityClassifier",
    "ToxicityConfig",
    "World",
    "WorldConfig",
    "agreement_with_gold",
    "all_prompts",
    "as_prompt",
    "build_world",
    "canonicalize",
    "completion_family",
    "completion_words",
    "gold_details",
    "gold_score",
    "hype_count",
    "kind_counts",
    "label_prompts",
    "lexicon_toxicity",
    "load_corpus",
    "load_prompts",
    "load_world",
    "make_prompts",
    "make_sft_corpus",
    "make_toxicity_data",
    "on_topic",
    "on_topic_scores",
    "prompt_family",
    "prompt_from_id",
    "prompt_from_text",
    "sample_completion",
    "sample_completions",
    "save_corpus",
    "save_prompts",
    "save_tokenizer",
    "split_prompts",
    "split_tokens",
    "topic_markers",
    "topic_votes",
    "train_tokenizer",
    "train_toxicity_classifier",
    "world_words",
]
