"""The errors a run stops with (the CLI prints them as one ``error: ...`` line, exit status 1)."""


class RunError(RuntimeError):
    """A run that cannot go on; the message names what, where and the fix."""


class CheckpointError(RunError):
    """No intact checkpoint to resume from, or a run folder that may not be resumed as it is."""


class NonFiniteError(RunError):
    """The run cannot make progress: non-finite weights, losses, gradients or rewards."""
