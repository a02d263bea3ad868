"""What the benchmarks ran on: the device and the library versions, for every results table."""

from __future__ import annotations

import os
import platform

import jax
import optax


def environment() -> dict:
    """The device JAX sees first, the device count, and the versions of the libraries used."""
    dev = jax.devices()[0]
    env = {
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _version("jaxlib"),
        "flax": _version("flax"),
        "optax": optax.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["torch_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        env["torch"] = None
    return env


def environment_line(env: dict) -> str:
    """One Markdown sentence naming the device and the versions (under each table's title)."""
    return (
        f"Device: {env['device_kind']} ({env['platform']}, {env['device_count']} device(s)), "
        f"jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env.get('flax')}, optax "
        f"{env['optax']}, torch {env.get('torch')}, Python {env['python']}, "
        f"{env['cpu_count']} CPU cores."
    )


def _version(package: str) -> str | None:
    try:
        module = __import__(package)
    except ImportError:
        return None
    return getattr(module, "__version__", None)
