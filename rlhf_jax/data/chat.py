"""Chat templates: which template applies, rendering prompts and completions, end-of-turn tokens.

Conversational data goes through ``tokenizer.apply_chat_template`` (rendered to text, then
tokenised with ``add_special_tokens=False``: a template writes its own BOS). A prompt is rendered
with the generation prompt (``<|im_start|>assistant\\n`` in ChatML); a completion is exactly what
the template adds for the assistant turn after that, end-of-turn token included::

    render(prompt + completion)  ==  render(prompt, add_generation_prompt=True) + completion_text

and the left side must start with the generation-prompt rendering, or the completion cannot be cut
out (:class:`ChatTemplateError`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from rlhf_jax.data.errors import ChatTemplateError

NO_TEMPLATE_FIX = ("pass a template with --chat_template FILE.jinja (chat_template=... in Python), or save one "
                   "with the tokenizer (tokenizer.chat_template = ...; tokenizer.save_pretrained(folder))")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and where it came from (named in errors)."""

    text: str
    """The Jinja source."""
    name: str
    """The ``.jinja`` file, or "the tokenizer's chat template"."""


def resolve_chat_template(tokenizer, chat_template: str | os.PathLike | None = None) -> ChatTemplate | None:
    """The template to use: ``chat_template`` (a ``.jinja`` file, or Jinja source text) overrides the
    tokenizer's own; ``None`` when neither exists (standard data needs none; conversational data
    then fails with an error naming ``--chat_template``, see :func:`require_template`)."""
    if chat_template is not None:
        path = os.fspath(chat_template)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return ChatTemplate(f.read(), path)
        if "{{" in path or "{%" in path:
            return ChatTemplate(path, "the chat_template string")
        raise ChatTemplateError(f"--chat_template {path!r}: no such file (pass a .jinja file holding the template)")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the default one
        own = own.get("default")
    if not own:
        return None
    return ChatTemplate(own, "the tokenizer's chat template")


def require_template(template: ChatTemplate | None, tokenizer, *, where: str) -> ChatTemplate:
    """``template``, or the error for conversational data without one (naming ``--chat_template``)."""
    if template is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(f"{where}: conversational data (message lists), but the tokenizer {name!r} has no "
                                f"chat template: {NO_TEMPLATE_FIX}")
    return template


def render(tokenizer, template: ChatTemplate, messages: Sequence[dict], *, add_generation_prompt: bool = False,
           where: str = "<conversation>") -> str:
    """The template's text for ``messages`` (errors raised by the template name the row)."""
    try:
        text = tokenizer.apply_chat_template(list(messages), chat_template=template.text, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja2 errors, raise_exception() in a template (e.g. "no system role")
        raise ChatTemplateError(f"{where}: {template.name} cannot render this conversation "
                                f"({type(e).__name__}: {e})") from e
    if not isinstance(text, str):
        raise ChatTemplateError(f"{where}: {template.name} rendered a {type(text).__name__}, not text")
    return text


def render_prompt(tokenizer, template: ChatTemplate, messages: Sequence[dict], *,
                  where: str = "<conversation>") -> str:
    """A prompt as the sampler gets it: rendered with the generation prompt."""
    return render(tokenizer, template, messages, add_generation_prompt=True, where=where)


def render_completion(tokenizer, template: ChatTemplate, prompt: Sequence[dict], completion: Sequence[dict], *,
                      where: str = "<conversation>") -> tuple[str, str]:
    """``(prompt_text, completion_text)``: the prompt with the generation prompt, and the text the
    template adds after it for ``completion`` (e.g. ``"It is blue.<|im_end|>\\n"`` in ChatML).

    Raises:
      ChatTemplateError: the rendering of ``prompt + completion`` does not start with the prompt's
        rendering with the generation prompt (the completion cannot be cut out).
    """
    head = render_prompt(tokenizer, template, prompt, where=where)
    full = render(tokenizer, template, list(prompt) + list(completion), where=where)
    if not full.startswith(head):
        raise ChatTemplateError(
            f"{where}: {template.name} renders the prompt with its generation prompt as ...{head[-40:]!r}, but the "
            f"conversation with the completion as ...{full[max(0, len(head) - 40):len(head) + 10]!r}: the "
            "completion cannot be cut out; use a template whose generation prompt opens the assistant turn "
            "(--chat_template FILE.jinja)")
    return head, full[len(head):]


def _special_ids(tokenizer) -> set[int]:
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def end_of_turn_ids(tokenizer, template: ChatTemplate) -> tuple[int, ...]:
    """The special tokens a template writes after an assistant message's content (``<|im_end|>``
    for ChatML, ``<|eot_id|>`` for Llama 3, ``<end_of_turn>`` for Gemma), found by rendering a
    probe exchange; ``()`` when the template closes a turn with no special token."""
    content = "Hello there"
    _, completion = render_completion(tokenizer, template, [{"role": "user", "content": "Hi"}],
                                      [{"role": "assistant", "content": content}], where="end-of-turn probe")
    at = completion.rfind(content)
    tail = completion[at + len(content):] if at >= 0 else completion
    special = _special_ids(tokenizer)
    out: list[int] = []
    for i in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if i in special and i not in out:
            out.append(int(i))
    return tuple(out)


def stop_token_ids(tokenizer, eos: Any = None, template: ChatTemplate | None = None) -> tuple[int, ...]:
    """The token ids generation stops at: the model's EOS id(s), the tokenizer's EOS, and the
    template's end-of-turn token(s), in that order, without repeats.

    Args:
      tokenizer: a ``transformers`` tokenizer.
      eos: a :class:`rlhf_jax.model.ModelConfig` (its ``eos_ids``), an id, a sequence of ids, or None.
      template: the chat template used for the prompts (None: standard data, EOS only).

    The result is what :class:`rlhf_jax.rollout.SamplingConfig` takes as ``eos_ids``.
    """
    if eos is None:
        ids: list[int] = []
    elif hasattr(eos, "eos_ids"):
        ids = list(eos.eos_ids)
    elif isinstance(eos, int):
        ids = [eos]
    else:
        ids = [int(i) for i in eos]
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    if template is not None:
        ids += end_of_turn_ids(tokenizer, template)
    out: list[int] = []
    for i in ids:
        if i not in out:
            out.append(int(i))
    return tuple(out)
