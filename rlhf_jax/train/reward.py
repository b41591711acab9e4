"""Reward-model training: base + reward LoRA (or full fine-tuning) + a scalar score head on the last
real token, trained on preference pairs (Bradley-Terry) or K-way rankings. The result is a
:class:`rlhf_jax.scoring.RewardModel`; normalise it with :func:`rlhf_jax.scoring.normalize_on_samples`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.config_checks import at_least, check, in_range, one_of
from rlhf_jax.data import DataConfig, EncodeReport, encode_preference_data
from rlhf_jax.feedback.batches import BatchConfig, encode_pairs, encode_rankings, pad_token_id
from rlhf_jax.lora import LoraConfig
from rlhf_jax.losses import bradley_terry_loss, ranking_loss
from rlhf_jax.model import ModelConfig, init_head, score_head
from rlhf_jax.rollout.shared_prefix import grouped_hidden
from rlhf_jax.scoring import RewardModel, raw_scores
from rlhf_jax.train.algorithm import Algorithm, cached_algorithm
from rlhf_jax.train.batching import batch_indices, check_context, trim_padding
from rlhf_jax.train.fit import FitContext, fit
from rlhf_jax.train.grouped_batches import grouped_rows, split_shared_prefix
from rlhf_jax.train.optim import OptimConfig, guarded_update
from rlhf_jax.train.run import RunConfig
from rlhf_jax.train.state import TrainState
from rlhf_jax.train.trainable import init_trainable


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """Reward-model training."""

    lora: LoraConfig | None = LoraConfig(rank=8, alpha=16.0)
    """The reward adapter over the shared base; ``None``: fine-tune a full copy of the base."""
    loss: str = "pairwise"
    """``"pairwise"`` (Bradley-Terry on pairs) or ``"ranking"`` (InstructGPT's K-way loss)."""
    batch_size: int = 16
    """Pairs (or ranked prompts) per update."""
    max_length: int = 64
    """Context length of prompt + completion."""
    use_margin: bool = False
    """Subtract each pair's ``margin`` column inside the sigmoid."""
    center_coef: float = 0.0
    """Weight of the reward-centring term ``(r_c + r_r)^2``."""
    pad_multiple: int = 8
    """Each batch is cut to its longest sequence, rounded up to a multiple of this (a few
    compiled shapes, no work on columns that are padding in every row); ``0``: every batch keeps
    the data's full width (one shape)."""
    eval_fraction: float = 0.1
    """Share of the data held out for pair accuracy."""
    eval_every: int = 0
    """Evaluate on the held-out data (and on as many training items, for the train accuracy)
    every N steps (0: only at the end)."""
    label_smoothing: float = 0.0
    """Each preference label is taken as wrong with this probability: the pair loss becomes
    ``-(1 - e) log s(z) - e log s(-z)`` (see :func:`rlhf_jax.losses.bradley_terry_loss`), whose
    optimum is a finite margin ``log((1 - e) / e)`` instead of certainty; in ``[0, 0.5)``."""
    early_stopping: int = 0
    """Stop after this many evaluations in a row (every ``eval_every`` steps) without improving
    ``early_stopping_metric`` and return the best evaluated model; 0: off (train ``max_steps``,
    return the last). Needs ``eval_every > 0`` and held-out data."""
    early_stopping_metric: str = "eval_accuracy"
    """What early stopping watches: ``"eval_accuracy"`` (higher is better; equal accuracies are
    told apart by the lower held-out loss) or ``"eval_loss"`` (lower is better)."""
    split_seed: int | None = None
    """Seed of the held-out split; ``None``: ``run.seed``. Fix it to train several models (an
    ensemble) with different seeds on one split."""
    optim: OptimConfig = OptimConfig(learning_rate=1e-3)
    """Optimizer."""
    run: RunConfig = RunConfig()
    """Steps, seed, logging, checkpoints."""

    def __post_init__(self):
        one_of(self, "loss", ("pairwise", "ranking"))
        at_least(self, "batch_size", 1, integer=True)
        at_least(self, "max_length", 2, integer=True)
        at_least(self, "center_coef", 0)
        at_least(self, "pad_multiple", 0, integer=True)
        in_range(self, "eval_fraction", 0, 1, high_open=True)
        at_least(self, "eval_every", 0, integer=True)
        in_range(self, "label_smoothing", 0, 0.5, high_open=True)
        at_least(self, "early_stopping", 0, integer=True)
        one_of(self, "early_stopping_metric", ("eval_accuracy", "eval_loss"))
        at_least(self, "split_seed", 0, integer=True, optional=True)
        check(self, "early_stopping", not self.early_stopping or (self.eval_every > 0 and self.eval_fraction > 0),
              "0 unless eval_every > 0 and eval_fraction > 0 (early stopping watches the held-out metrics)")


def preference_scores(model_config: ModelConfig, rm: RewardModel, base, batch: dict):
    """Raw scores ``[B, K]`` of a pair (K = 2, chosen first) or ranking batch.

    Two layouts (the keys tell them apart):

    - prompt once per group (what :func:`encode_preferences` gives): ``prompt_ids``,
      ``prompt_mask`` ``[B, P]`` left padded, and the completions ``input_ids``,
      ``attention_mask`` ``[B, K, C]`` right padded. The prompt's keys and values are computed
      once and the K completions attend to them (:func:`rlhf_jax.rollout.grouped_hidden`); each
      score is read at its completion's last real token (the prompt's last when it is empty).
    - whole sequences: ``input_ids``, ``attention_mask`` ``[B, K, T]`` (left or right padded), one
      pass per sequence.

    Both give the same scores (to float rounding: ``tests/test_shared_prefix.py``)."""
    b, k, t = batch["input_ids"].shape
    ids, mask = batch["input_ids"].reshape(b * k, t), batch["attention_mask"].reshape(b * k, t)
    if "prompt_ids" not in batch:
        return raw_scores(model_config, rm, base, ids, mask).reshape(b, k)
    hidden = grouped_hidden(model_config, rm.model, base, batch["prompt_ids"], batch["prompt_mask"], ids, mask,
                            group_size=k)
    return score_head(rm.head, hidden, jnp.concatenate([jnp.ones_like(mask[:, :1]), mask], axis=1)).reshape(b, k)


def reward_loss(model_config: ModelConfig, config: RewardConfig, rm: RewardModel, base, batch: dict):
    """``(loss, metrics)`` of a pair batch (chosen first, ``margin [B]``) or a ranking batch
    (``ranks``, ``valid``) under reward model ``rm``; either layout of :func:`preference_scores`."""
    r = preference_scores(model_config, rm, base, batch)
    if config.loss == "pairwise":
        margin = batch["margin"] if config.use_margin else None
        return bradley_terry_loss(r[:, 0], r[:, 1], margin=margin, center_coef=config.center_coef,
                                  label_smoothing=config.label_smoothing)
    return ranking_loss(r, batch["ranks"], batch["valid"], label_smoothing=config.label_smoothing)


def make_reward(model_config: ModelConfig, optimizer, config: RewardConfig) -> Algorithm:
    """Reward-model training as an ``(init, step)`` pair.

    - ``init(key, base) -> TrainState`` whose ``params`` is a :class:`RewardModel` with gain 1 and
      bias 0: a fresh adapter (``config.lora``) or a copy of ``base``, and a random score head.
    - ``step(state, base, batch) -> (state, metrics)``: one update of the Bradley-Terry (or K-way)
      loss; metrics ``loss``, ``accuracy``, ``margin``..., ``skipped``, ``updates``.
    """

    def init(key, base) -> TrainState:
        k_model, k_head, k_run = jax.random.split(key, 3)
        rm = RewardModel(init_trainable(model_config, base, config.lora, k_model),
                         init_head(k_head, model_config.hidden_size), jnp.float32(1.0), jnp.float32(0.0))
        trainable = rm._replace(gain=None, bias=None)  # gain and bias are not trained
        return TrainState(jnp.zeros((), jnp.int32), trainable, optimizer.init(trainable), k_run,
                          jnp.zeros((), jnp.int32))

    def loss_fn(trainable: RewardModel, base, batch):
        return reward_loss(model_config, config, trainable._replace(gain=1.0, bias=0.0), base, batch)

    def step(state: TrainState, base, batch):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, base, batch)
        params, opt_state, skipped = guarded_update(state.params, state.opt_state, grads, loss, optimizer)
        skipped = state.skipped + skipped
        metrics = dict(metrics, loss=loss, skipped=skipped, updates=1)
        return TrainState(state.step + 1, params, opt_state, state.rng, skipped), metrics

    return Algorithm(init, step)


class RewardResult(NamedTuple):
    reward_model: RewardModel
    """The trained model, gain 1 and bias 0 (normalise it on samples before RL); with early
    stopping, the best evaluated one."""
    state: TrainState
    """The training state at the last step (resume from it; with early stopping its parameters
    may be later than ``reward_model``'s)."""
    history: list[dict]
    eval: dict
    """Metrics of the returned model: held-out ``eval_accuracy`` and ``eval_loss``, and
    ``train_accuracy`` / ``train_loss`` on as many training items (at most all of them): their
    gap shows overfitting."""
    report: Any
    """The :class:`rlhf_jax.feedback.BatchReport` of the tokenisation (what was skipped)."""
    stop_reason: str
    """``"max_steps"`` or ``"early_stopping (...)"``."""
    best_step: int | None = None
    """With early stopping: the step whose model is returned (``None`` without)."""
    data_report: EncodeReport | None = None
    """How the preference dataset was read (its format, rows); ``None`` for rankings."""


def preference_pairs(data: Any, tokenizer, *, data_config: DataConfig = DataConfig()
                    ) -> tuple[list[dict], bool | None, EncodeReport]:
    """Any preference dataset (explicit or implicit prompt, strings or conversations; a path, a
    ``datasets.Dataset``, rows or :class:`rlhf_jax.feedback.PairRecord` s) as the text rows
    ``prompt, chosen, rejected[, margin]`` that :func:`encode_preferences` takes, with its
    ``add_bos`` (``False`` for conversations: the rendered texts carry the template's own BOS) and
    the data layer's report (:func:`rlhf_jax.data.encode_preference_data`)."""
    if isinstance(data, (list, tuple)) and data and hasattr(data[0], "to_dict"):
        data = [p.to_dict() for p in data]
    pairs, report = encode_preference_data(data, tokenizer, data_config=data_config)
    rows = [{k: p[k] for k in ("prompt", "chosen", "rejected", "margin") if k in p} for p in pairs]
    return rows, (False if report.format.startswith("conversational") else None), report


def encode_preferences(tokenizer, data, config: RewardConfig, *, add_bos: bool | None = None) -> tuple[dict, Any]:
    """Host arrays of pairs (``margin``) or rankings (``ranks``, ``valid``) with each prompt once:
    ``prompt_ids``/``prompt_mask`` ``[N, P]`` and the completions ``input_ids``/``attention_mask``
    ``[N, K, C]`` (K = 2 for pairs, chosen first; see :func:`reward_loss`), and the tokenisation
    report. Sequences are tokenised as :func:`rlhf_jax.feedback.encode_pairs` does (its truncation
    and skipping rules; ``add_bos``: see :class:`rlhf_jax.feedback.BatchConfig`), then cut at the
    prefix each group shares (:func:`rlhf_jax.train.grouped_batches.split_shared_prefix`)."""
    bc = BatchConfig(max_length=config.max_length, add_bos=add_bos)
    if config.loss == "pairwise":
        batch, report = encode_pairs(tokenizer, data, config=bc)
        extra = {"margin": batch.margin}
    else:
        batch, report = encode_rankings(tokenizer, list(data), config=bc)
        extra = {"ranks": batch.ranks, "valid": batch.valid}
    arrays = split_shared_prefix(batch.input_ids, batch.attention_mask, pad_id=pad_token_id(tokenizer))
    return {**arrays, **extra}, report


@functools.lru_cache(maxsize=16)
def _jitted_eval(model_config: ModelConfig, config: RewardConfig):
    # one compilation per (model config, loss settings)
    return jax.jit(lambda t, b, batch: reward_loss(model_config, config, t._replace(gain=1.0, bias=0.0), b, batch))


def preference_rows(arrays: dict, idx, pad_multiple: int) -> dict:
    """Rows ``idx`` of host preference arrays, cut to their longest sequence (prompt and
    completions separately when the prompt is held once)."""
    if "prompt_ids" in arrays:
        return grouped_rows(arrays, idx, pad_multiple)
    return dict(trim_padding({k: v[idx] for k, v in arrays.items()}, multiple=pad_multiple))


def train_reward_model(model_config: ModelConfig, base: dict, tokenizer, data: Any, config: RewardConfig, *,
                       data_config: DataConfig = DataConfig(), train_only: Any = None) -> RewardResult:
    """Train a reward model over ``base`` with :func:`make_reward` run by :func:`rlhf_jax.train.fit`.

    Args:
      data: for ``loss="pairwise"``, any preference dataset (:func:`preference_pairs`): rows with
        ``prompt``, ``chosen``, ``rejected`` [, ``margin``] or the implicit ``chosen``,
        ``rejected``, strings or conversations (rendered with the chat template), as a path (JSONL,
        JSON, Parquet, ``save_to_disk`` folder), a ``datasets.Dataset`` (e.g. from
        :func:`rlhf_jax.feedback.feedback_to_pairs`) or a list; for ``loss="ranking"``, ranked
        items (``prompt``, ``completions``, ``ranks``).
      data_config: ``format``, ``split``, ``chat_template`` of a preference dataset.
      train_only: more preference pairs in any form ``data`` takes (``loss="pairwise"``), trained on
        but never held out, so the held-out metrics stay ``data``'s (e.g. synthetic negatives:
        :func:`rlhf_jax.feedback.corrupted_negatives`).
    """
    check_context(model_config, who="reward", max_length=config.max_length)
    data_report = None
    n_data = None
    if config.loss == "pairwise":
        data, add_bos, data_report = preference_pairs(data, tokenizer, data_config=data_config)
        if train_only is not None:
            n_data = len(data)
            data = data + preference_pairs(train_only, tokenizer, data_config=data_config)[0]
        arrays, report = encode_preferences(tokenizer, data, config, add_bos=add_bos)
    elif train_only is not None:
        raise ValueError('train_reward_model: train_only takes preference pairs; it needs loss="pairwise"')
    else:
        arrays, report = encode_preferences(tokenizer, data, config)
    kept = np.asarray(report.kept_indices, dtype=int)
    is_extra = kept >= n_data if n_data is not None else np.zeros(kept.shape, bool)
    labelled, extra = np.flatnonzero(~is_extra), np.flatnonzero(is_extra)
    n = arrays["input_ids"].shape[0]
    n_eval = int(round(len(labelled) * config.eval_fraction))
    split_seed = config.run.seed if config.split_seed is None else config.split_seed
    order = labelled[np.random.default_rng(split_seed).permutation(len(labelled))]
    order = np.concatenate([order, extra])  # train-only rows after the held-out split
    train = {k: v[order[n_eval:]] for k, v in arrays.items()}
    held = {k: v[order[:n_eval]] for k, v in arrays.items()}
    train_probe = {k: v[:n_eval] for k, v in train.items()}  # the train accuracy's items
    if n - n_eval < config.batch_size:
        raise ValueError(f"reward: {n - n_eval} training items (after {report.skipped} skipped and {n_eval} held out) "
                         f"are fewer than batch_size {config.batch_size}; lower batch_size or add data")
    algo = cached_algorithm(make_reward, model_config, config)
    state = algo.init(jax.random.PRNGKey(config.run.seed), base)
    eval_fn = _jitted_eval(model_config, dataclasses.replace(config, run=RunConfig()))

    def batches(step: int, ctx: FitContext):
        idx = batch_indices(step, n - n_eval, config.batch_size, config.run.seed)
        return preference_rows(train, idx, config.pad_multiple), {}

    def measure(params, base, items: dict, prefix: str) -> dict:
        accs, losses, counts = [], [], []
        for i in range(0, items["input_ids"].shape[0], config.batch_size):
            part = preference_rows(items, slice(i, i + config.batch_size), config.pad_multiple)
            loss, m = eval_fn(params, base, part)
            accs.append(float(m["accuracy"]))
            losses.append(float(loss))
            counts.append(part["input_ids"].shape[0])
        w = np.asarray(counts, np.float64) / sum(counts)
        return {f"{prefix}_accuracy": float(np.dot(w, accs)), f"{prefix}_loss": float(np.dot(w, losses))}

    keeper = BestKeeper(config)

    def evaluate(ctx: FitContext) -> dict:
        if n_eval == 0:
            return {}
        metrics = {**measure(ctx.state.params, ctx.base, held, "eval"),
                   **measure(ctx.state.params, ctx.base, train_probe, "train")}
        keeper.offer(metrics, ctx.state)
        return metrics

    res = fit(algo.step, state, base, batches, run=config.run, name="reward", log_keys=("loss", "accuracy"),
              evaluate=evaluate, eval_every=config.eval_every, stop=keeper.stop if config.early_stopping else None,
              record={"config": config, "data": arrays})
    if not config.early_stopping:
        return RewardResult(res.state.params._replace(gain=1.0, bias=0.0), res.state, res.history, res.final_eval,
                            report, res.stop_reason, data_report=data_report)
    best = jax.tree_util.tree_map(jnp.asarray, keeper.params)
    return RewardResult(best._replace(gain=1.0, bias=0.0), res.state, res.history, keeper.metrics, report,
                        res.stop_reason, keeper.step, data_report)


class BestKeeper:
    """Early stopping: keeps a host copy of the best evaluated parameters and says when
    ``config.early_stopping`` evaluations in a row have not improved on them."""

    def __init__(self, config: RewardConfig):
        self.config = config
        self.key: tuple | None = None
        self.params = self.metrics = self.step = None
        self.since_best = 0

    def _key(self, metrics: dict) -> tuple:
        if self.config.early_stopping_metric == "eval_loss":
            return (-metrics["eval_loss"],)
        return metrics["eval_accuracy"], -metrics["eval_loss"]

    def offer(self, metrics: dict, state: TrainState) -> None:
        """Record an evaluation of ``state``; copy its parameters when it is the best so far."""
        key = self._key(metrics)
        if self.key is None or key > self.key:
            self.key, self.metrics, self.since_best = key, dict(metrics), 0
            self.params = jax.device_get(state.params)
            self.step = int(jax.device_get(state.step))
        else:
            self.since_best += 1

    def stop(self, history: list[dict]) -> str | None:
        """The ``stop`` hook of :func:`rlhf_jax.train.fit`."""
        if self.since_best < self.config.early_stopping:
            return None
        name = self.config.early_stopping_metric
        return (f"early_stopping ({self.since_best} evaluations without a better {name}; best at step {self.step}: "
                f"{name} {self.metrics[name]:.4f})")


def train_reward_ensemble(model_config: ModelConfig, base: dict, tokenizer, data: Sequence[Any],
                          config: RewardConfig, *, members: int, train_only: Any = None) -> list[RewardResult]:
    """``members`` reward models trained like :func:`train_reward_model` on the same data and the
    same held-out split (``config.split_seed``, else ``config.run.seed``), member ``k`` with run
    seed ``config.run.seed + k``: its own adapter and head initialisation and its own data order.
    With ``config.run.out_dir`` each member writes to ``out_dir/member_k``. Score them together in
    one pass with :class:`rlhf_jax.scoring.EnsembleScorer`."""
    if not isinstance(members, int) or members < 1:
        raise ValueError(f"train_reward_ensemble: members must be an integer >= 1, got {members!r}")
    split = config.run.seed if config.split_seed is None else config.split_seed
    out = []
    for k in range(members):
        run = dataclasses.replace(config.run, seed=config.run.seed + k, out_dir=None if config.run.out_dir is None
                                  else f"{config.run.out_dir}/member_{k}")
        out.append(train_reward_model(model_config, base, tokenizer, data,
                                      dataclasses.replace(config, split_seed=split, run=run), train_only=train_only))
    return out
