"""Chat templates: the model folder's own template, a .jinja override, prompts rendered with the
generation prompt, completions exactly as the template renders the assistant turn, stop ids, and
the errors for a missing template or missing tokenizer files."""

import pytest

from rlhf_jax.data import (ChatTemplateError, end_of_turn_ids, load_dataset, render_completion, render_prompt,
                           resolve_chat_template, stop_token_ids)
from rlhf_jax.model import CheckpointError, load_pretrained
from tests.chat_fixtures import CHATML, EXAMPLES, chat_tokenizer, qwen2_folder

USER = [{"role": "user", "content": "What color is the sky?"}]
ANSWER = [{"role": "assistant", "content": "It is blue."}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return qwen2_folder(tmp_path_factory.mktemp("qwen2") / "model")


def test_model_folder_loads_with_its_template_and_stop_ids(folder):
    config, params, tok = load_pretrained(folder)
    assert config.vocab_size == len(tok) and config.qkv_bias and "embed" in params  # a Qwen2 model
    template = resolve_chat_template(tok)
    assert template.text == CHATML and template.name == "the tokenizer's chat template"
    prompt = render_prompt(tok, template, USER)
    assert prompt == "<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n"
    head, completion = render_completion(tok, template, USER, ANSWER)
    assert head == prompt and completion == "It is blue.<|im_end|>\n"
    # the same through transformers alone: the whole conversation = prompt + completion
    assert tok.apply_chat_template(USER + ANSWER, tokenize=False) == prompt + completion
    endoftext, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert config.eos_ids == (endoftext,)  # the model's EOS is <|endoftext|>, as in Qwen2 base models
    assert end_of_turn_ids(tok, template) == (im_end,)
    assert stop_token_ids(tok, config, template) == (endoftext, im_end)
    assert stop_token_ids(tok, config) == (endoftext,)  # standard data: EOS only
    assert stop_token_ids(tok, [7, endoftext], template) == (7, endoftext, im_end)


@pytest.mark.parametrize("name,eot", [("llama3", "<|eot_id|>"), ("gemma", "<end_of_turn>")])
def test_end_of_turn_of_other_templates(name, eot):
    tok = chat_tokenizer(name)
    template = resolve_chat_template(tok)
    assert end_of_turn_ids(tok, template) == (tok.convert_tokens_to_ids(eot),)
    _, completion = render_completion(tok, template, USER, ANSWER)
    assert completion == {"llama3": "It is blue.<|eot_id|>", "gemma": "It is blue.<end_of_turn>\n"}[name]


def test_jinja_file_overrides_the_tokenizer_template(tmp_path, folder):
    *_, tok = load_pretrained(folder)
    path = tmp_path / "terse.jinja"
    path.write_text(CHATML.replace("'<|im_start|>' + m['role']", "'<|im_start|>' + m['role'] + ':'")
                    .replace("<|im_start|>assistant\n", "<|im_start|>assistant:\n"))
    template = resolve_chat_template(tok, str(path))
    assert template.name == str(path)
    assert render_prompt(tok, template, USER) == ("<|im_start|>user:\nWhat color is the sky?<|im_end|>\n"
                                                  "<|im_start|>assistant:\n")
    with pytest.raises(ChatTemplateError, match="--chat_template 'nope.jinja': no such file"):
        resolve_chat_template(tok, "nope.jinja")


def test_no_template_names_chat_template_flag(tmp_path):
    tok = chat_tokenizer()
    tok.chat_template = None
    path = tmp_path / "conv.jsonl"
    from tests.chat_fixtures import write_dataset

    write_dataset(EXAMPLES["conversational_prompt_completion"], path)
    with pytest.raises(ChatTemplateError, match=rf"{path}: conversational data \(message lists\), but the tokenizer "
                                                r".* has no chat template: pass a template with --chat_template "
                                                r"FILE\.jinja"):
        load_dataset(str(path), tok)
    # standard data needs no template; a .jinja file supplies one
    assert load_dataset(EXAMPLES["standard_prompt_completion"], tok).template is None
    (tmp_path / "t.jinja").write_text(CHATML)
    from rlhf_jax.data import DataConfig

    supplied = load_dataset(str(path), tok, config=DataConfig(chat_template=str(tmp_path / "t.jinja")))
    assert supplied.template.text == CHATML


def test_template_errors_name_the_row():
    tok = chat_tokenizer("gemma")
    template = resolve_chat_template(tok)
    with pytest.raises(ChatTemplateError, match=r"d\.jsonl:5: the tokenizer's chat template cannot render this "
                                                r"conversation .*roles must alternate"):
        render_prompt(tok, template, [{"role": "assistant", "content": "hi"}], where="d.jsonl:5")


def test_folder_without_tokenizer_files(tmp_path, folder):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (bare / f).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=rf"{bare}: no tokenizer files: expected tokenizer\.json .* vocab\.json "
                                              r"\+ merges\.txt or tokenizer\.model"):
        load_pretrained(str(bare))
    config, _, tok = load_pretrained(str(bare), tokenizer=False)
    assert tok is None and config.vocab_size > 1
