"""The benchmark suite on the bundled defaults, on whatever device JAX sees (CPU by default).

``python -m benchmarks`` runs every suite in turn and prints its tables; results land under
``results/`` (JSON + Markdown per suite, the distillation insight plots as PNG):

- ``speed``: the AMAL step against a plain step (``python -m benchmarks.speed --quick``, ~2 min);
- ``rules``: learning from rules on SMS, YouTube and SemEval, 5 seeds
  (``python -m benchmarks.rules``), with the learned trust per rule;
- ``kd``: distillation from CNN teachers with clean and noisy labels, 5 seeds
  (``python -m benchmarks.kd``); the
  Fashion-MNIST settings run when the Debian package ``dataset-fashion-mnist`` is installed
  and are skipped with a note otherwise.

``python -m benchmarks --suites speed,rules`` runs a subset.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from benchmarks import kd, rules, speed

SUITES = {
    "speed": lambda out: speed.main(["--quick", "--out", str(out / "speed")]),
    "rules": lambda out: rules.main(["--out", str(out / "rules"), "--plot"]),
    "kd": lambda out: kd.main(["--out", str(out / "kd"), "--plot"]),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suites", default=",".join(SUITES), help=f"comma-separated, from {list(SUITES)}"
    )
    parser.add_argument("--out", default="results", help="folder for every suite's results")
    args = parser.parse_args(argv)
    names = [s for s in args.suites.split(",") if s]
    unknown = set(names) - set(SUITES)
    if unknown:
        raise SystemExit(f"unknown suites {sorted(unknown)}; choose from {list(SUITES)}")
    out = pathlib.Path(args.out)
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        SUITES[name](out)
        print(f"=== {name}: {time.perf_counter() - t0:.0f} s ===", flush=True)


if __name__ == "__main__":
    main()
