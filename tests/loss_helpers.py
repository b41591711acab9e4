"""Helpers shared by the loss tests."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads


def assert_trees_close(a, b, rtol=1e-6, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def grads_x64(f, *args):
    """check_grads of jit(f) on float64 copies of ``args`` (x64 only inside this context)."""
    with jax.enable_x64(True):
        args64 = tuple(jnp.asarray(np.asarray(a, np.float64)) for a in args)
        check_grads(jax.jit(f), args64, order=1, modes=("rev",))
