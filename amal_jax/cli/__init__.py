"""The ``amal-jax`` command (:mod:`amal_jax.cli.main`): run a method on rules or teachers and
write what it learned; ``python -m amal_jax`` is the same command."""
