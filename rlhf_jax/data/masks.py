"""Assistant-only loss masks for multi-turn conversations, for any chat template.

The conversation is rendered once and tokenised once (those are the tokens trained on). For each
assistant message ``i`` (from ``first`` on) the template is rendered twice more:

* ``head = render(messages[:i], add_generation_prompt=True)``: everything before the assistant's
  text, its turn header included;
* ``upto = render(messages[:i + 1])``: the same plus the assistant turn, end-of-turn token included.

The assistant span is what ``upto`` adds to ``head``. It is trusted only when

1. ``head`` is a prefix of ``upto`` and ``upto`` a prefix of the whole rendering (the template
   renders earlier turns the same once a turn is added), and
2. the tokens of ``head`` and of ``upto``, tokenised alone, are the first tokens of the whole
   conversation's tokens (the span boundaries fall between tokens and tokenise identically in
   context),

so the span is ``[len(tokens(head)), len(tokens(upto)))`` in the conversation's tokens. A template
or tokenizer that breaks either raises :class:`ChatTemplateError` naming the row and the template:
never a silently wrong mask.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from rlhf_jax.data.chat import ChatTemplate, render
from rlhf_jax.data.errors import ChatTemplateError


class ChatTokens(NamedTuple):
    """A rendered conversation's tokens and its assistant-only loss mask."""

    input_ids: list[int]
    """Token ids of the whole rendered conversation."""
    loss_mask: list[int]
    """1 on the tokens of the assistant turns (from message ``first`` on), else 0."""
    spans: tuple[tuple[int, int], ...]
    """``[start, end)`` token range of each of those assistant turns."""
    text: str
    """The rendered conversation."""


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _first_difference(a: Sequence, b: Sequence) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def assistant_masks(tokenizer, template: ChatTemplate, messages: Sequence[dict], *, first: int = 0,
                    where: str = "<conversation>") -> ChatTokens:
    """Tokens of ``messages`` rendered with ``template`` and the mask of its assistant turns.

    Args:
      tokenizer: a ``transformers`` tokenizer.
      template: from :func:`rlhf_jax.data.resolve_chat_template`.
      messages: ``[{role, content}, ...]``.
      first: only assistant messages at index >= ``first`` get loss (prompt-completion data: the
        prompt's length, so assistant turns inside the prompt are context).
      where: the row, for errors.

    Raises:
      ChatTemplateError: the template changes earlier turns when a turn is added, or a span
        boundary does not tokenise identically alone and in context (see the module docstring).
    """
    messages = list(messages)
    full = render(tokenizer, template, messages, where=where)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= first]
    texts = []
    for i in turns:
        head = render(tokenizer, template, messages[:i], add_generation_prompt=True, where=where)
        upto = full if i + 1 == len(messages) else render(tokenizer, template, messages[:i + 1], where=where)
        for text, what in ((head, f"messages[:{i}] with the generation prompt"), (upto, f"messages[:{i + 1}]")):
            if not full.startswith(text):
                at = _first_difference(text, full)
                raise ChatTemplateError(
                    f"{where}: {template.name} renders earlier turns differently once later turns are added: the "
                    f"rendering of {what} is not the start of the whole conversation's (they differ at character "
                    f"{at}: {text[at:at + 30]!r} vs {full[at:at + 30]!r}), so the assistant spans cannot be found; "
                    "use a template that renders each turn the same whatever follows (--chat_template FILE.jinja)")
        if not upto.startswith(head):
            raise ChatTemplateError(
                f"{where}: {template.name}'s generation prompt ...{head[-30:]!r} is not how it opens assistant "
                f"message {i} ...{upto[max(0, len(head) - 30):len(head) + 10]!r}; use a template whose "
                "generation prompt opens the assistant turn (--chat_template FILE.jinja)")
        texts += [head, upto]
    encoded = _ids(tokenizer, [full] + texts)  # one call: the tokenizer's per-call cost dominates short texts
    ids = encoded[0]
    mask = [0] * len(ids)
    spans = []
    for k, i in enumerate(turns):
        bounds = []
        for alone, what in ((encoded[1 + 2 * k], f"the text before assistant message {i}"),
                            (encoded[2 + 2 * k], f"the text up to the end of assistant message {i}")):
            if ids[:len(alone)] != alone:
                j = _first_difference(alone, ids)
                shown = (tokenizer.convert_ids_to_tokens(alone[j:j + 2]), tokenizer.convert_ids_to_tokens(ids[j:j + 2]))
                raise ChatTemplateError(
                    f"{where}: with {template.name}, {what} tokenises differently alone than inside the whole "
                    f"conversation (token {j}: {shown[0]} alone vs {shown[1]} in context): the tokenizer merges "
                    "text across the turn boundary, so the assistant tokens cannot be marked exactly; use a "
                    "template that ends the turn header with a special token or newline the tokenizer keeps apart")
            bounds.append(len(alone))
        start, end = bounds
        if end > start:
            mask[start:end] = [1] * (end - start)
            spans.append((start, end))
    return ChatTokens(ids, mask, tuple(spans), full)
