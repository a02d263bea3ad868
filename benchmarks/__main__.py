"""The benchmark suite on the bundled defaults, on whatever device JAX sees (CPU by default).

``python -m benchmarks`` runs every suite in turn and prints its tables; results land under
``results/`` (JSON + Markdown per suite, the distillation insight plots as PNG, and
``environment.json``: the device and the library versions, also written under each table's
title):

- ``speed``: the AMAL step against a plain step (``python -m benchmarks.speed --quick``, ~2 min);
- ``rules``: learning from rules on SMS, YouTube and SemEval, 5 seeds
  (``python -m benchmarks.rules``), with the learned trust per rule;
- ``kd``: distillation from CNN teachers with clean and noisy labels, 5 seeds
  (``python -m benchmarks.kd``); the
  Fashion-MNIST settings run when the Debian package ``dataset-fashion-mnist`` is installed
  and are skipped with a note otherwise.

``python -m benchmarks --suites speed,rules`` runs a subset. ``--profile`` sets the sizes:

- ``default``: the settings above (CPU-sized);
- ``accelerator``: for a GPU: the speed rows of the MLP at batch 256 and 1024, the CNN and
  ResNet-18 (with and without BatchNorm) at batch 256, with the bfloat16 rows, against PyTorch
  where it is installed, and 8 and 32 vmapped runs; rules with a 256-256 student, 8 seeds
  and 30 epochs; distillation with 256-256 students and 8 seeds;
- ``tiny``: the same commands at the smallest sizes (seconds per suite on a CPU; a check
  that the suite runs, not a measurement).

Every profile runs the same scripts; ``python -m benchmarks --profile P --dry-run`` prints
their command lines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import shlex
import time
from collections.abc import Callable

SUITE_NAMES = ("speed", "rules", "kd")
# ResNet-18 rows, larger batches and the many-runs measurement.
ACCELERATOR_MODELS = "mlp:256/1024,cnn:256,resnet18:256,resnet18_bn:256"
ACCELERATOR_VARIANTS = "plain,jvp,jvp_reuse,jvp_every10,jvp_every10_static,autodiff"


def _accelerator_speed() -> list[str]:
    args = ["--models", ACCELERATOR_MODELS, "--variants", ACCELERATOR_VARIANTS, "--bf16"]
    args += ["--runs", "8,32"]
    if importlib.util.find_spec("torch") is not None:
        args.append("--torch")
    return args


# Per profile and suite: the script's arguments, less --out (and the tiny profile's caches).
PROFILES: dict[str, dict[str, Callable[[], list[str]]]] = {
    "default": {
        "speed": lambda: ["--quick"],
        "rules": lambda: ["--plot"],
        "kd": lambda: ["--plot"],
    },
    "accelerator": {
        "speed": _accelerator_speed,
        "rules": lambda: ["--plot", "--hidden", "256,256", "--seeds", "8", "--epochs", "30"],
        "kd": lambda: ["--plot", "--hidden", "256,256", "--seeds", "8"],
    },
    "tiny": {
        "speed": lambda: [
            *("--models", "mlp:8", "--variants", "plain,jvp,jvp_every10_static,jvp_head"),
            *("--repeats", "3", "--runs", "2"),
        ],
        "rules": lambda: [
            *("--data", "youtube", "--seeds", "1", "--epochs", "1", "--max-features", "100"),
            *("--methods", "labelled,amal_trust", "--hidden", "16"),
        ],
        "kd": lambda: [
            *("--data", "synthetic", "--noise", "0.4", "--teacher-labels", "noisy"),
            *("--seeds", "1", "--epochs", "1", "--methods", "ce,amal_exact", "--hidden", "16"),
        ],
    },
}


def command_lines(profile: str, names: list[str], out: pathlib.Path) -> dict[str, list[str]]:
    """Each suite's arguments under ``profile``, writing into ``out / suite``."""
    lines = {}
    for name in names:
        args = [*PROFILES[profile][name](), "--out", str(out / name)]
        if profile == "tiny" and name in ("rules", "kd"):
            # Caches of their own, so that a check starts from nothing and leaves no trace.
            args += ["--compile-cache", ""]
            if name == "kd":
                args += ["--cache", str(out / "kd" / "teacher_cache")]
        lines[name] = args
    return lines


def _suite(name: str) -> Callable[[list[str]], object]:
    from benchmarks import kd, rules, speed

    return {"speed": speed.main, "rules": rules.main, "kd": kd.main}[name]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="profiles: default (CPU), accelerator (GPU sizes), tiny (a quick check)",
    )
    parser.add_argument(
        "--suites", default=",".join(SUITE_NAMES), help=f"comma-separated, from {SUITE_NAMES}"
    )
    parser.add_argument("--out", default="results", help="folder for every suite's results")
    parser.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        default="default",
        help="the sizes: default (CPU), accelerator (GPU: ResNet-18 rows, larger students, "
        "more seeds and epochs) or tiny (seconds; checks that everything runs)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print each suite's command line and stop"
    )
    args = parser.parse_args(argv)
    names = [s for s in args.suites.split(",") if s]
    unknown = set(names) - set(SUITE_NAMES)
    if unknown:
        raise SystemExit(f"unknown suites {sorted(unknown)}; choose from {list(SUITE_NAMES)}")
    out = pathlib.Path(args.out)
    lines = command_lines(args.profile, names, out)
    if args.dry_run:
        for name in names:
            print(f"python -m benchmarks.{name} {shlex.join(lines[name])}")
        return
    from benchmarks.environment import environment, environment_line

    env = environment()
    out.mkdir(parents=True, exist_ok=True)
    (out / "environment.json").write_text(json.dumps({"profile": args.profile, **env}, indent=1))
    print(f"profile {args.profile}; {environment_line(env)}", flush=True)
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        _suite(name)(lines[name])
        print(f"=== {name}: {time.perf_counter() - t0:.0f} s ===", flush=True)


if __name__ == "__main__":
    main()
