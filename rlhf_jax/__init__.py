"""rlhf_jax."""
