"""Before/after evaluation of several models on the same held-out prompts (the seeds' step 8).

For each model: sample ``S`` completions per prompt with the jitted sampler, then per sample the
reward, the probability of the toxic class, each extra scorer, the KL to the reference and the
length; per model distinct-1/2. See :func:`evaluate`.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from rlhf_jax.evaluate.config import EvalConfig, ModelSpec
from rlhf_jax.evaluate.diversity import (COLLAPSE_DESCRIPTIONS, COLLAPSE_METRICS, check_probabilities,
                                         collapse_metrics, resolve_groups)
from rlhf_jax.evaluate.report import CORPUS_METRICS, EvaluationReport
from rlhf_jax.losses import kl_penalty, masked_sum
from rlhf_jax.lora import LoraConfig, lora_config_of, model_variables
from rlhf_jax.model import ModelConfig, Transformer
from rlhf_jax.rollout import SamplingConfig, cached_sampler, encode_prompts, response_logprobs
from rlhf_jax.scoring import Completions, RewardModel, Scorer, as_scorer

TextFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
"""``(prompts, completions) -> one float per completion``."""

BUILTIN_METRICS = ("reward", "toxicity", "on_topic", "kl", "length", *CORPUS_METRICS, *COLLAPSE_METRICS)


@functools.lru_cache(maxsize=32)
def _kl_fn(config: ModelConfig, ref_config: ModelConfig, temperature: float):
    """Jitted ``(trainable, base, ref_trainable, ref_base, tokens, mask, response_mask) -> [B]``:
    summed k1 KL of the response between the model and the reference."""

    def kl(trainable, base, ref_trainable, ref_base, tokens, mask, response_mask):
        n = response_mask.shape[1]
        logp = response_logprobs(config, trainable, base, tokens, mask, n, temperature=temperature)
        ref_logp = response_logprobs(ref_config, ref_trainable, ref_base, tokens, mask, n, temperature=temperature)
        return masked_sum(kl_penalty(logp, ref_logp, estimator="k1"), response_mask, axis=-1)

    return jax.jit(kl)


def _check_spec(spec: ModelSpec, tokenizer, role: str) -> None:
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"{role}: expected a ModelSpec(name, config, base, trainable), got {type(spec).__name__}")
    try:
        model_variables(spec.base, spec.trainable)
    except ValueError as e:
        raise ValueError(f"{role} {spec.name!r}: {e}") from None
    n_tok = len(tokenizer)
    if n_tok > spec.config.vocab_size:
        raise ValueError(f"{role} {spec.name!r} has vocab_size {spec.config.vocab_size} but the tokenizer has "
                         f"{n_tok} tokens: the model and the tokenizer do not belong together")
    try:
        rows = int(np.shape(spec.params["embed"]["embedding"])[0])
    except (KeyError, TypeError, IndexError):
        rows = None
    if rows is not None and rows != spec.config.vocab_size:
        raise ValueError(f"{role} {spec.name!r}: the embedding has {rows} rows but its config says vocab_size "
                         f"{spec.config.vocab_size}")


def _resolve_sampling(sampling: SamplingConfig, config: ModelConfig, tokenizer) -> SamplingConfig:
    eos = sampling.eos_ids
    if eos is None and not config.eos_ids and tokenizer.eos_token_id is not None:
        eos = (int(tokenizer.eos_token_id),)
    pad = sampling.pad_id
    if pad is None and config.pad_token_id is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return dataclasses.replace(sampling, eos_ids=eos, pad_id=pad)


def _scores(name: str, values, n: int) -> np.ndarray:
    """``values`` as ``[n]`` float64, or an error that names the scorer."""
    try:
        x = np.asarray(values, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"scorer {name!r} returned something that is not a list of numbers: {e}") from None
    if x.ndim != 1 or x.shape[0] != n:
        got = x.shape[0] if x.ndim == 1 else f"an array of shape {x.shape}"
        raise ValueError(f"scorer {name!r} returned {got} values for {n} completions (one float per "
                         "completion expected)")
    bad = np.nonzero(~np.isfinite(x))[0]
    if bad.size:
        raise ValueError(f"scorer {name!r} returned non-finite values at completions {bad[:10].tolist()}")
    return x


def evaluate(models: Sequence[ModelSpec], *, reference: ModelSpec, tokenizer, prompts: Sequence[str],
             config: EvalConfig, reward: Scorer | RewardModel | TextFn | None = None,
             toxicity: Callable[[Sequence[str]], Sequence[float]] | None = None,
             scorers: Mapping[str, TextFn] | None = None, on_topic: TextFn | None = None,
             groups: Callable[[str], str] | Sequence[str] | None = None) -> EvaluationReport:
    """Evaluate ``models`` on the same ``prompts`` and return an :class:`EvaluationReport`.

    Every model samples ``S = config.samples_per_prompt`` completions per prompt (row ``p * S + s``
    is sample ``s`` of prompt ``p``; all prompts left padded to one length, fixed-size batches, so
    one compilation per model structure). Per sample:

    - ``reward``: a :class:`rlhf_jax.scoring.Scorer`, a :class:`rlhf_jax.scoring.RewardModel`
      (scored on prompt + completion tokens; an adapter reward model sits on the reference's
      base, as in PPO) or any ``(prompts, completions) -> scores`` function (texts decoded
      without special tokens).
    - ``toxicity``: ``toxicity(completions) -> P(toxic)`` (the completion alone, as the seeds'
      classifier), the seeds' measure "mean probability of the toxic class".
    - each of ``scorers``: ``fn(prompts, completions) -> floats``.
    - ``kl``: ``sum_t [log pi(y_t | y_<t) - log pi_ref(y_t | y_<t)]`` over the response tokens
      (the k1 estimate of KL(pi || pi_ref) of the whole completion), from one forward pass each of
      the model and the reference at the sampling temperature.
    - ``length``: generated tokens, the EOS token included.

    - ``on_topic``: ``on_topic(prompts, completions) -> 0/1 or a probability`` per completion,
      whether it answers its prompt's topic (e.g. :func:`rlhf_jax.toyworld.on_topic_scores`).

    and per model ``distinct_1`` / ``distinct_2``: unique / total word n-grams over all its
    completions (Li et al. 2016), and the collapse diagnostics of
    :mod:`rlhf_jax.evaluate.diversity` (unique-completion ratio, share of completions identical
    to one for another prompt, entropy of the completion strings in bits, share of prompts whose
    samples are all identical when ``S >= 2``, number of distinct outputs under greedy
    decoding). Texts given to ``toxicity``, ``scorers`` and ``on_topic`` keep special tokens when
    ``config.keep_special_tokens`` (default), so a finished completion ends with the EOS text.
    With ``groups``, every statistic is also given per group of prompts
    (``report.by_group``, a table per group in the Markdown, a cluster per group in the plot).

    Args:
      models: the models to compare, e.g. ``[ModelSpec("sft", cfg, base),
        ModelSpec("ppo", cfg, base, adapter)]``.
      reference: the model the KL is measured against (usually the SFT base, no adapter).
      tokenizer: a ``transformers`` tokenizer shared by every model.
      prompts: held-out prompt texts.
      config: an :class:`EvalConfig`.
      reward, toxicity, scorers, on_topic: see above; each is optional.
      groups: a function ``prompt -> group label`` or one label per prompt (e.g. the toy world's
        topic family: ``lambda t: rlhf_jax.toyworld.prompt_family(t)``); optional.
    Returns:
      an :class:`EvaluationReport`.
    """
    models = list(models)
    prompts = list(prompts)
    scorers = dict(scorers or {})
    if not prompts:
        raise ValueError("evaluate: no prompts")
    if not models:
        raise ValueError("evaluate: no models to evaluate")
    group_labels = resolve_groups(groups, prompts)
    names = [m.name if isinstance(m, ModelSpec) else None for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"evaluate: model names must be unique, repeated: {dup}")
    for m in models:
        _check_spec(m, tokenizer, "model")
    _check_spec(reference, tokenizer, "reference")
    clash = sorted(set(scorers) & set(BUILTIN_METRICS))
    if clash:
        raise ValueError(f"evaluate: scorer names {clash} clash with built-in metrics {BUILTIN_METRICS}")
    scorer = None if reward is None else as_scorer(reward, reference.config)

    # ---- prompts: tokenise once, left pad to one bucket length
    n_new = config.sampling.max_new_tokens
    limit = config.max_prompt_length
    if limit is None:
        limit = min(m.config.max_position_embeddings for m in [*models, reference]) - n_new
        if limit < 1:
            raise ValueError(f"evaluate: max_new_tokens={n_new} leaves no room for a prompt within the models' "
                             "max_position_embeddings")
    s = config.samples_per_prompt
    n_rows = len(prompts) * s
    rows = np.repeat(np.arange(len(prompts)), s)
    row_prompts = [prompts[i] for i in rows]
    bs = config.batch_size
    key = jax.random.PRNGKey(config.seed)
    special = [t for t in tokenizer.all_special_tokens if t]

    values: dict[str, dict[str, np.ndarray]] = {}
    completions: dict[str, list[list[str]]] = {}
    timings: dict[str, float] = {}
    prompt_length = None
    truncated = 0
    for spec in models:
        t0 = time.perf_counter()
        sampling = _resolve_sampling(config.sampling, spec.config, tokenizer)
        sampler = cached_sampler(spec.config, lora_config_of(spec.trainable), sampling)
        pad_id = sampling.resolve(spec.config)[1]
        batch, truncated = encode_prompts(tokenizer, prompts, limit=limit, pad_id=pad_id,
                                          bucket=config.prompt_bucket, who="evaluate")
        prompt_length = batch.tokens.shape[1]
        kl_fn = _kl_fn(spec.config, reference.config, float(sampling.temperature))
        variables = model_variables(spec.base, spec.trainable)
        resp, rmask, lengths, kls, rewards = [], [], [], [], []
        starts = range(0, n_rows, bs)
        if config.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"evaluate {spec.name}", file=sys.stderr, leave=False, dynamic_ncols=True)
        for i, start in enumerate(starts):
            take = rows[start:start + bs]
            padded = np.concatenate([take, np.full(bs - len(take), take[-1])])
            ro = sampler(variables, batch.tokens[padded], batch.mask[padded], jax.random.fold_in(key, i))
            k = kl_fn(spec.trainable, spec.base, reference.trainable, reference.base, ro.tokens, ro.attention_mask,
                      ro.response_mask)
            keep = slice(0, len(take))
            if scorer is not None:
                texts = [tokenizer.decode(r[m > 0].tolist(), skip_special_tokens=True)
                         for r, m in zip(np.asarray(ro.response_tokens), np.asarray(ro.response_mask))]
                done = Completions([prompts[j] for j in padded], texts, ro.tokens, ro.attention_mask)
                rewards.append(scorer(done, reference.base)[keep])
            resp.append(np.asarray(ro.response_tokens)[keep])
            rmask.append(np.asarray(ro.response_mask)[keep])
            lengths.append(np.asarray(ro.lengths)[keep])
            kls.append(np.asarray(k)[keep])
        resp, rmask = np.concatenate(resp), np.concatenate(rmask)
        plain = [tokenizer.decode(r[m > 0].tolist(), skip_special_tokens=True) for r, m in zip(resp, rmask)]
        shown = plain if not config.keep_special_tokens else [
            tokenizer.decode(r[m > 0].tolist(), skip_special_tokens=False) for r, m in zip(resp, rmask)]

        per: dict[str, np.ndarray] = {}
        if scorer is not None:
            per["reward"] = _scores("reward", np.concatenate(rewards), n_rows)
        if toxicity is not None:
            per["toxicity"] = _scores("toxicity", toxicity(list(shown)), n_rows)
        for name, fn in scorers.items():
            per[name] = _scores(name, fn(list(row_prompts), list(shown)), n_rows)
        if on_topic is not None:
            per["on_topic"] = check_probabilities("on_topic", _scores("on_topic", on_topic(list(row_prompts),
                                                                                          list(shown)), n_rows))
        per["kl"] = np.concatenate(kls).astype(np.float64)
        per["length"] = np.concatenate(lengths).astype(np.float64)
        values[spec.name] = {k: v.reshape(len(prompts), s) for k, v in per.items()}
        completions[spec.name] = [shown[p * s:(p + 1) * s] for p in range(len(prompts))]
        timings[spec.name] = round(time.perf_counter() - t0, 2)
        if config.progress:
            print(f"evaluate {spec.name}: {n_rows} completions scored in {timings[spec.name]:.1f}s", file=sys.stderr)

    first = values[models[0].name]
    metrics = list(first) + list(CORPUS_METRICS) + collapse_metrics(samples_per_prompt=s,
                                                                    greedy=config.sampling.greedy)
    descriptions = {
        "reward": f"mean reward score ({_describe(reward)})",
        "toxicity": f"mean probability of the toxic class ({_describe(toxicity)})",
        "kl": (f"sum over response tokens of log pi - log pi_ref of the sampled tokens (k1 estimate of "
               f"KL(pi || pi_ref)), reference {reference.name!r}, temperature {config.sampling.temperature}"),
        "length": "generated tokens per completion, EOS included",
        "distinct_1": "unique / total words over all completions of the model",
        "distinct_2": "unique / total word bigrams over all completions of the model",
        **{name: f"mean of scorer {name!r} ({_describe(fn)})" for name, fn in scorers.items()},
        "on_topic": f"share of completions on their prompt's topic ({_describe(on_topic)})",
        **COLLAPSE_DESCRIPTIONS,
    }
    settings = {
        "n_prompts": len(prompts), "samples_per_prompt": s, "seed": config.seed, "batch_size": bs,
        "prompt_length": prompt_length, "truncated_prompts": truncated,
        "sampling": dataclasses.asdict(config.sampling), "reference": reference.name,
        "kl_estimator": "k1, summed over response tokens", "ci": config.ci, "confidence": config.confidence,
        "bootstrap_samples": config.bootstrap_samples, "keep_special_tokens": config.keep_special_tokens,
        "special_tokens": special, "num_examples": config.num_examples, "seconds": timings,
        "groups": None if groups is None else _describe(groups) if callable(groups) else "labels given per prompt",
        "metric_descriptions": {k: descriptions[k] for k in metrics},
    }
    return EvaluationReport(models=[m.name for m in models], metrics=metrics, prompts=prompts, values=values,
                            completions=completions, settings=settings, groups=group_labels)


def _describe(fn) -> str:
    if fn is None:
        return "none"
    if isinstance(fn, Scorer):
        return f"{type(fn).__name__} {fn.name!r}"
    if isinstance(fn, RewardModel):
        return "reward model"
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{type(owner).__name__}.{fn.__name__}" if owner is not None else name
