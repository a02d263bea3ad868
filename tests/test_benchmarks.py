"""The speed benchmark runs end to end on tiny sizes and writes what it promises."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import statistics

import pytest

# pytest runs from the repository root, which pyproject.toml puts on sys.path (pythonpath).
from benchmarks import scale, speed

# The plots need matplotlib (the bench extra); the test extra does not have it.
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    """``python -m benchmarks --profile tiny``, once: the folder of its results."""
    from benchmarks import __main__ as suite

    out = tmp_path_factory.mktemp("tiny_suite")
    suite.main(["--profile", "tiny", "--out", str(out)])
    return out


def test_speed_benchmark_smoke(tiny_suite):
    # The tiny profile's speed part: the MLP at batch 8, four variants, 3 pairs, 2 runs.
    tmp_path = tiny_suite / "speed"
    records = json.loads((tmp_path / "speed.json").read_text())["records"]
    assert [r["variant"] for r in records] == ["plain", "jvp", "jvp_every10_static", "jvp_head"]
    for r in records:
        for key in ("ms", "plain_ms"):
            assert r[key] > 0 and math.isfinite(r[key]), key
    # The plain step's row: 1 by definition, no pairs.
    plain = records[0]
    assert plain["ratio"] == plain["ratio_min"] == plain["ratio_max"] == 1.0
    assert plain["pairs"] == 0 and plain["ratios"] == []
    # Every other row: the median of its 3 per-pair ratios to the plain step.
    for r in records[1:]:
        assert r["pairs"] == 3 and len(r["ratios"]) == 3, r["variant"]
        assert all(x > 0 and math.isfinite(x) for x in r["ratios"]), r["variant"]
        assert r["ratio"] == statistics.median(r["ratios"]), r["variant"]
        assert r["ratio_min"] == min(r["ratios"]) <= r["ratio"] <= max(r["ratios"])
        assert r["ratio_max"] == max(r["ratios"]), r["variant"]
    # The exact step does more arithmetic than the plain one; the head-only one less than it.
    by = {r["variant"]: r for r in records}
    assert by["jvp"]["flops_ratio"] > 2.0
    assert by["jvp_head"]["flops_ratio"] < by["jvp"]["flops_ratio"]
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data["environment"]["jax"] and len(data["records"]) == 4
    assert data["records"][1]["ratios"] == by["jvp"]["ratios"]
    md = (tmp_path / "speed.md").read_text()
    assert "| mlp | 8 | plain | " in md and "| 1.00 | - |" in md
    jvp = by["jvp"]
    assert f"| {jvp['ratio']:.2f} | {jvp['ratio_min']:.2f}-{jvp['ratio_max']:.2f} |" in md
    assert "median of the per-pair ratios" in md
    # Many runs in one program: 2 runs vmapped against the same 2 runs one after the other.
    (many,) = data["runs"]
    assert many["runs"] == 2 and many["pairs"] == 3 and len(many["throughput_ratios"]) == 3
    assert many["throughput_ratio"] == statistics.median(many["throughput_ratios"]) > 0
    for key in ("vmapped_run_steps_per_s", "sequential_run_steps_per_s"):
        assert many[key] > 0 and math.isfinite(many[key])
    assert "| 2 | mlp 32-64-64-10 | 64 |" in md


def test_pairs_alternate_and_report_the_median_of_the_per_pair_ratios():
    calls = []

    def fake(name, durations):
        durations = iter(durations)

        def repeat():
            calls.append(name)
            return next(durations)

        return repeat

    # Pair k times variant[k] against plain[k]; the plain step's times drift between pairs.
    variant = fake("variant", [3.0, 2.0, 10.0, 4.0, 5.0])
    plain = fake("plain", [1.0, 2.0, 5.0, 1.0, 2.0])
    got = speed.pair_with(variant, plain, 5)
    assert calls == ["variant", "plain", "plain", "variant"] * 2 + ["variant", "plain"]
    assert got["ratios"] == [3.0, 1.0, 2.0, 4.0, 2.5]
    # The median of the ratios, not the ratio of the medians (4.0 / 2.0).
    assert got["ratio"] == 2.5
    assert (got["ratio_min"], got["ratio_max"], got["pairs"]) == (1.0, 4.0, 5)
    assert (got["ms"], got["plain_ms"]) == (4000.0, 2000.0)
    # The plain step alone: the median of its repeats, ratio 1 by definition.
    alone = speed.time_alone(fake("plain", [2.0, 9.0, 1.0]), 3)
    assert alone["ms"] == alone["plain_ms"] == 2000.0
    assert (alone["ratio"], alone["pairs"], alone["ratios"]) == (1.0, 0, [])


def test_run_pairs_jax_rows_with_plain_and_torch_rows_with_torch_plain(monkeypatch):
    # Seconds per step of each fake variant, and its temporary bytes.
    cost = {"plain": 1.0, "jvp": 3.0, "torch_plain": 2.0, "torch_recipe": 10.0}
    prepared = []

    def fake_prepare(name, batch, variant, train, val):
        prepared.append(variant)
        info = {"compile_s": None, "temp_bytes": 100 * cost[variant], "flops": None}
        return (lambda: cost[variant]), info

    monkeypatch.setattr(speed, "prepare", fake_prepare)
    variants = ["jvp", "plain", "torch_recipe", "torch_plain"]
    records = speed.run({"mlp": (8,)}, variants, 3, lambda record, records: None)
    # Each reference is prepared once, before the first variant that needs it.
    assert prepared == ["plain", "jvp", "torch_plain", "torch_recipe"]
    by = {r["variant"]: r for r in records}
    assert by["jvp"]["ratios"] == [3.0] * 3 and by["jvp"]["plain_ms"] == 1000.0
    assert by["torch_recipe"]["ratios"] == [5.0] * 3 and by["torch_recipe"]["plain_ms"] == 2000.0
    assert by["torch_recipe"]["temp_ratio"] == 5.0 and by["jvp"]["temp_ratio"] == 3.0
    for ref in ("plain", "torch_plain"):
        assert by[ref]["ratio"] == 1.0 and by[ref]["pairs"] == 0
        assert by[ref]["ms"] == 1000.0 * cost[ref]
    assert speed.torch_vs_jax(records) == ["| mlp | 8 | jvp | 3.33x |"]


def test_speed_bf16_variants_run_in_bfloat16_and_track_float32():
    import jax
    import jax.numpy as jnp
    import numpy as np

    train, val = speed.make_data("mlp", 8, 0)
    losses = {}
    for variant in ("plain", "plain_bf16", "jvp", "jvp_bf16"):
        (fn,), carry = speed.build("mlp", 8, variant)
        if variant == "jvp_bf16":
            assert carry.config.compute_dtype == jnp.bfloat16
        text = str(jax.make_jaxpr(fn)(carry, train, val))
        assert ("bf16" in text) == variant.endswith("bf16"), variant
        carry, out = jax.jit(fn)(carry, train, val)
        loss = out if variant.startswith("plain") else out["loss"]
        assert loss.dtype == jnp.float32
        losses[variant] = float(loss)
    np.testing.assert_allclose(losses["plain_bf16"], losses["plain"], rtol=5e-2)
    np.testing.assert_allclose(losses["jvp_bf16"], losses["jvp"], rtol=5e-2)


def test_scale_benchmark_table_rows(tmp_path):
    """One device here: the sharded and replicated tables are the same program, paired."""
    out = scale.main(["--quick", "--parts", "table", "--repeats", "2", "--out", str(tmp_path)])
    (row,) = out["table"]
    assert out["devices"] == out["bf16"] == []
    assert row["num_examples"] == 1024 and row["devices"] == 1 and len(row["ratios"]) == 2
    assert row["ratio"] == statistics.median(row["ratios"]) > 0
    assert row["sharded_table_bytes_per_device"] == row["replicated_table_bytes_per_device"]
    assert row["sharded_table_bytes_per_device"] == 1024 * 2 * 4
    data = json.loads((tmp_path / "scale.json").read_text())
    assert data["table"][0]["ratios"] == row["ratios"] and data["environment"]["jax"]
    assert not data["environment"]["simulated_cpu_devices"]
    md = (tmp_path / "scale.md").read_text()
    assert "| mlp | 32 | 1 | 1,024 |" in md and "simulated" not in md
    with pytest.raises(SystemExit, match="unknown parts"):
        scale.main(["--parts", "devices,speed", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="table size"):
        scale.main(["--table-sizes", "8", "--out", str(tmp_path)])


def test_speed_benchmark_rejects_unknown_variants(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="unknown variants"):
        speed.main(["--variants", "plain,warp", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="jvp_bf16"):
        speed.main(["--variants", "plain,bf16", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--runs"):
        speed.main(["--runs", "8,x", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--repeats"):
        speed.main(["--repeats", "-1", "--out", str(tmp_path)])


def _tiny_wrench(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A small WRENCH directory: two classes told apart by keywords, three noisy keyword LFs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = {0: ["song", "love", "great", "music"], 1: ["check", "subscribe", "free", "link"]}
    path.mkdir()

    def split(n, labelled=0):
        rows = {}
        for i in range(n):
            y = int(rng.integers(0, 2))
            text = " ".join(rng.choice(words[y], 3)) + " " + " ".join(rng.choice(words[1 - y], 1))
            votes = [
                0 if "song" in text else -1,
                1 if "check" in text else -1,
                1 if "free" in text or rng.random() < 0.2 else -1,
            ]
            rows[str(i)] = {"label": y, "weak_labels": votes, "data": {"text": text}}
        return rows

    for name, n in (("train", 60), ("valid", 18), ("test", 20)):
        (path / f"{name}.json").write_text(json.dumps(split(n)))
    (path / "label.json").write_text(json.dumps({"0": "HAM", "1": "SPAM"}))
    (path / "labeled_ids.json").write_text(json.dumps([str(i) for i in range(8)]))
    return path


def test_rules_benchmark_runs_every_method(tmp_path):
    from benchmarks import rules

    data = _tiny_wrench(tmp_path / "tiny")
    records = rules.main(
        [
            "--data",
            str(data),
            "--seeds",
            "1",
            "--epochs",
            "2",
            "--max-features",
            "40",
            "--out",
            str(tmp_path / "out"),
            "--compile-cache",
            str(tmp_path / "jax"),
            "--methods",
            ",".join(rules.METHODS),
            *(["--plot"] if HAVE_MATPLOTLIB else []),
        ]
    )
    names = [r["method"].split(" ")[0] for r in records]
    for method in rules.METHODS:
        assert method in names, method
    assert names[-2:] == ["amal_selected", "amal_amortised"]
    saved = json.loads((tmp_path / "out" / "rules.json").read_text())
    assert len(saved) == len(records)
    for r in saved:
        for key in ("accuracy", "macro_f1"):
            assert set(r[key]) == {"mean", "std"}
            assert 0.0 <= r[key]["mean"] <= 1.0
        assert r["seconds"] >= 0 and r["method"]
        assert r["configs"] >= 1
    by_name = {r["method"].split(" ")[0]: r for r in saved}
    assert by_name["labelled+mv"]["configs"] == 3
    assert by_name["labelled+val+mv"]["configs"] == 3
    assert by_name["mwn"]["configs"] == len(rules.MWN_LRS) == 3
    assert by_name["mwn"]["method"].startswith("mwn (meta_lr=")
    assert by_name["amal_trust"]["configs"] == 1
    # amal_selected is the selectable AMAL row with the best selection score.
    chosen = by_name["amal_selected"]
    pool = [by_name[m] for m in rules.SELECTABLE]
    best = max(pool, key=lambda r: r["selection_macro_f1"]["mean"])
    assert chosen["method"] == f"amal_selected ({best['method']})"
    # Seed j of every row selects on validation fold j % 3 (one seed here: fold 0).
    for r in saved:
        assert len(r["per_seed"]["macro_f1"]) == 1
        assert r["folds"] == [0], r["method"]
    assert chosen["configs"] == sum(r["configs"] for r in pool)
    # The amortised row reruns the selected variant with a meta update every 5th step.
    amortised = by_name["amal_amortised"]
    base = best["method"].split(" ")[0]
    assert amortised["method"] == f"amal_amortised ({base}, meta every 5)"
    assert amortised["full_seconds"] == best["seconds"]
    plain = by_name[rules.PLAIN_REFERENCE[base]]
    assert amortised["plain_seconds"] == plain["seconds_per_config"]
    assert amortised["cost_vs_plain"] == amortised["seconds"] / amortised["plain_seconds"]
    train_s = amortised["seconds"] - amortised["compile_seconds"]
    plain_s = (plain["seconds"] - plain["compile_seconds"]) / plain["configs"]
    assert amortised["cost_vs_plain_training"] == train_s / plain_s
    assert 0 < amortised["compile_seconds"] < amortised["seconds"]
    assert "amortised: amal_amortised" in (tmp_path / "out" / "rules.md").read_text()
    # The learned trust per rule, with each rule's coverage and accuracy on validation.
    trust = json.loads((tmp_path / "out" / "trust_tiny.json").read_text())
    assert len(trust) == 3
    for t in trust:
        assert 0.0 <= t["trust_mean"] <= 2.0 and 0.0 <= t["valid_coverage"] <= 1.0
    assert (tmp_path / "out" / "trust_tiny.csv").read_text().startswith("lf,trust_mean")
    assert (tmp_path / "out" / "trust_tiny.png").exists() == HAVE_MATPLOTLIB
    md = (tmp_path / "out" / "rules.md").read_text()
    assert "macro_f1: **" in md and "against the best baseline" in md


def test_rules_verdicts():
    from benchmarks import rules

    def row(m, s):
        return {"method": "amal_selected (x)", "macro_f1": {"mean": m, "std": s}}

    best = {"method": "b", "macro_f1": {"mean": 0.80, "std": 0.01}}
    assert "**win**" in rules.verdict(row(0.83, 0.02), best, "macro_f1")
    assert "**tie**" in rules.verdict(row(0.815, 0.02), best, "macro_f1")
    assert "**loss**" in rules.verdict(row(0.75, 0.01), best, "macro_f1")


def test_yardstick_line_judges_the_validation_chosen_baseline_against_the_others():
    from benchmarks.report import yardstick_line

    def row(name, test, sel, std=0.01):
        return {
            "method": name,
            "macro_f1": {"mean": test, "std": std},
            "selection_macro_f1": {"mean": sel, "std": 0.0},
        }

    # "a" has the best selection score; the best *other* baseline by test is "c".
    rows = [row("a", 0.80, 0.9), row("b", 0.70, 0.5), row("c", 0.85, 0.6)]
    line = yardstick_line(rows, "macro_f1", "selection_macro_f1")
    assert "**loss**: a 80.0" in line and "best baseline c 85.0" in line
    rows[0] = row("a", 0.90, 0.9)  # best on test too: judged against c, not itself
    assert "**win**: a 90.0" in yardstick_line(rows, "macro_f1", "selection_macro_f1")
    assert yardstick_line(rows[:1], "macro_f1", "selection_macro_f1") is None


def _tiny_kd_npz(path: pathlib.Path) -> pathlib.Path:
    import numpy as np

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3
    y = rng.integers(0, 3, 240)
    x = centers[y] + rng.normal(size=(240, 6))
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def test_kd_benchmark_runs_every_method(tmp_path):
    from benchmarks import kd

    data = str(_tiny_kd_npz(tmp_path / "tiny.npz"))
    records = kd.main(
        [
            "--data",
            data,
            "--noise",
            "0.4",
            "--teacher-labels",
            "noisy",
            "--teachers",
            "2",
            "--seeds",
            "1",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--cache",
            str(tmp_path / "cache"),
            "--compile-cache",
            str(tmp_path / "jax"),
        ]
    )
    names = [r["method"].split(" ")[0] for r in records]
    assert sorted(names) == sorted([*kd.METHODS, "amal_selected"])
    assert names[-2:] == ["amal_selected", "amal_amortised"]
    saved = json.loads((tmp_path / "out" / "kd.json").read_text())
    assert len(saved) == len(records)
    by = {r["method"].split(" ")[0]: r for r in saved}
    for r in saved:
        for key in ("accuracy", "macro_f1", "selection_accuracy"):
            assert set(r[key]) == {"mean", "std"} and 0 <= r[key]["mean"] <= 1
        assert len(r["per_seed"]["accuracy"]) == 1 and r["seconds"] >= 0
        assert r["setting"] == {
            "data": data,
            "noise": 0.4,
            "teachers": 2,
            "teacher_labels": "noisy",
        }
    # Equal tuning budgets: every tuned method tried kd.CONFIGS configurations.
    for method in ("kd", "mwn", "kd+val", "amal_selected"):
        assert by[method]["configs"] == kd.CONFIGS, method
    for method in ("ce", "l2rw", "amal_paper", "ce+val", "val"):
        assert by[method]["configs"] == 1 and by[method]["chosen"] is None, method
        assert by[method]["method"] == method  # nothing chosen, nothing in the name
    for method in ("amal_exact", "amal_net", "amal_trust"):
        assert by[method]["configs"] == 1, method
    # Seed j of every method selects on validation fold j % 3 (one seed here: fold 0).
    for r in saved:
        assert r["folds"] == [0], r["method"]
    assert by["kd"]["chosen"]["alpha"] in kd.ALPHAS
    assert by["mwn"]["chosen"]["meta_lr"] in kd.MWN_LRS
    assert by["kd+val"]["chosen"]["alpha"] in kd.ALPHAS
    for method in ("amal_exact", "amal_net", "amal_trust"):
        assert by[method]["chosen"]["init_alpha"] == by["kd"]["chosen"]["alpha"], method
    # The selected AMAL variant is the one with the best mean selection accuracy.
    amal = [r for r in saved if r["method"].split(" ")[0] in kd.SELECTABLE]
    best = max(amal, key=lambda r: r["selection_accuracy"]["mean"])
    assert by["amal_selected"]["configs"] == sum(r["configs"] for r in amal)
    assert by["amal_selected"]["method"] == f"amal_selected ({best['method']})"
    assert by["amal_selected"]["accuracy"] == best["accuracy"]
    base = best["method"].split(" ")[0]
    assert by["amal_amortised"]["method"] == f"amal_amortised ({base}, meta every 5)"
    plain = by[kd.PLAIN_REFERENCE[base]]
    assert by["amal_amortised"]["plain_seconds"] == plain["seconds"] / plain["configs"]
    teachers = json.loads((tmp_path / "out" / "kd_teachers.json").read_text())
    assert [t["teacher"] for t in teachers] == ["mlp 512-512", "mlp 128"]  # not an image
    assert all(t["student_ce"] == by["ce"]["accuracy"]["mean"] for t in teachers)
    assert "student ce acc" in (tmp_path / "out" / "kd.md").read_text()
    # The teachers were cached: a second run trains none.
    assert len(list((tmp_path / "cache").glob("teacher-*.npz"))) == 2


def test_kd_amal_selected_is_chosen_by_selection_score_not_test():
    from benchmarks import kd

    def rec(method, test, selection):
        return {
            "method": method,
            "accuracy": {"mean": test, "std": 0.0},
            "selection_accuracy": {"mean": selection, "std": 0.0},
            "configs": 1,
        }

    records = [
        rec("kd (alpha=0.9)", 0.99, 0.99),  # not an AMAL variant
        rec("amal_paper", 0.95, 0.95),  # the authors' preset: reported, not a candidate
        rec("amal_exact", 0.70, 0.90),
        rec("amal_net", 0.90, 0.85),
        rec("amal_selected (amal_paper)", 0.95, 0.99),  # an earlier choice is no candidate
    ]
    chosen = kd.select_amal(records)
    assert chosen["method"] == "amal_selected (amal_exact)"
    assert chosen["configs"] == 2
    assert chosen["accuracy"]["mean"] == 0.70
    assert kd.select_amal(records[:1]) is None


def test_kd_settings_from_the_command_line():
    import pytest

    from benchmarks import kd

    def settings(*argv):
        return kd.parse_settings(kd.parse_args(list(argv)))

    assert settings() == list(kd.DEFAULT_SETTINGS)
    labels = {(s.data, s.noise, s.teacher_labels) for s in kd.DEFAULT_SETTINGS}
    for data in ("digits", "fashion_mnist"):
        assert {(data, 0.0, "clean"), (data, 0.4, "noisy"), (data, 0.4, "clean")} <= labels
    assert any(s.teachers == 3 for s in kd.DEFAULT_SETTINGS)
    # A file gets all three variants; with --noise R both teacher variants at R ...
    assert [(s.noise, s.teacher_labels) for s in settings("--data", "f.npz")] == [
        (0.0, "clean"),
        (0.4, "noisy"),
        (0.4, "clean"),
    ]
    got = settings("--data", "f.npz", "--noise", "0.3", "--teachers", "2")
    assert got == [kd.Setting("f.npz", 0.3, 2, "noisy"), kd.Setting("f.npz", 0.3, 2, "clean")]
    # ... only the clean one at R = 0, and one variant when asked for.
    assert settings("--data", "f.npz", "--noise", "0") == [kd.Setting("f.npz", 0.0, 1, "clean")]
    assert settings("--noise", "0.4", "--teacher-labels", "clean") == [
        kd.Setting("digits", 0.4, 1, "clean")
    ]
    # Without noise the teachers' labels are clean whatever was asked.
    assert kd.Setting("digits", 0.0, 1, "noisy").teacher_labels == "clean"
    with pytest.raises(ValueError, match="teacher_labels"):
        kd.Setting("digits", 0.4, 1, "dirty")
    with pytest.raises(SystemExit):
        kd.parse_args(["--teacher-labels", "dirty"])


def test_kd_teachers_are_cnns_for_images_and_beat_the_student_setup():
    from amal_jax.distill import classification
    from amal_jax.recipes import distill as kd

    digits = classification.load_digits()
    configs = kd.teacher_configs(digits, kd.budget_for("digits"), 3)
    assert [c.kind for c in configs] == ["cnn", "mlp", "mlp"]
    assert configs[0].image_shape == (8, 8, 1)
    assert kd.budget_for("digits").hidden == () and kd.budget_for("fashion_mnist").hidden == ()
    assert len({c.seed for c in configs}) == 3


def test_macro_f1_matches_scikit_learn():
    import numpy as np
    from sklearn.metrics import f1_score

    from amal_jax.recipes.harness import macro_f1

    rng = np.random.default_rng(0)
    for _ in range(5):
        y, p = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
        assert macro_f1(y, p, 4) == f1_score(y, p, average="macro")


def test_append_gold_rows_adds_cross_entropy_only_rows():
    import numpy as np

    from amal_jax.recipes.harness import append_gold_rows

    x, t, m = np.zeros((2, 3)), np.full((2, 2, 3), 1 / 3), np.ones((2, 2))
    x2, t2, m2 = append_gold_rows(x, t, m, np.ones((1, 3)), np.array([2]), 3)
    assert x2.shape == (3, 3) and t2.shape == (3, 2, 3)
    assert t2[2, 0].tolist() == [0.0, 0.0, 1.0] and m2[2].tolist() == [1.0, 0.0]
    assert append_gold_rows(x, t, m, np.zeros((0, 3)), np.array([], int), 3)[0] is x


def test_kd_benchmark_skips_fashion_mnist_when_the_package_is_missing(
    tmp_path, monkeypatch, capsys
):
    from amal_jax.distill import classification
    from benchmarks import kd

    monkeypatch.setattr(classification, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    records = kd.main(
        [
            "--data",
            "fashion_mnist",
            "--noise",
            "0.0",
            "--seeds",
            "1",
            "--methods",
            "ce",
            "--out",
            str(tmp_path / "out"),
            "--cache",
            str(tmp_path / "cache"),
            "--compile-cache",
            "",
        ]
    )
    assert records == []
    out = capsys.readouterr().out
    assert "skipping" in out and "dataset-fashion-mnist" in out


def test_rules_amortised_names():
    import pytest

    from benchmarks import rules

    assert rules.split_amortised("amal_trust_every5") == ("amal_trust", 5)
    assert rules.split_amortised("amal_lf_net_every10") == ("amal_lf_net", 10)
    assert rules.amortised("amal_mv") == "amal_mv_every5"
    for name in ("amal_trust", "labelled_every5", "amal_mv_every1", "amal_mv_everyx"):
        assert rules.split_amortised(name)[1] == 1, name
    with pytest.raises(SystemExit, match="unknown methods"):
        rules.main(["--methods", "labelled_every5"])


def test_rotate_gives_seed_j_fold_j_mod_k_as_runs_of_their_own():
    import numpy as np

    from amal_jax.recipes import harness

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    xv = rng.normal(size=(30, 5)).astype(np.float32)
    y, yv = (x[:, 0] > 0).astype(int), (xv[:, 0] > 0).astype(int)
    folds = np.array_split(np.arange(30), 3)

    def make(i):
        rest = np.concatenate([folds[j] for j in range(3) if j != i])
        return harness.Problem(
            name="tiny",
            x_train=x,
            targets=np.eye(2, dtype=np.float32)[y][:, None],
            mask=np.ones((40, 1), np.float32),
            temperatures=(1.0,),
            columns=("gold",),
            x_meta=xv[rest],
            y_meta=yv[rest],
            x_sel=xv[folds[i]],
            y_sel=yv[folds[i]],
            x_test=xv,
            y_test=yv,
            num_classes=2,
        )

    settings = harness.Settings(hidden=(4,), epochs=2, batch_size=8, val_batch_size=8)
    method = harness.Method("ce", "fixed", weights=(1.0,))
    rotated = harness.rotate(make, 3, method, settings, [5, 6, 7, 8])
    assert rotated.folds == [0, 1, 2, 0]
    assert len(rotated.final_weights) == 3  # one entry per fold
    alone = [
        harness.train(make(f), method, settings, [s])
        for f, s in zip([0, 1, 2, 0], [5, 6, 7, 8], strict=True)
    ]
    for key in ("selection", "best_epoch", "accuracy"):
        assert getattr(rotated, key) == [getattr(a, key)[0] for a in alone], key
    assert rotated.compile_seconds > 0


def test_amortised_methods_scale_the_meta_learning_rate():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import amal_jax
    from amal_jax.recipes import harness

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    p = harness.Problem(
        name="tiny",
        x_train=x,
        targets=np.stack([np.eye(2, dtype=np.float32)[y], np.full((8, 2), 0.5, np.float32)], 1),
        mask=np.ones((8, 2), np.float32),
        temperatures=(1.0, 1.0),
        columns=("gold", "aux"),
        x_meta=x,
        y_meta=y,
        x_sel=x,
        y_sel=y,
        x_test=x,
        y_test=y,
        num_classes=2,
    )
    model = harness.MLP(num_classes=2, hidden=(4,))
    loss_fn, val_loss_fn = harness._loss_functions(model, (1.0, 1.0))
    params = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    train = {"x": jnp.asarray(x), "targets": jnp.asarray(p.targets), "mask": jnp.asarray(p.mask)}
    train["id"] = jnp.arange(8)
    val = {"x": jnp.asarray(x), "y": jnp.asarray(y)}

    def moved(every):
        method = harness.Method("m", "amal", weights=(1.0, 1.0), meta_lr=0.01, meta_every=every)
        config = harness._config(method, p, loss_fn, val_loss_fn, optax.sgd(0.1), 4)
        state = amal_jax.init(config, params, key=jax.random.key(1))
        new, _ = jax.jit(amal_jax.step, static_argnames="meta")(state, train, val, meta=True)
        return np.asarray(new.mix_params - state.mix_params)

    # One meta update with a meta update every 5th step moves the table 5x as far.
    one, five = moved(1), moved(5)
    assert np.abs(one).max() > 0
    np.testing.assert_allclose(five, 5 * one, rtol=1e-5, atol=1e-6)  # float32 table entries


def test_the_suite_at_tiny_sizes_writes_every_table_with_its_environment(tiny_suite):
    tmp_path = tiny_suite
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["profile"] == "tiny" and env["platform"] == "cpu" and env["jax"]
    line = f"jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}"
    for name in ("speed", "rules", "kd"):
        md = (tmp_path / name / f"{name}.md").read_text()
        assert line in md.splitlines()[2], name  # under the title
        assert json.loads((tmp_path / name / f"{name}.json").read_text())
    rules_rows = json.loads((tmp_path / "rules" / "rules.json").read_text())
    assert [r["method"].split(" ")[0] for r in rules_rows] == [
        "labelled",
        "amal_trust",
        "amal_selected",
    ]
    assert "Student: MLP (16,)" in (tmp_path / "rules" / "rules.md").read_text()
    kd_md = (tmp_path / "kd" / "kd.md").read_text()
    assert "Student: MLP 16 on every data set" in kd_md and "| synthetic | 40% |" in kd_md
    # Its own teacher cache, inside the results folder.
    assert any((tmp_path / "kd" / "teacher_cache").iterdir())


def test_the_accelerator_profile_runs_the_large_settings(capsys):
    from benchmarks import __main__ as suite

    suite.main(["--profile", "accelerator", "--out", "r", "--dry-run"])
    lines = dict(line.split(" ", 3)[2:] for line in capsys.readouterr().out.splitlines())
    assert set(lines) == {"benchmarks.speed", "benchmarks.rules", "benchmarks.kd"}
    assert "resnet18:256,resnet18_bn:256" in lines["benchmarks.speed"]
    assert "--runs 8,32" in lines["benchmarks.speed"]
    for name in ("rules", "kd"):
        assert "--hidden 256,256 --seeds 8" in lines[f"benchmarks.{name}"]
        assert lines[f"benchmarks.{name}"].endswith(f"--out r/{name}")
    assert "--epochs 30" in lines["benchmarks.rules"]
    with pytest.raises(SystemExit):
        suite.main(["--profile", "huge", "--dry-run"])
