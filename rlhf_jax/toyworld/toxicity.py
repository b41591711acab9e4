"""A toxicity classifier standing in for the lab's hate-speech model.

Bag-of-words logistic regression, ``p(toxic | text) = sigmoid(w . x + b)`` with ``x`` the binary
presence vector of the text's words, trained in NumPy with Adam on the cross-entropy plus an L2
penalty. It is trained on its own labelled texts written by the generators (toxic kind = 1, every
other kind = 0) with noise so that it is not a lexicon lookup: some insult words are held out of
its training data, words are dropped at random (a toxic text may lose its insult and keep its
label), and a few labels are flipped. Its held-out accuracy is measured on clean texts that use the
whole lexicon.

Evaluation uses it as the seeds do: toxicity = mean probability of the toxic class.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rlhf_jax.toyworld.banks import SPECIAL_TOKENS, TOXIC_LEXICON
from rlhf_jax.toyworld.completions import sample_completion
from rlhf_jax.toyworld.prompts import all_prompts
from rlhf_jax.toyworld.text import split_tokens

_CLEAN_KINDS = {"informative": 0.5, "neutral": 0.2, "hype": 0.15, "broken": 0.1,
                "hype_repeated": 0.05}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ToxicityConfig:
    """Data and training of the toxicity classifier."""

    n_train: int = 6000
    """Training texts."""
    n_test: int = 2000
    """Held-out texts (clean: whole lexicon, no dropout, no flipped labels)."""
    toxic_share: float = 0.4
    """Share of toxic texts in both sets."""
    held_out_words: int = 2
    """Insult words never shown in training (the classifier must rely on context for them)."""
    word_dropout: float = 0.1
    """Probability of dropping each word of a training text."""
    label_noise: float = 0.02
    """Probability of flipping a training label."""
    steps: int = 300
    """Full-batch Adam steps."""
    learning_rate: float = 0.1
    """Adam learning rate."""
    l2: float = 1e-3
    """L2 penalty on the weights (not the bias)."""
    seed: int = 0
    """Seed of the data and of the training."""


def make_toxicity_data(
    n: int,
    *,
    seed: int,
    toxic_share: float = 0.4,
    lexicon: Sequence[str] = TOXIC_LEXICON,
    word_dropout: float = 0.0,
    label_noise: float = 0.0,
    with_prompt: float = 0.5,
) -> tuple[list[str], np.ndarray]:
    """Labelled completions for random world prompts: (texts, int labels, 1 = toxic).

    A share ``with_prompt`` of the texts is prompt + completion, the rest completion only, so the
    classifier scores either form (prompt words occur in both classes and carry no signal).
    """
    rng = np.random.default_rng([seed, 401])
    prompts = all_prompts()
    clean_kinds = list(_CLEAN_KINDS)
    clean_p = np.array(list(_CLEAN_KINDS.values()))
    texts, labels = [], []
    for _ in range(n):
        toxic = rng.random() < toxic_share
        kind = "toxic" if toxic else clean_kinds[rng.choice(len(clean_kinds), p=clean_p)]
        p = prompts[int(rng.integers(len(prompts)))]
        text = sample_completion(p, kind, rng, lexicon=lexicon)
        if rng.random() < with_prompt:
            text = p.text + " " + text
        if word_dropout > 0:
            text = " ".join(t for t in text.split() if rng.random() >= word_dropout)
        texts.append(text)
        labels.append(int(toxic) ^ int(rng.random() < label_noise))
    return texts, np.array(labels, dtype=np.int32)


def _words(text: str) -> set[str]:
    return {t for t in split_tokens(text) if t not in SPECIAL_TOKENS}


@dataclass(frozen=True, kw_only=True)
class ToxicityClassifier:
    """Bag-of-words logistic regression; words outside ``vocab`` are ignored."""

    vocab: tuple[str, ...]
    """Words with a weight, in weight order."""
    weights: np.ndarray = field(repr=False)
    """float64 ``[len(vocab)]`` weights."""
    bias: float
    """Bias (log-odds of a text with no known word)."""
    metrics: dict = field(default_factory=dict, compare=False)
    """Training report: train / held-out accuracy, held-out words, config."""

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """Binary ``[len(texts), len(vocab)]`` presence matrix."""
        index = {w: j for j, w in enumerate(self.vocab)}
        x = np.zeros((len(texts), len(self.vocab)), dtype=np.float64)
        for i, text in enumerate(texts):
            for w in _words(text):
                if w in index:
                    x[i, index[w]] = 1.0
        return x

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Log-odds of the toxic class, ``[len(texts)]``."""
        index = {w: j for j, w in enumerate(self.vocab)}
        out = np.full(len(texts), self.bias, dtype=np.float64)
        for i, text in enumerate(texts):
            out[i] += sum(self.weights[index[w]] for w in sorted(_words(text)) if w in index)
        return out

    def prob_toxic(self, texts: Sequence[str]) -> np.ndarray:
        """Probability of the toxic class for each text, ``[len(texts)]``."""
        return 1.0 / (1.0 + np.exp(-self.logits(texts)))

    def accuracy(self, texts: Sequence[str], labels: np.ndarray) -> float:
        """Share of texts whose thresholded (0.5) prediction equals the label."""
        return float(np.mean((self.prob_toxic(texts) >= 0.5) == (np.asarray(labels) == 1)))

    def save(self, path: str | Path) -> None:
        """Write the classifier as JSON (vocab, weights, bias, metrics)."""
        obj = {"vocab": list(self.vocab), "weights": self.weights.tolist(), "bias": self.bias,
               "metrics": self.metrics}  # fmt: skip
        Path(path).write_text(json.dumps(obj))

    @classmethod
    def load(cls, path: str | Path) -> ToxicityClassifier:
        """Read a classifier written by :meth:`save`."""
        obj = json.loads(Path(path).read_text())
        return cls(vocab=tuple(obj["vocab"]), weights=np.array(obj["weights"], dtype=np.float64),
                   bias=float(obj["bias"]), metrics=obj.get("metrics", {}))  # fmt: skip


def train_toxicity_classifier(*, config: ToxicityConfig = ToxicityConfig()) -> ToxicityClassifier:
    """Generate the data, fit the logistic regression, and report held-out accuracy.

    The loss is the mean binary cross-entropy plus ``l2 * |w|^2 / 2``, minimised by full-batch
    Adam. ``metrics["held_out_accuracy"]`` is measured on ``n_test`` clean texts (another seed,
    the whole lexicon including the held-out words).
    """
    rng = np.random.default_rng([config.seed, 402])
    held = rng.choice(len(TOXIC_LEXICON), size=config.held_out_words, replace=False)
    held_out = sorted(TOXIC_LEXICON[j] for j in held)
    lexicon = [w for w in TOXIC_LEXICON if w not in held_out]
    texts, y = make_toxicity_data(
        config.n_train, seed=config.seed, toxic_share=config.toxic_share, lexicon=lexicon,
        word_dropout=config.word_dropout, label_noise=config.label_noise,
    )  # fmt: skip
    vocab = tuple(sorted(set().union(*(_words(t) for t in texts))))
    # Sparse features (row, column) of the nonzeros; column len(vocab) is the bias. Sparse sums
    # (bincount) instead of dense matmuls: exact, single-threaded and fast on a busy CPU.
    index = {w: j for j, w in enumerate(vocab)}
    rows, cols = [], []
    for i, text in enumerate(texts):
        for j in sorted(index[w] for w in _words(text)) + [len(vocab)]:
            rows.append(i)
            cols.append(j)
    r, c = np.array(rows), np.array(cols)
    n, d = len(texts), len(vocab) + 1
    theta = np.zeros(d)
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    b1, b2, eps = 0.9, 0.999, 1e-8
    reg = np.full_like(theta, config.l2)
    reg[-1] = 0.0
    for t in range(1, config.steps + 1):
        p = 1.0 / (1.0 + np.exp(-np.bincount(r, weights=theta[c], minlength=n)))
        grad = np.bincount(c, weights=(p - y)[r], minlength=d) / n + reg * theta
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        theta -= config.learning_rate * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    clf = ToxicityClassifier(vocab=vocab, weights=theta[:-1].copy(), bias=float(theta[-1]))
    test_texts, test_y = make_toxicity_data(
        config.n_test, seed=config.seed + 7919, toxic_share=config.toxic_share
    )
    held_mask = np.array([bool(_words(t) & set(held_out)) for t in test_texts])
    metrics = {
        "train_accuracy": clf.accuracy(texts, y),
        "held_out_accuracy": clf.accuracy(test_texts, test_y),
        "held_out_word_accuracy": clf.accuracy(
            [t for t, h in zip(test_texts, held_mask, strict=True) if h], test_y[held_mask]
        ),
        "held_out_words": held_out,
        "config": asdict(config),
    }
    return ToxicityClassifier(vocab=vocab, weights=clf.weights, bias=clf.bias, metrics=metrics)
