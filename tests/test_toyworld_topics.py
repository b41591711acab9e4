"""The toy world's on-topic check: hand-picked completions, then every informative completion of
the world against its own family and the others."""

import numpy as np
import pytest

from rlhf_jax import toyworld as tw
from rlhf_jax.toyworld.banks import NEUTRAL_SENTENCES, TOXIC_SHARED


@pytest.mark.parametrize("prompt, completion, votes, expected", [
    # The collapsed policy's answer to everything: a product clause, one vote for products.
    ("a horse is", "light and easy to carry . </s>", {"product": 1}, False),
    ("this phone is", "light and easy to carry . </s>", {"product": 1}, True),
    ("my new kettle is", "light and easy to carry . </s>", {"product": 1}, True),
    ("the room at the hotel was", "light and easy to carry . </s>", {"product": 1}, False),
    # Naming the subject next to a product clause: 1 animal vote ("horse") vs 1 product vote, a tie.
    ("a horse is", "a horse is light and easy to carry . </s>", {"animals": 1, "product": 1}, False),
    # What the SFT model writes for animals: informative animal clauses (one vote per clause).
    ("a horse is", "a large animal that lives on farms . a horse eats a lot of grass . </s>", {"animals": 2}, True),
    ("a dog is", "a loyal and playful friend . </s>", {"animals": 1}, True),
    # A clause with no word particular to hotels is still a hotel clause.
    ("our stay at the hotel was", "clean and quiet . </s>", {"hotel": 1}, True),
    # Filler and a bare insult say nothing about any topic.
    ("a dog is", "okay i guess . that is all . </s>", {}, False),
    ("this phone is", "shut up , this is stupid . </s>", {}, False),
    # Hype and insults count through the subject they name.
    ("a dog is", "the most awesome dog ever . </s>", {"animals": 1}, True),
    ("the staff at the inn were", "the most awesome phone ever . </s>", {"product": 1}, False),
    # Words outside any clause: markers "loyal", "friend", "sleeps" (animals); "a", "that", "lot"
    # mark nothing; reading stops at </s>.
    ("a dog is", "a loyal friend that sleeps a lot </s> the battery lasts all day", {"animals": 3}, True),
    # Half animal, half product: no majority.
    ("a dog is", "a loyal and playful friend . the battery lasts all day . </s>", {"animals": 1, "product": 1},
     False),
    # Advice about a cold room for a hot room: the same family (coarser than the gold rubric).
    ("my bedroom is too hot , what can i do ?", "put thick curtains on the windows . </s>", {"advice": 1}, True),
    ("my bedroom is too hot , what can i do ?", "use a fan to move the air . </s>", {"advice": 1}, True),
])
def test_hand_picked(prompt, completion, votes, expected):
    assert tw.topic_votes(completion) == votes
    assert tw.on_topic(prompt, completion) is expected
    assert tw.on_topic_scores([prompt], [completion]) == [float(expected)]


def test_markers_are_particular_to_one_family():
    markers = tw.topic_markers()
    assert set(markers) == set(tw.FAMILIES)
    for f, words in markers.items():
        for g, other in markers.items():
            assert f == g or not words & other
        assert not words & tw.FUNCTION_WORDS
    filler = {w for c in (*NEUTRAL_SENTENCES, *TOXIC_SHARED) for w in c.split()}
    assert not filler & set().union(*markers.values())
    assert {"carry", "battery", "phone"} <= markers["product"] and {"horse", "hay", "loyal"} <= markers["animals"]
    assert "light" not in markers["product"] | markers["advice"]  # "light and easy", "a light color"


def test_every_informative_completion_is_on_topic_for_its_family_only():
    rng = np.random.default_rng(0)
    prompts = tw.all_prompts()
    other = {f: next(p for p in prompts if p.family != f) for f in tw.FAMILIES}
    for p in prompts:
        for _ in range(2):
            c = tw.sample_completion(p, "informative", rng)
            assert tw.completion_family(c) == p.family, c
            assert tw.on_topic(p, c) and not tw.on_topic(other[p.family], c)
            assert not tw.on_topic(p, tw.sample_completion(p, "neutral", rng))
            assert not tw.on_topic(p, tw.sample_completion(p, "hype_repeated", rng))


def test_an_sft_like_mix_is_mostly_on_topic():
    # The default corpus mix (50% informative, 15% neutral, 25% toxic, 10% hype) on the animal
    # prompts: informative always, toxic and hype when they carry content or name the subject.
    rng = np.random.default_rng(1)
    animals = [p for p in tw.all_prompts() if p.family == "animals"]
    kinds = rng.choice(["informative", "neutral", "toxic", "hype"], p=[0.5, 0.15, 0.25, 0.1], size=400)
    pairs = [(p, tw.sample_completion(p, k, rng)) for p, k in zip(rng.choice(animals, size=400), kinds)]
    rate = np.mean(tw.on_topic_scores([p for p, _ in pairs], [c for _, c in pairs]))
    assert 0.55 < rate < 0.85
    assert tw.prompt_family(pairs[0][0].text) == "animals"


def test_errors():
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        tw.on_topic_scores(["a dog is", "a cat is"], ["x"])
    with pytest.raises(KeyError):
        tw.on_topic("not a world prompt", "x")
