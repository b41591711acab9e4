"""Small labeling databases for the label tests."""

from __future__ import annotations

from rlhf_jax.label import LabelStore, PromptItem

HOT = PromptItem(prompt_id="hot", prompt="My house is too hot.", completions=(
    "Nothing you can do.",                        # 0
    "Open the windows at night.",                 # 1
    "<script>alert('x')</script>It is not too hot.",  # 2
    "purple the the",                             # 3
))
DOG = PromptItem(prompt_id="dog", prompt="A dog is", completions=(" green", " a pet", " a furry animal"))


def make_db(path, items=(HOT, DOG), *, per_prompt=2, labelers=("ann", "bob")):
    """``(store, admin token, {name: token})``."""
    store, admin = LabelStore.create(path, list(items), criterion="helpfulness",
                                     instructions="# Rank by helpfulness\n\nBe careful.",
                                     instructions_id="test-v1", labelers_per_prompt=per_prompt)
    return store, admin, {name: store.add_labeler(name) for name in labelers}


def labeler_id(token: str) -> int:
    return int(token.split(".")[0])


def answer_in_display_order(store, lid, task_id, by_text):
    """The display-order values giving each completion text its rank in ``by_text``."""
    task = store.task(lid, task_id)
    return [by_text[c] for c in task.completions]
