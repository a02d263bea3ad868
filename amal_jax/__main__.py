"""``python -m amal_jax``: the ``amal-jax`` command."""

from amal_jax.cli.main import main

raise SystemExit(main())
