"""The labeling tool: people rank completions in a browser; the answers export as ranked feedback.

`LabelStore` is the SQLite database (prompts, labelers, tasks, answers); `create_app` the
Starlette web app over it; `export_ranked` writes the ranked JSONL that `rlhf_jax.feedback` reads.
The command line is ``rlhf-jax label init | add-labeler | admin-token | serve | export``.
"""

from rlhf_jax.label.ranking import LabelError, TaskNotFound, parse_ranking
from rlhf_jax.label.records import PromptItem, Session, Task
from rlhf_jax.label.sources import read_completions, read_prompts, sample_completions
from rlhf_jax.label.store import LabelStore
from rlhf_jax.label.export import ExportReport, agreement, export_ranked, ranked_records


def create_app(db_path, **kwargs):
    """The web app over one database (see `rlhf_jax.label.app.create_app`); imports Starlette
    only when called."""
    from rlhf_jax.label.app import create_app as _create_app

    return _create_app(db_path, **kwargs)


__all__ = [
    "ExportReport",
    "LabelError",
    "LabelStore",
    "PromptItem",
    "Session",
    "Task",
    "TaskNotFound",
    "agreement",
    "create_app",
    "export_ranked",
    "parse_ranking",
    "ranked_records",
    "read_completions",
    "read_prompts",
    "sample_completions",
]
