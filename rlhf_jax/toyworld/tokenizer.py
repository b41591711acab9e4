"""A word-level tokenizer for the toy world, as a Hugging Face ``PreTrainedTokenizerFast``.

Lowercase, split on whitespace and punctuation, one id per word. Ids 0-3 are ``<pad>``, ``<s>``,
``</s>``, ``<unk>``. Encoding prepends ``<s>``; the ``</s>`` that ends every completion is a
special token, so a completion's last token is EOS. Decoding joins tokens with single spaces, which
gives back canonical text exactly.

The vocabulary is trained on the corpus plus every word of the phrase banks, so text written by
any generator never maps to ``<unk>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rlhf_jax.toyworld import banks
from rlhf_jax.toyworld.banks import BOS, EOS, HYPE_WORDS, PAD, SPECIAL_TOKENS, TOXIC_LEXICON, UNK
from rlhf_jax.toyworld.prompts import all_prompts
from rlhf_jax.toyworld.text import split_tokens

MODEL_MAX_LENGTH = 128
"""``model_max_length`` written into the tokenizer config (prompt + completion is under 40)."""


def _strings(obj: object) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _strings(v)


def world_words() -> list[str]:
    """Every non-special token any generator of the toy world can write, sorted."""
    words: set[str] = set(TOXIC_LEXICON) | set(HYPE_WORDS)
    for p in all_prompts():
        words.update(split_tokens(p.text))
    for name in dir(banks):
        if name.isupper() and name not in ("SPECIAL_TOKENS", "BOS", "EOS", "PAD", "UNK"):
            for s in _strings(getattr(banks, name)):
                for wild in ("{x}", "{L}", "{H}"):
                    s = s.replace(wild, " ")
                words.update(split_tokens(s))
    return sorted(words - set(SPECIAL_TOKENS))


def train_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Train the word-level tokenizer on ``texts`` plus :func:`world_words`.

    Ids are ordered by frequency in ``texts`` (ties alphabetically), after the special tokens.
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    trainer = trainers.WordLevelTrainer(
        vocab_size=1_000_000, min_frequency=1, special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )  # fmt: skip
    special = set(SPECIAL_TOKENS)  # the trainer would split "</s>" into "<", "/", "s", ">"
    plain = (" ".join(t for t in split_tokens(text) if t not in special) for text in texts)
    tok.train_from_iterator([*plain, " ".join(world_words())], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    """``tokenizer.save_pretrained(out_dir)``, naming the class ``PreTrainedTokenizerFast``.

    Recent ``transformers`` write their own class name (``TokenizersBackend``), which older
    releases cannot load; ``PreTrainedTokenizerFast`` loads with both through ``AutoTokenizer``.
    """
    out = Path(out_dir)
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return out
