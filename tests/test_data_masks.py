"""Assistant-only loss masks on multi-turn conversations (system, user, assistant) for three
templates (ChatML, a Llama-3-style header template, a Gemma-style template without a system role),
against spans written by hand from the rendered string; and the errors for templates and
tokenizers whose assistant spans cannot be found exactly."""

import pytest

from rlhf_jax.data import ChatTemplate, ChatTemplateError, assistant_masks, resolve_chat_template
from tests.chat_fixtures import CHATML, CONVERSATION, chat_tokenizer

# The rendered conversation, written by hand: (text, 1 where the loss applies). The assistant
# spans are the content and the template's end of turn (and what follows it up to the next turn).
EXPECTED = {
    "chatml": [
        ("<|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
         "<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n", 0),
        ("It is blue.<|im_end|>\n", 1),
        ("<|im_start|>user\nAnd the grass?<|im_end|>\n<|im_start|>assistant\n", 0),
        ("Green, mostly.<|im_end|>\n", 1),
    ],
    "llama3": [
        ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a terse assistant.<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nWhat color is the sky?<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n", 0),
        ("It is blue.<|eot_id|>", 1),
        ("<|start_header_id|>user<|end_header_id|>\n\nAnd the grass?<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n", 0),
        ("Green, mostly.<|eot_id|>", 1),
    ],
    "gemma": [  # no system role: the system text opens the first user turn
        ("<bos><start_of_turn>user\nYou are a terse assistant.\n\nWhat color is the sky?<end_of_turn>\n"
         "<start_of_turn>model\n", 0),
        ("It is blue.<end_of_turn>\n", 1),
        ("<start_of_turn>user\nAnd the grass?<end_of_turn>\n<start_of_turn>model\n", 0),
        ("Green, mostly.<end_of_turn>\n", 1),
    ],
}


def _expected_mask(tokenizer, segments):
    """Token mask from the hand-written segments through the tokenizer's character offsets (an
    independent route: no template rendering per turn); every token must sit inside one segment."""
    text = "".join(s for s, _ in segments)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    bounds, at = [], 0
    for s, flag in segments:
        bounds.append((at, at + len(s), flag))
        at += len(s)
    mask = []
    for lo, hi in enc["offset_mapping"]:
        inside = [flag for a, b, flag in bounds if a <= lo and hi <= b]
        assert len(inside) == 1, f"token at {lo}:{hi} straddles a segment boundary"
        mask.append(inside[0])
    return enc["input_ids"], mask


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_masks_match_hand_written_spans(name):
    tok = chat_tokenizer(name)
    template = resolve_chat_template(tok)
    chat = assistant_masks(tok, template, CONVERSATION)
    segments = EXPECTED[name]
    assert chat.text == "".join(s for s, _ in segments)  # the template renders what we wrote by hand
    ids, mask = _expected_mask(tok, segments)
    assert chat.input_ids == ids
    assert chat.loss_mask == mask
    assert [tok.decode(chat.input_ids[a:b]) for a, b in chat.spans] == [s for s, f in segments if f]
    # loss from message 3 on: the first assistant turn is context
    later = assistant_masks(tok, template, CONVERSATION, first=3)
    assert later.input_ids == ids and len(later.spans) == 1 and later.spans[0] == chat.spans[1]
    assert sum(later.loss_mask) == chat.spans[1][1] - chat.spans[1][0]


def test_chatml_mask_equals_transformers_generation_tags():
    # transformers' own assistant mask, from a copy of the template with {% generation %} tags
    tok = chat_tokenizer("chatml")
    tagged = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% if m['role'] == 'assistant' %}"
              "{% generation %}{{ m['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}{% else %}"
              "{{ m['content'] + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    ref = tok.apply_chat_template(CONVERSATION, chat_template=tagged, return_dict=True,
                                  return_assistant_tokens_mask=True)
    chat = assistant_masks(tok, resolve_chat_template(tok), CONVERSATION)
    assert chat.input_ids == list(ref["input_ids"]) and chat.loss_mask == list(ref["assistant_masks"])


def test_template_that_rewrites_earlier_turns_is_an_error():
    # like reasoning models' templates: the thinking of earlier assistant turns is dropped once
    # another turn follows, so a turn renders differently alone and inside the conversation
    tok = chat_tokenizer("chatml")
    strip = CHATML.replace("m['content']", "(m['content'].split('</think>')[-1] if m['role'] == 'assistant' "
                                           "and not loop.last else m['content'])")
    conv = [CONVERSATION[1], {"role": "assistant", "content": "<think>easy</think>It is blue."},
            CONVERSATION[3], CONVERSATION[4]]
    with pytest.raises(ChatTemplateError, match=r"data\.jsonl:4: think\.jinja renders earlier turns differently once "
                                                r"later turns are added.*assistant spans cannot be found"):
        assistant_masks(tok, ChatTemplate(strip, "think.jinja"), conv, where="data.jsonl:4")


def test_tokenizer_merging_across_the_turn_boundary_is_an_error():
    # GPT-2's pre-tokenizer keeps "\n\n" whole at the end of a text but splits it before a word:
    # the prompt's last token differs alone and in context
    tok = chat_tokenizer("llama3", pre_tokenizer="gpt2")
    with pytest.raises(ChatTemplateError, match=r"row 7: with the tokenizer's chat template, the text before "
                                                r"assistant message 2 tokenises differently alone than inside "
                                                r"the whole conversation \(token \d+: \['ĊĊ'\] alone vs \['Ċ', 'Ċ'\]"):
        assistant_masks(tok, resolve_chat_template(tok), CONVERSATION, where="row 7")


def test_gemma_style_template_refusing_a_conversation_names_the_row():
    tok = chat_tokenizer("gemma")
    bad = [CONVERSATION[1], CONVERSATION[2], {"role": "assistant", "content": "Also green."}]
    with pytest.raises(ChatTemplateError, match=r"x\.parquet\[3\]: the tokenizer's chat template cannot render .*"
                                                r"roles must alternate"):
        assistant_masks(tok, resolve_chat_template(tok), bad, where="x.parquet[3]")
