"""The ``amal-jax`` command end to end: options, outputs, kill and resume, the subcommands.

The training runs start real subprocesses (``python -m amal_jax``) on small generated data:
a rules directory of three topics with keyword rules, and a ``.npz`` for distillation.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest

from amal_jax.cli import main as cli
from amal_jax.cli import options

pytestmark = pytest.mark.standard_promotion("the harness trains with optax.adam")

TOPICS = {
    "sports": ["goal", "match", "team", "score", "coach"],
    "politics": ["vote", "party", "election", "senate", "policy"],
    "tech": ["code", "chip", "software", "robot", "laptop"],
}
FILLER = ["the", "a", "today", "really", "news", "about", "big", "new", "we", "saw"]
# (class, keyword): a keyword rule per class, and one noisy rule that votes sports.
RULES = [("sports", "goal"), ("sports", "team"), ("politics", "vote"), ("politics", "party")]
RULES += [("tech", "code"), ("tech", "robot"), ("sports", "today")]


def _texts(rng, n):
    names = list(TOPICS)
    rows = []
    for _ in range(n):
        label = names[rng.integers(len(names))]
        words = list(rng.choice(TOPICS[label], size=2)) + list(rng.choice(FILLER, size=4))
        rng.shuffle(words)
        rows.append((label, " ".join(words)))
    return rows


def write_rules_dir(path: pathlib.Path, seed: int = 0, exemplars: bool = True) -> pathlib.Path:
    """A rules-format directory: 150 unlabelled training rows, 45 valid, 45 test, and an
    exemplar (a labelled training row) per rule unless ``exemplars=False``."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    with (path / "rule.txt").open("w") as fh:
        for label, word in RULES:
            example = next(t for lab, t in _texts(rng, 50) if lab == label and word in t.split())
            fh.write(f"{label}\t( |^){word}( |$)\t{example if exemplars else ''}\n")
    for split, n in (("train", 150), ("valid", 45), ("test", 45)):
        with (path / f"{split}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["v1", "v2"])
            for label, text in _texts(rng, n):
                writer.writerow(["" if split == "train" else label, text])
    return path


def write_npz(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 6)) * 2.5

    def draw(n):
        y = rng.integers(3, size=n)
        return (centres[y] + rng.normal(size=(n, 6))).astype(np.float32), y

    x, y = draw(300)
    x_test, y_test = draw(90)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def amal_jax(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``python -m amal_jax ARGS`` in a subprocess (CPU, no progress bars unless asked)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "amal_jax", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"amal-jax {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


RULES_RUN = ["--method", "amal_trust", "--seeds", "3", "--epochs", "8", "--batch-size", "16"]
RULES_RUN += ["--hidden", "8", "--max-features", "200"]


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory):
    return write_rules_dir(tmp_path_factory.mktemp("data") / "topics")


@pytest.fixture(scope="module")
def rules_run(rules_dir, tmp_path_factory):
    """One uninterrupted rules run: its output directory and the command's output."""
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    done = amal_jax("rules", "--data", str(rules_dir), "--out", str(out), *RULES_RUN)
    return out, done


def _no_time(final: dict) -> dict:
    return {k: v for k, v in final.items() if not k.endswith("seconds")}


def test_rules_run_writes_every_output_well_formed(rules_run, rules_dir):
    out, done = rules_run
    # The final table and the progress bars.
    assert "mean +- std" in done.stdout and "ensemble of the 3 seeds" in done.stdout
    assert "fold 2 (seeds 2)" in done.stderr
    # config.toml: the resolved options, read back by --config.
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["method"] == "amal_trust" and config["seeds"] == 3 and config["epochs"] == 8
    assert config["hidden"] == [8] and config["trust_init"] == 0.1 and config["meta_lr"] == 0.03
    assert config["data"] == str(rules_dir)
    # metrics.jsonl: a line per fold and epoch.
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted((ln["run"], ln["epoch"]) for ln in lines) == [
        (f, e) for f in range(3) for e in range(8)
    ]
    first = lines[0]
    assert set(first) >= {"train_loss", "valid_macro_f1", "columns", "seconds", "best_epoch"}
    columns = [f"lf{j}" for j in range(len(RULES))] + ["clean"]
    assert list(first["columns"]) == columns
    stats = first["columns"]["lf0"]["weights"]
    assert sum(stats["histogram"]["counts"]) == stats["rows"] > 0
    assert stats["min"][0] <= stats["mean"][0] <= stats["max"][0]
    assert np.isfinite(first["train_loss"]).all()
    # final.json: per-seed test metrics and the chosen epochs.
    final = json.loads((out / "final.json").read_text())
    assert final["per_seed"]["fold"] == [0, 1, 2]
    assert all(0 <= e < 8 for e in final["per_seed"]["best_epoch"])
    assert all(0 <= a <= 1 for a in final["per_seed"]["accuracy"])
    assert final["accuracy"]["mean"] == pytest.approx(np.mean(final["per_seed"]["accuracy"]))
    # predictions.csv: the test rows and the unlabelled training rows.
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    test = [r for r in rows if r["row"].startswith("test:")]
    train = [r for r in rows if r["row"].startswith("train:")]
    assert len(test) == 45 and len(train) == 150
    probs = np.array([[float(r[f"p_{c}"]) for c in sorted(TOPICS)] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert all(
        r["predicted"] == sorted(TOPICS)[int(np.argmax(p))]
        for r, p in zip(rows, probs, strict=True)
    )
    assert all(r["label"] in TOPICS for r in test) and all(r["label"] == "" for r in train)
    ensemble = np.mean([r["predicted"] == r["label"] for r in test])
    assert final["ensemble"]["accuracy"] == pytest.approx(ensemble)
    # weights.npz: per fold, every training row's weights.
    with np.load(out / "weights.npz") as z:
        assert list(z["columns"]) == columns
        for f in range(3):
            w, rows_f, mask = z[f"weights_run{f}"], z[f"rows_run{f}"], z[f"mask_run{f}"]
            assert w.shape == (1, len(rows_f), len(columns)) == (1, *mask.shape)
            assert np.isfinite(w).all() and (w >= 0).all()
            assert z[f"trust_run{f}"].shape == (1, len(columns))
            assert list(z[f"seeds_run{f}"]) == [f]
    # lf_trust.csv: one row per rule.
    with (out / "lf_trust.csv").open() as fh:
        trust = list(csv.DictReader(fh))
    assert [r["lf"] for r in trust] == [f"( |^){w}( |$)" for _, w in RULES]
    assert all(r["weight_of"] == "trust" and 0 <= float(r["learned_weight"]) <= 2 for r in trust)
    assert all(0 < float(r["train_coverage"]) <= 1 for r in trust)
    # The plots are PNG files.
    for name in ("learning_curves", "weight_histograms", "trust_vs_accuracy"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_kill_and_resume_equals_an_uninterrupted_run(rules_run, rules_dir, tmp_path):
    uninterrupted, _ = rules_run
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "amal_jax", "rules", "--data", str(rules_dir)]
    command += ["--out", str(out), "--quiet", *RULES_RUN]
    proc = subprocess.Popen(command, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    target = out / "checkpoints" / "run1" / "3"  # fold 1 after 3 of its 8 epochs
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert target.exists(), "the run ended or stalled before the checkpoint to kill at"
    assert not (out / "final.json").exists() and not (out / "checkpoints" / "run2").exists()

    done = amal_jax("rules", "--data", str(rules_dir), "--out", str(out), "--resume", *RULES_RUN)
    assert "mean +- std" in done.stdout
    final = json.loads((out / "final.json").read_text())
    assert _no_time(final) == _no_time(json.loads((uninterrupted / "final.json").read_text()))
    for name in ("predictions.csv", "weights.npz", "lf_trust.csv"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name

    def lines(d):
        text = (d / "metrics.jsonl").read_text().splitlines()
        return sorted(
            json.dumps({k: v for k, v in json.loads(t).items() if k != "seconds"}) for t in text
        )

    assert lines(out) == lines(uninterrupted)


def test_kd_run_on_an_npz(tmp_path):
    data = write_npz(tmp_path / "blobs.npz")
    out = tmp_path / "kd"
    done = amal_jax(
        "kd", "--data", str(data), "--noise", "0.3", "--method", "amal_exact", "--seeds", "2",
        "--epochs", "2", "--hidden", "8", "--alpha", "0.7", "--out", str(out),
        "--teacher-cache", str(tmp_path / "teachers"),
    )  # fmt: skip
    assert "teacher mlp test accuracy" in done.stdout
    final = json.loads((out / "final.json").read_text())
    assert final["knobs"] == {"alpha": 0.7, "meta_lr": 0.1, "meta_every": 1}
    assert len(final["teachers"]) == 1 and 0 < final["teachers"][0]["test_accuracy"] <= 1
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["noise"] == 0.3 and config["alpha"] == 0.7 and config["hidden"] == [8]
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    n_train = sum(r["row"].startswith("train:") for r in rows)
    assert sum(r["row"].startswith("test:") for r in rows) == 90 and n_train > 0
    with np.load(out / "weights.npz") as z:
        assert list(z["columns"]) == ["ce", "kd0"] and "trust_run0" not in z
        assert z["weights_run0"].shape[2] == 2
    assert not (out / "lf_trust.csv").exists()
    png = (out / "weight_vs_teacher_confidence.png").read_bytes()
    assert png[:4] == b"\x89PNG"


def test_help_of_every_subcommand(capsys):
    for command in ("rules", "kd", "lf-summary", "bench"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: amal-jax {command}" in text
    with pytest.raises(SystemExit):
        cli.main(["rules", "--help"])
    text = capsys.readouterr().out
    for flag in ("--data", "--method", "--seeds", "--epochs", "--batch-size", "--config"):
        assert flag in text
    for flag in ("--resume", "--quiet", "--weight", "--meta-lr", "--trust-init"):
        assert flag in text
    done = amal_jax("--help")
    assert "rules" in done.stdout and "lf-summary" in done.stdout


def test_console_script_is_declared():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [s.value for s in scripts if s.name == "amal-jax"] == ["amal_jax.cli.main:main"]


def test_config_file_and_precedence(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        'data = "sms"\nseeds = 4\nepochs = 7\nhidden = [32, 16]\nbatch-size = 8\n'
        "[rules]\nseeds = 5\nmeta_lr = 0.2\n"
    )
    args = cli.parse(["rules", "--config", str(config), "--epochs", "2", "--out", "o"])
    assert args.data == "sms" and args.epochs == 2  # the command line wins
    assert args.seeds == 5  # the [rules] table wins over the top level
    assert args.hidden == (32, 16) and args.batch_size == 8 and args.meta_lr == 0.2
    config.write_text("sedes = 3\n")
    with pytest.raises(SystemExit, match="unknown option 'sedes'"):
        cli.parse(["rules", "--config", str(config)])
    config.write_text('seeds = "three"\n')
    with pytest.raises(SystemExit, match="seeds must be an integer"):
        cli.parse(["rules", "--config", str(config)])
    config.write_text('method = "amal_magic"\n')
    with pytest.raises(SystemExit, match="method must be one of"):
        cli.parse(["rules", "--config", str(config)])
    config.write_text("quiet = 1\n")
    with pytest.raises(SystemExit, match="quiet must be true or false"):
        cli.parse(["rules", "--config", str(config)])
    config.write_text("seeds = [\n")
    with pytest.raises(SystemExit, match="not valid TOML"):
        cli.parse(["rules", "--config", str(config)])
    with pytest.raises(SystemExit, match="no such file"):
        cli.parse(["rules", "--config", str(tmp_path / "missing.toml")])


def test_toml_writer_round_trips():
    values = {"a": 'x "q" ü', "b": 3, "c": 0.001, "d": True, "e": [64, 32], "f": None}
    text = options.to_toml(values, header="two\nlines")
    assert tomllib.loads(text) == {k: v for k, v in values.items() if v is not None}
    assert text.startswith("# two\n# lines\n")


def test_bad_options_are_refused_before_training(tmp_path, rules_dir):
    base = ["rules", "--data", str(rules_dir), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="--data is required"):
        cli.main(["rules", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--out is required"):
        cli.main(["rules", "--data", "sms"])
    with pytest.raises(SystemExit, match="takes no --weight"):
        cli.main([*base, "--method", "amal_mv", "--weight", "0.5"])
    with pytest.raises(SystemExit, match="--seeds must be at least 1"):
        cli.main([*base, "--seeds", "0"])
    with pytest.raises(SystemExit, match="--noise must lie in"):
        cli.main(["kd", "--data", "digits", "--noise", "1.5", "--out", str(tmp_path / "k")])
    with pytest.raises(SystemExit):
        cli.main([*base, "--hidden", "64,x"])
    assert not (tmp_path / "o").exists()


def test_resume_and_overwrite_rules(rules_run, tmp_path, rules_dir, capsys):
    out, _ = rules_run
    same = ["rules", "--data", str(rules_dir), "--out", str(out), *RULES_RUN]
    with pytest.raises(SystemExit, match="already holds a run"):
        cli.main(same)
    changed = [*same, "--epochs", "9", "--resume"]
    with pytest.raises(SystemExit, match=r"options differ .*epochs: 8 -> 9"):
        cli.main(changed)
    with pytest.raises(SystemExit, match="exclude each other"):
        cli.main([*same, "--resume", "--overwrite"])
    with pytest.raises(SystemExit, match="holds no run"):
        cli.main(["rules", "--data", str(rules_dir), "--out", str(tmp_path / "e"), "--resume"])
    # --overwrite starts over in a directory with an earlier run (tiny: 1 seed, 1 epoch).
    fresh = tmp_path / "again"
    small = ["rules", "--data", str(rules_dir), "--out", str(fresh), "--seeds", "1"]
    small += ["--epochs", "1", "--hidden", "4", "--max-features", "50", "--quiet", "--no-plots"]
    assert cli.main(small) == 0
    assert cli.main([*small, "--overwrite", "--method", "labelled+mv"]) == 0
    assert tomllib.loads((fresh / "config.toml").read_text())["method"] == "labelled+mv"
    assert json.loads((fresh / "final.json").read_text())["method"] == "labelled+mv"
    assert capsys.readouterr().out == ""  # --quiet


def test_methods_without_labelled_rows_are_refused(tmp_path):
    data = write_rules_dir(tmp_path / "no_exemplars", exemplars=False)
    for method in ("labelled", "val"):
        with pytest.raises(SystemExit, match="no labelled training rows"):
            cli.main(
                ["rules", "--data", str(data), "--out", str(tmp_path / method), "--method",
                 method, "--quiet"]
            )  # fmt: skip
        assert not (tmp_path / method).exists()  # nothing written for a run that cannot start


def test_lf_summary(tmp_path, capsys):
    assert cli.main(["lf-summary", "youtube", "--csv", str(tmp_path / "lf.csv")]) == 0
    text = capsys.readouterr().out
    assert "youtube, valid split (120 rows)" in text and "keyword_subscribe" in text
    with (tmp_path / "lf.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 and rows[1]["lf"] == "keyword_subscribe"
    assert rows[1]["polarity"] == "SPAM" and float(rows[1]["coverage"]) == pytest.approx(
        0.083, 0.01
    )
    # The label model's accuracy beside the empirical one.
    assert "Learned Acc." in text and all(0 < float(r["learned_accuracy"]) < 1 for r in rows)
    assert cli.main(["lf-summary", "youtube", "--csv", "-", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("lf,polarity,coverage") and len(out.splitlines()) == 11


def test_bench_runs_the_checkouts_suite(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd: calls.append((cmd, cwd)) or 0)
    assert cli.main(["bench", "rules", "--out", str(tmp_path / "r")]) == 0
    cmd, cwd = calls[0]
    assert cmd[1:5] == ["-m", "benchmarks", "--suites", "rules"]
    assert cmd[5:] == ["--out", str(tmp_path / "r"), "--profile", "default"]
    assert (pathlib.Path(cwd) / "benchmarks").is_dir()
    assert cli.main(["bench"]) == 0 and calls[1][0][4] == "speed,rules,kd"
    assert cli.main(["bench", "kd", "--profile", "accelerator"]) == 0
    assert calls[2][0][-2:] == ["--profile", "accelerator"]
    # The suite takes the command as it stands (its dry run prints the scripts' lines).
    from benchmarks import __main__ as suite

    suite.main([*calls[2][0][3:], "--dry-run"])
    assert "--hidden 256,256 --seeds 8" in capsys.readouterr().out
    monkeypatch.setattr(cli, "checkout_root", lambda: None)
    with pytest.raises(SystemExit, match="checkout of the amal_jax repository"):
        cli.main(["bench"])
