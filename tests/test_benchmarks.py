"""The speed benchmark runs end to end on tiny sizes and writes what it promises."""

from __future__ import annotations

import json
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import speed  # noqa: E402


def test_speed_benchmark_smoke(tmp_path):
    records = speed.main(
        [
            "--models",
            "mlp:8",
            "--variants",
            "plain,jvp,jvp_every10_static,jvp_head",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert [r["variant"] for r in records] == ["plain", "jvp", "jvp_every10_static", "jvp_head"]
    for r in records:
        assert r["ms"] > 0 and math.isfinite(r["ms"])
        assert r["ratio"] > 0
    assert records[0]["ratio"] == 1.0
    # The exact step does more arithmetic than the plain one; the head-only one less than it.
    by = {r["variant"]: r for r in records}
    assert by["jvp"]["flops_ratio"] > 2.0
    assert by["jvp_head"]["flops_ratio"] < by["jvp"]["flops_ratio"]
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data["environment"]["jax"] and len(data["records"]) == 4
    assert "| mlp | 8 | jvp |" in (tmp_path / "speed.md").read_text()


def test_speed_benchmark_rejects_unknown_variants(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="unknown variants"):
        speed.main(["--variants", "plain,warp", "--out", str(tmp_path)])
