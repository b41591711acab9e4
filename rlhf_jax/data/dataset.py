"""One dataset ready for a stage: its rows, its format and the chat template, plus the report of
what an encoder kept, truncated and skipped (counted, never silent)."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from rlhf_jax.data.chat import ChatTemplate, require_template, resolve_chat_template
from rlhf_jax.data.errors import DataError
from rlhf_jax.data.formats import DatasetFormat, Kind, detect_format
from rlhf_jax.data.packing import PackReport
from rlhf_jax.data.sources import Rows, load_rows


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where a stage's data comes from and how it is read (shared by every stage)."""

    format: str | None = None
    """Force the dataset format instead of detecting it: a kind (``language_modeling``,
    ``prompt_only``, ``prompt_completion``, ``preference``, ``implicit_preference``), optionally
    prefixed ``standard_`` or ``conversational_``."""
    split: str | None = None
    """The split of a DatasetDict (a ``save_to_disk`` folder or object); not for single files."""
    chat_template: str | None = None
    """A ``.jinja`` file with the chat template, overriding (or supplying) the tokenizer's own."""


class Loaded(NamedTuple):
    """A dataset with its format and template."""

    rows: Rows
    """The rows and where each came from."""
    format: DatasetFormat
    """The detected (or forced) format."""
    template: ChatTemplate | None
    """The chat template (always set for conversational data)."""


def load_dataset(data: Any, tokenizer, *, config: DataConfig = DataConfig(),
                 kinds: tuple[Kind, ...] | None = None, stage: str = "this stage") -> Loaded:
    """Read ``data`` (a path, a ``datasets`` object or a list of rows), detect its format and
    resolve the chat template.

    Args:
      kinds: the kinds the stage accepts (error otherwise, naming them); None: any.
      stage: the stage's name, for that error.

    Raises:
      DataError: unreadable source, a row that fits no format, a kind the stage does not take;
        ``ChatTemplateError`` for conversational data without a template (naming ``--chat_template``).
    """
    rows = load_rows(data, split=config.split)
    fmt = detect_format(rows, force=config.format)
    if kinds is not None and fmt.kind not in kinds:
        raise DataError(f"{rows.source}: {stage} takes {' or '.join(k.value for k in kinds)} data, but this dataset "
                        f"is {fmt.name} (force another reading of the fields with --format)")
    template = resolve_chat_template(tokenizer, config.chat_template)
    if fmt.conversational:
        require_template(template, tokenizer, where=rows.source)
    return Loaded(rows, fmt, template)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncodeReport:
    """What an encoder made of a dataset."""

    source: str
    """The file or object the rows came from."""
    format: str
    """The dataset format's name, e.g. ``conversational_prompt_completion``."""
    rows: int
    """Rows read."""
    kept_indices: tuple[int, ...]
    """Indices of the rows that were kept, in output order."""
    truncated: int = 0
    """Kept rows that lost tokens (see the encoder for which end)."""
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    """Rows left out, counted by reason (``too_long``, ``completion_too_long``, ``no_loss_tokens``)."""
    packing: PackReport | None = None
    """How the kept examples were packed, when they were."""

    @property
    def kept(self) -> int:
        """Rows kept (``rows == kept + n_skipped``)."""
        return len(self.kept_indices)

    @property
    def n_skipped(self) -> int:
        """Rows left out, all reasons together."""
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line (two with packing) for logs."""
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()) if n) or "none"
        text = (f"{self.source}: {self.format}: {self.rows} rows, {self.kept} kept, {self.truncated} truncated, "
                f"skipped: {reasons}")
        return text if self.packing is None else f"{text}\n  {self.packing.summary()}"


def bos_ids(tokenizer) -> list[int]:
    """``[bos]`` when the tokenizer puts one in front of a text by default (standard data), else ``[]``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [int(bos)] if probe and probe[0] == bos else []


def text_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added."""
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def padding_id(tokenizer) -> int:
    """The pad id, else the EOS id (padding is masked, its id is never read)."""
    for name in ("pad_token_id", "eos_token_id"):
        if getattr(tokenizer, name, None) is not None:
            return int(getattr(tokenizer, name))
    raise DataError(f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token to pad with: set "
                    "tokenizer.pad_token")
