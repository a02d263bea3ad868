"""The implementation of amal_jax; the public names are re-exported by ``amal_jax``.

Nothing here is promised to users: import from ``amal_jax`` (and, for the few names that
baselines and benchmarks share with the core, ``amal_jax.internal``).
"""
