"""``generation_config.json`` that says how the exported policy was sampled, so that
``transformers``' ``generate`` samples the same way: ``top_k`` is written even when off (``0``;
left out, transformers would apply its default top-k of 50), and ``eos_token_id`` lists every stop
token (the model's EOS ids and the chat template's end of turn, e.g. ``<|im_end|>``)."""

from __future__ import annotations

from typing import Any, Sequence


def generation_config_dict(sampling: Any, eos_ids: Sequence[int], *, pad_token_id: int | None = None) -> dict:
    """The fields of ``generation_config.json`` for a :class:`rlhf_jax.rollout.SamplingConfig`.

    Args:
      sampling: its ``greedy``, ``temperature``, ``top_k`` (None: off), ``top_p`` and
        ``max_new_tokens`` are written as ``do_sample``, ``temperature``, ``top_k`` (``0`` when
        off), ``top_p`` and ``max_new_tokens`` (greedy: ``do_sample=false`` only).
      eos_ids: the stop tokens (:func:`rlhf_jax.data.stop_token_ids`); one id is written as an int.
      pad_token_id: written when given.
    """
    eos = [int(i) for i in eos_ids]
    out: dict[str, Any] = {"do_sample": not sampling.greedy, "max_new_tokens": int(sampling.max_new_tokens)}
    if not sampling.greedy:
        out.update(temperature=float(sampling.temperature), top_k=int(sampling.top_k or 0), top_p=float(sampling.top_p))
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if pad_token_id is not None:
        out["pad_token_id"] = int(pad_token_id)
    return out
