"""The repository keeps its promises: README commands, CI script, public API."""

from __future__ import annotations

import pathlib

import amal_jax

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_two_commands():
    text = (ROOT / "README.md").read_text()
    assert text.splitlines()[0] == "# amal_jax"
    assert text.splitlines()[2] == "```bash"
    commands = readme_commands()
    assert len(commands) == 2
    assert all(c.startswith("python3 -m venv .venv") for c in commands)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


def test_public_api_is_complete():
    for name in amal_jax.__all__:
        assert hasattr(amal_jax, name), name
    public = {n for n in dir(amal_jax) if not n.startswith("_") and n not in amal_jax.__all__}
    # Only submodules may be visible beside __all__ (amal_jax.nnx once something imported it).
    assert public <= {"hypergradient", "losses", "mixing", "numerics", "step", "nnx"}, public
    for sub in (amal_jax.data, amal_jax.baselines):
        for name in sub.__all__:
            assert hasattr(sub, name), name


def test_core_imports_no_data_code():
    """The core modules (hypergradient, mixing, step, losses) never import amal_jax.data."""
    for module in ("hypergradient", "mixing", "numerics", "step", "losses"):
        text = (ROOT / "amal_jax" / f"{module}.py").read_text()
        assert "amal_jax.data" not in text and "sklearn" not in text, module
