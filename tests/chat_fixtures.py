"""Builders for tests with a user's own chat model and data: a byte-level BPE tokenizer trained with
`tokenizers` (ChatML special tokens, a ChatML template), Llama-3-style and Gemma-style templates,
a tiny random `Qwen2ForCausalLM` folder saved with the tokenizer, and small datasets in every TRL
format written as JSONL, a JSON list, Parquet and `save_to_disk` folders. Nothing is downloaded."""

from __future__ import annotations

import json
import os

CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
LLAMA3_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
GEMMA_TOKENS = ("<bos>", "<start_of_turn>", "<end_of_turn>")

# Qwen2's pre-tokenizer pattern: runs of newlines are one piece whatever follows them
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Llama 3's layout: a BOS, then per message a role header, a blank line, the trimmed content, <|eot_id|>
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")

# Gemma's layout: no system role (its text opens the first user turn), user/model turns must
# alternate (else raise_exception), the assistant is called "model"
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] + '\n\n' %}"
         "{% set rest = messages[1:] %}{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}"
         "{% for m in rest %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
         "{{ sys if loop.first else '' }}{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

TEMPLATES = {"chatml": (CHATML, {}), "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>"}),
             "gemma": (GEMMA, {"bos_token": "<bos>"})}

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What color is the sky?"},
    {"role": "assistant", "content": "It is blue."},
    {"role": "user", "content": "And the grass?"},
    {"role": "assistant", "content": "Green, mostly."},
]

CORPUS = [
    "The sky is blue. The grass is green. The sun is yellow and hot.",
    "What color is the sky? What color is the grass? What color is the sun?",
    "It is blue. It is green. Green, mostly. Yellow, and very bright.",
    "You are a terse assistant. You are a helpful assistant. Answer in one line.",
    "system user assistant model\n\nsystem\nuser\nassistant\n",
    "And the grass? And the sun? Hello there, hi. Tell me about the sea.",
    "One paragraph.\n\n\nAnother paragraph.\n\n",
]


def chat_tokenizer(template: str = "chatml", *, pre_tokenizer: str = "qwen2", vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on :data:`CORPUS` with the ChatML special tokens (pad and EOS
    ``<|endoftext|>``, as Qwen2 base models have), wrapped in ``PreTrainedTokenizerFast`` with the
    chat template ``template`` (``chatml``, ``llama3`` or ``gemma``; the last two add their own special
    tokens and BOS). ``pre_tokenizer="gpt2"`` splits text as GPT-2 does (a run of newlines at the end
    of a text is one piece, but two pieces before a word)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text, extra = TEMPLATES[template]
    specials = list(CHATML_TOKENS) + {"chatml": [], "llama3": list(LLAMA3_TOKENS),
                                      "gemma": list(GEMMA_TOKENS)}[template]
    tok = Tokenizer(models.BPE())
    if pre_tokenizer == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   chat_template=text, **extra)


def qwen2_folder(path, tokenizer=None, *, seed: int = 0):
    """Save a tiny random ``Qwen2ForCausalLM`` (EOS ``<|endoftext|>``) and ``tokenizer`` (default:
    :func:`chat_tokenizer`) to ``path``, so that ``rlhf_jax.model.load_pretrained(path)`` loads both."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer or chat_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).float().save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


_TOPICS = [("sky", "blue", "green"), ("grass", "green", "purple"), ("sun", "yellow", "blue")]


def _user(t):
    return {"role": "user", "content": f"What color is the {t}?"}


def _assistant(c):
    return {"role": "assistant", "content": f"It is {c}."}


EXAMPLES = {
    "standard_language_modeling": [{"text": f"The {t} is {c}."} for t, c, _ in _TOPICS],
    "conversational_language_modeling": [{"messages": [_user(t), _assistant(c)]} for t, c, _ in _TOPICS],
    "standard_prompt_only": [{"prompt": f"The {t} is"} for t, _, _ in _TOPICS],
    "conversational_prompt_only": [{"prompt": [_user(t)]} for t, _, _ in _TOPICS],
    "standard_prompt_completion": [{"prompt": f"The {t} is", "completion": f" {c}."} for t, c, _ in _TOPICS],
    "conversational_prompt_completion": [{"prompt": [_user(t)], "completion": [_assistant(c)]} for t, c, _ in _TOPICS],
    "standard_preference": [{"prompt": f"The {t} is", "chosen": f" {c}.", "rejected": f" {r}."}
                            for t, c, r in _TOPICS],
    "conversational_preference": [{"prompt": [_user(t)], "chosen": [_assistant(c)], "rejected": [_assistant(r)]}
                                  for t, c, r in _TOPICS],
    "standard_implicit_preference": [{"chosen": f"The {t} is {c}.", "rejected": f"The {t} is {r}."}
                                     for t, c, r in _TOPICS],
    "conversational_implicit_preference": [{"chosen": [_user(t), _assistant(c)], "rejected": [_user(t), _assistant(r)]}
                                           for t, c, r in _TOPICS],
}
"""Three rows of each TRL format (keys are :data:`rlhf_jax.data.FORMAT_NAMES`)."""

SOURCE_KINDS = ("jsonl", "json", "parquet", "disk")


def write_dataset(rows, path, kind: str = "jsonl", *, splits: dict | None = None):
    """Write ``rows`` as ``kind``: ``jsonl``, ``json`` (a JSON list), ``parquet`` or ``disk``
    (``datasets``' ``save_to_disk``; with ``splits={"train": rows, "test": rows}`` a DatasetDict).
    Parquet and ``save_to_disk`` rows get every key of any row (``None`` where absent), as Arrow
    columns do."""
    path = os.fspath(path)
    if rows is not None:  # Arrow takes the columns of the first row only: give every row every key
        keys = list(dict.fromkeys(k for r in rows for k in r))
        table_rows = [{k: r.get(k) for k in keys} for r in rows]
    if kind == "jsonl":
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif kind == "json":
        with open(path, "w") as f:
            json.dump(list(rows), f)
    elif kind == "parquet":
        import pyarrow
        import pyarrow.parquet

        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(table_rows), path)
    elif kind == "disk":
        import datasets

        if splits is not None:
            datasets.DatasetDict({k: datasets.Dataset.from_list(list(v)) for k, v in splits.items()}).save_to_disk(path)
        else:
            datasets.Dataset.from_list(table_rows).save_to_disk(path)
    else:
        raise ValueError(kind)
    return path


def dataset_path(tmp_path, name: str, kind: str):
    """:data:`EXAMPLES` ``[name]`` written as ``kind`` under ``tmp_path``; returns its path."""
    ext = {"jsonl": ".jsonl", "json": ".json", "parquet": ".parquet", "disk": ""}[kind]
    return write_dataset(EXAMPLES[name], os.path.join(os.fspath(tmp_path), f"{name}{ext}"), kind)
