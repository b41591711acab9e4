"""``python -m rlhf_jax.cli``: the ``rlhf-jax`` command."""

import sys

from rlhf_jax.cli import main

sys.exit(main())
