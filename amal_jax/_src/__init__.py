"""amal_jax's implementation modules; the public names are those of ``amal_jax``."""
