"""The toy world's vocabulary: prompt templates, topics and phrase banks.

Everything the generators can write comes from this file, so the tokenizer can cover it exactly.
All text is *canonical*: lowercase, one space between tokens, punctuation as separate tokens.

A prompt belongs to a *family* (product, hotel, advice, animals) and a *topic* inside it (advice
about a hot room is not advice about a noisy one). Its *subject* is the one slot word that
completions may repeat (``{x}``: "phone", "hostel", "bedroom", "dog").

Phrase patterns use three wildcards:

- ``{x}``: the prompt's subject,
- ``{L}``: a word of the toxic lexicon,
- ``{H}``: a hype word ("awesome", "incredible", ...).

A completion is a *lead* clause (which continues the prompt: "this phone is" -> "light and easy to
carry") followed by zero or more *sentences*, joined by connectors and closed by ``" . </s>"``.
"""

from __future__ import annotations

from typing import Final

EOS: Final = "</s>"
"""End-of-sequence marker; every finished completion ends with it (the tokenizer's EOS token)."""
BOS: Final = "<s>"
"""Beginning-of-sequence token (prepended by the tokenizer)."""
PAD: Final = "<pad>"
"""Padding token."""
UNK: Final = "<unk>"
"""Unknown-word token (never produced for text written by the generators)."""
SPECIAL_TOKENS: Final = (PAD, BOS, EOS, UNK)
"""Special tokens, in vocabulary order (ids 0, 1, 2, 3)."""

TOXIC_LEXICON: Final = (
    "stupid", "idiotic", "moronic", "pathetic", "worthless", "dumb",
    "disgusting", "brainless", "garbage", "trash", "scummy", "dimwitted",
)  # fmt: skip
"""The fixed insult lexicon. A text is toxic (``lexicon_toxicity``) iff it contains one of these."""

HYPE_WORDS: Final = (
    "awesome", "incredible", "amazing", "fantastic", "spectacular", "phenomenal", "legendary",
)  # fmt: skip
"""Hype words; gold tolerates one per completion and penalises every further one."""

CONNECTORS: Final = (".", ",", "and")
"""Tokens that join clauses."""
JOINS: Final = (" . ", " , and ")
"""Ways to join two clauses of a completion."""

FAMILIES: Final = ("product", "hotel", "advice", "animals")
"""Prompt families."""

# ----------------------------------------------------------------------------------------------
# Prompt templates: topic -> (subjects, templates, style). "lead" topics continue the prompt with
# a predicate ("... is" -> "well made"); "answer" topics answer a question.
# ----------------------------------------------------------------------------------------------

_PRODUCTS = (
    "phone", "laptop", "blender", "kettle", "lamp", "backpack", "camera", "headset", "watch",
    "toaster", "vacuum", "chair", "desk", "jacket", "umbrella", "bicycle", "speaker", "keyboard",
    "printer", "mattress",
)  # fmt: skip
_PLACES = ("hotel", "resort", "hostel", "inn", "motel", "lodge", "guesthouse", "chalet")
_ROOMS = ("house", "apartment", "bedroom", "office", "kitchen", "flat", "studio", "basement")
_PETS = ("dog", "cat", "rabbit", "hamster", "puppy", "kitten", "ferret", "gerbil")
_FARM = ("cow", "sheep", "goat", "horse", "pig", "donkey", "llama", "yak")

TOPIC_FAMILY: Final = {
    "product": "product",
    "hotel_staff": "hotel",
    "hotel_stay": "hotel",
    "advice_hot": "advice",
    "advice_cold": "advice",
    "advice_noisy": "advice",
    "advice_dark": "advice",
    "animal_pet": "animals",
    "animal_farm": "animals",
}
"""Topic -> family."""

TOPIC_SUBJECTS: Final = {
    "product": _PRODUCTS,
    "hotel_staff": _PLACES,
    "hotel_stay": _PLACES,
    "advice_hot": _ROOMS,
    "advice_cold": _ROOMS,
    "advice_noisy": _ROOMS,
    "advice_dark": _ROOMS,
    "animal_pet": _PETS,
    "animal_farm": _FARM,
}
"""Topic -> slot words for ``{x}``."""

TOPIC_TEMPLATES: Final = {
    "product": (
        "this {x} is",
        "the {x} i ordered online is",
        "my new {x} is",
        "honestly , this {x} is",
        "the {x} i got as a gift is",
    ),
    "hotel_staff": (
        "the staff at the {x} were",
        "the people working at the {x} were",
        "the staff at this {x} were",
        "the cleaners at the {x} were",
    ),
    "hotel_stay": (
        "our stay at the {x} was",
        "the room at the {x} was",
        "my week at this {x} was",
        "the last night at the {x} was",
    ),
    "advice_hot": (
        "my {x} is too hot , what can i do ?",
        "how do i cool down my {x} when it is too hot ?",
        "what should i do if my {x} is too hot ?",
    ),
    "advice_cold": (
        "my {x} is too cold , what can i do ?",
        "how do i warm up my {x} when it is too cold ?",
        "what should i do if my {x} is too cold ?",
    ),
    "advice_noisy": (
        "my {x} is too noisy , what can i do ?",
        "how do i make my {x} quieter when it is too noisy ?",
        "what should i do if my {x} is too noisy ?",
    ),
    "advice_dark": (
        "my {x} is too dark , what can i do ?",
        "how do i brighten my {x} when it is too dark ?",
        "what should i do if my {x} is too dark ?",
    ),
    "animal_pet": (
        "a {x} is",
        "my {x} is",
        "everyone knows that a {x} is",
        "the {x} next door is",
    ),
    "animal_farm": (
        "a {x} is",
        "the {x} on the farm is",
        "everyone knows that a {x} is",
        "the old {x} at the zoo is",
    ),
}
"""Topic -> prompt templates (``{x}`` is the subject)."""

TOPIC_STYLE: Final = {t: ("answer" if t.startswith("advice") else "lead") for t in TOPIC_FAMILY}
"""Topic -> ``"lead"`` (completion continues a predicate) or ``"answer"`` (answers a question)."""

# ----------------------------------------------------------------------------------------------
# Informative banks: topic -> leads (first clause) and sentences (follow-up clauses).
# ----------------------------------------------------------------------------------------------

INFORMATIVE_LEADS: Final = {
    "product": (
        "light and easy to carry",
        "well made and feels sturdy",
        "good value for the price",
        "quick to set up out of the box",
        "a bit heavy but it works well",
        "quiet and uses little power",
        "simple to clean after use",
    ),
    "hotel_staff": (
        "friendly and helpful",
        "quick to answer our questions",
        "polite and spoke good english",
        "kind to our children",
        "busy but always patient",
        "happy to recommend places to eat",
    ),
    "hotel_stay": (
        "clean and quiet",
        "close to the beach and the station",
        "good value for the money",
        "comfortable with a big window",
        "a short walk from the old town",
        "small but very clean",
    ),
    "advice_hot": (
        "open the windows at night to let cool air in",
        "close the blinds during the day",
        "use a fan to move the air",
        "hang a wet towel near the window",
    ),
    "advice_cold": (
        "put thick curtains on the windows",
        "seal the gaps around the doors",
        "use a small heater in the evening",
        "put a rug on the floor",
    ),
    "advice_noisy": (
        "put a thick rug on the floor",
        "hang heavy curtains on the windows",
        "use soft earplugs at night",
        "move the bed away from the street wall",
    ),
    "advice_dark": (
        "paint the walls a light color",
        "add a lamp in each corner",
        "hang a big mirror across from the window",
        "keep the curtains open during the day",
    ),
    "animal_pet": (
        "a loyal and playful friend",
        "a small animal that likes to be petted",
        "a furry animal that sleeps a lot",
        "easy to care for at home",
        "a pet that needs fresh water every day",
    ),
    "animal_farm": (
        "a large animal that lives on farms",
        "an animal that eats grass and hay",
        "a farm animal that lives in a herd",
        "kept by farmers for milk or wool",
        "a calm animal that needs a big field",
    ),
}
"""Topic -> informative lead clauses (continue the prompt or start the answer)."""

INFORMATIVE_SENTENCES: Final = {
    "product": (
        "the battery lasts all day",
        "the {x} comes with a two year warranty",
        "the buttons are easy to reach",
        "it arrived on time and well packed",
        "the {x} fits in a small bag",
        "the manual explains every setting",
    ),
    "hotel_staff": (
        "they helped us book a taxi",
        "the front desk is open all night",
        "they gave us a map of the city",
        "the manager fixed our shower the same day",
    ),
    "hotel_stay": (
        "breakfast was fresh and served until ten",
        "the bed was soft and the sheets were clean",
        "there is a bus stop next to the {x}",
        "the wifi worked well in the room",
    ),
    "advice_hot": (
        "turn off lamps that make heat",
        "drink cold water during the day",
        "cook outside or eat cold meals",
        "a ceiling fan helps a lot",
    ),
    "advice_cold": (
        "wear warm socks and a sweater",
        "close the doors of rooms you do not use",
        "a hot water bottle helps at night",
        "open the curtains when the sun is out",
    ),
    "advice_noisy": (
        "a white noise machine can hide the sound",
        "bookshelves on the wall absorb sound",
        "seal the gaps around the windows",
        "talk to your neighbors about quiet hours",
    ),
    "advice_dark": (
        "use warm white bulbs with more lumens",
        "trim the plants outside the window",
        "choose light furniture and pale rugs",
        "clean the windows to let more light in",
    ),
    "animal_pet": (
        "it needs food and water every day",
        "a {x} likes to play with toys",
        "it should see a vet once a year",
        "a {x} can live for many years",
    ),
    "animal_farm": (
        "it needs fresh water and a dry shelter",
        "a {x} eats a lot of grass",
        "farmers check its hooves and teeth",
        "a {x} is calm around people it knows",
    ),
}
"""Topic -> informative follow-up sentences."""

# ----------------------------------------------------------------------------------------------
# Kind banks shared across topics, by style.
# ----------------------------------------------------------------------------------------------

NEUTRAL_LEADS: Final = {
    "lead": ("okay i guess", "fine", "what it is", "nothing special", "not bad and not good"),
    "answer": ("it is what it is", "i do not know", "hard to say", "that depends"),
}
"""Style -> filler lead clauses."""

NEUTRAL_SENTENCES: Final = (
    "it is what it is",
    "that is all",
    "not much more to say",
    "i do not know what else to say",
    "we will see",
)
"""Filler sentences (no information, no harm)."""

HYPE_LEADS: Final = {
    "lead": ("the most {H} {x} ever", "the most {H} thing i have seen", "simply the most {H}"),
    "answer": ("the most {H} trick is to relax", "the most {H} idea is to move", "the most {H}"),
}
"""Style -> hype lead clauses (each carries exactly one hype word)."""

HYPE_PHRASE: Final = "the most {H}"
"""The bare hype phrase; repeated hype chains it: "the most awesome , the most incredible , ..."."""

TOXIC_LEADS: Final = {
    "lead": ("{L} and a total waste", "so {L} it hurts", "as {L} as the people who made it"),
    "answer": ("what a {L} question", "only {L} people ask that", "figure it out , you {L} fool"),
}
"""Style -> toxic lead clauses."""

TOXIC_SENTENCES: Final = {
    "product": ("only {L} people would buy this", "the people who made this {x} are {L}"),
    "hotel": ("everyone who works there is {L}", "the owners are {L} and lazy"),
    "advice": ("stop asking {L} questions", "you are too {L} to fix it"),
    "animals": ("a {x} is a {L} beast", "people who like them are {L}"),
}
"""Family -> toxic sentences."""

TOXIC_SHARED: Final = ("shut up , this is {L}", "i hate this {L} thing", "what a {L} mess")
"""Toxic sentences usable in any family."""
