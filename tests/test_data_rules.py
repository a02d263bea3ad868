"""Weak-supervision data: the rules and WRENCH loaders, TF-IDF features, the LF summary."""

from __future__ import annotations

import json
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from amal_jax.weak import rules
from amal_jax.weak.lf_summary import format_lf_summary, lf_summary
from amal_jax.weak.rules import load_weak_dataset, tfidf_features

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rules"
BUNDLED = Path(rules.__file__).resolve().parent / "bundled"


def copy_fixture(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


# --------------------------------------------------------------------------------------------
# Rules format: votes computed by hand from rule.txt (rule j votes its label when its regex
# matches text.strip().lower()).

CSV_CLASSES = ("ham", "spam")  # ham = 0, spam = 1
CSV_TRAIN_TEXTS = (
    # The three distinct exemplars (rules 0 and 3 share one), labelled, first.
    "Win a FREE prize now",
    "Thanks for the lunch",
    "Call 0800 now to claim",
    # train.csv, unlabelled.
    "FREE entry, call 08001234 today",
    "thanks mate see you later",
    "are you free tonight? thx",
    "winner winner",
    "ok",
    "line one\nline two free",
)
CSV_TRAIN_L = [
    [1, -1, -1, 1],  # "win" and "prize"
    [-1, 0, -1, -1],  # "thanks"
    [-1, -1, 1, -1],  # "call 0800"
    [1, -1, 1, -1],  # "free" and "call 08001234"
    [-1, 0, -1, -1],  # "thanks"
    [1, 0, -1, -1],  # "free" (spam) and "thx" (ham): a conflict
    [-1, -1, -1, -1],  # "winner" is not "win" followed by a space or the end
    [-1, -1, -1, -1],
    [1, -1, -1, -1],  # "free" at the end of a multi-line text
]
CSV_TRAIN_Y = [1, 0, 1, 1, 0, 0, 1, 0, 0]
CSV_TRAIN_IDS = (
    "rule.txt:1",
    "rule.txt:2",
    "rule.txt:3",
    "train.csv:2",
    "train.csv:3",
    "train.csv:4",
    "train.csv:5",
    "train.csv:6",
    "train.csv:7",
)
CSV_VALID_L = [[-1, -1, 1, -1], [-1, 0, -1, -1]]  # "  Call 123 NOW  ", "thanks!"
CSV_TEST_L = [[1, -1, -1, 1], [-1, -1, -1, -1]]  # "you win a prize", "hello"


def test_rules_csv_fixture_votes_labels_and_mask():
    ds = load_weak_dataset(FIXTURES / "csv_rules")
    assert ds.format == "rules"
    assert ds.name == "csv_rules"
    assert ds.class_names == CSV_CLASSES
    assert ds.num_classes == 2 and ds.num_lfs == 4
    assert ds.lf_names == (
        r"( |^)(free|win)[^\w]*( |$)",
        r"( |^)(thanks|thx)[^\w]*( |$)",
        r"call \d+",
        "prize",
    )
    train = ds.train
    assert train.texts == CSV_TRAIN_TEXTS
    np.testing.assert_array_equal(train.L, CSV_TRAIN_L)
    np.testing.assert_array_equal(train.y, CSV_TRAIN_Y)
    np.testing.assert_array_equal(train.labelled, [True] * 3 + [False] * 6)
    assert train.ids == CSV_TRAIN_IDS
    assert train.L.dtype == np.int32 and train.y.dtype == np.int32
    assert train.labelled.dtype == bool

    np.testing.assert_array_equal(ds.valid.L, CSV_VALID_L)
    np.testing.assert_array_equal(ds.valid.y, [1, 0])
    assert ds.valid.texts == ("  Call 123 NOW  ", "thanks!")
    np.testing.assert_array_equal(ds.test.L, CSV_TEST_L)
    np.testing.assert_array_equal(ds.test.y, [1, 0])
    assert ds.valid.labelled.all() and ds.test.labelled.all()
    assert ds.split("test") is ds.test


@pytest.mark.parametrize("name", ["csv_rules", "txt_rules"])
def test_rules_votes_follow_findall_on_stripped_lowercase_text(name):
    # An independent re-computation with the documented rule: re.findall non-empty.
    ds = load_weak_dataset(FIXTURES / name)
    for split in rules.SPLITS:
        s = ds.split(split)
        for i, text in enumerate(s.texts):
            for j, regex in enumerate(ds.lf_names):
                fires = bool(re.findall(regex, text.strip().lower()))
                assert (s.L[i, j] >= 0) == fires, (split, i, j)


def test_rules_txt_fixture_three_classes():
    ds = load_weak_dataset(FIXTURES / "txt_rules")
    assert ds.class_names == ("neg", "neu", "pos")  # sorted: neg = 0, neu = 1, pos = 2
    assert ds.lf_names == ("good|great", "bad", "okay$")
    assert ds.train.texts == (
        "This is GOOD",
        "So bad",
        "It is okay",
        "great movie",
        "bad but good acting",
        "it was okay: nothing more",  # only the first ':' separates the label
        "terrible",
    )
    np.testing.assert_array_equal(
        ds.train.L,
        # "okay$" fires on "It is okay" but not on "it was okay: nothing more".
        [
            [2, -1, -1],
            [-1, 0, -1],
            [-1, -1, 1],
            [2, -1, -1],
            [2, 0, -1],
            [-1, -1, -1],
            [-1, -1, -1],
        ],
    )
    np.testing.assert_array_equal(ds.train.y, [2, 0, 1, 2, 0, 1, 0])
    np.testing.assert_array_equal(ds.train.labelled, [True] * 3 + [False] * 4)
    # The blank line 4 of train.txt is not a row.
    assert ds.train.ids[3:] == ("train.txt:1", "train.txt:2", "train.txt:3", "train.txt:5")
    assert ds.valid.texts == ("Great!", " not bad", "Okay then, OKAY   ")
    # "okay$" fires on the last row only once it is stripped and lowercased.
    np.testing.assert_array_equal(ds.valid.L, [[2, -1, -1], [-1, 0, -1], [-1, -1, 1]])
    np.testing.assert_array_equal(ds.valid.y, [2, 0, 1])
    np.testing.assert_array_equal(ds.test.L, [[-1, -1, 1], [2, -1, -1]])
    np.testing.assert_array_equal(ds.test.y, [1, 2])


def test_rules_class_names_override_adds_a_class_without_rules():
    ds = rules.load_rules_dataset(FIXTURES / "csv_rules", class_names=["spam", "ham", "other"])
    assert ds.class_names == ("spam", "ham", "other")
    np.testing.assert_array_equal(ds.valid.y, [0, 1])
    np.testing.assert_array_equal(ds.valid.L, [[-1, -1, 0, -1], [-1, 1, -1, -1]])
    with pytest.raises(
        ValueError,
        match=r"rule.txt line 2: label 'ham' is not a known class; the classes are \('spam',\) "
        r"\(class_names\); if it names one of them, pass label_map=\{'ham': <class>\}\.$",
    ):
        rules.load_rules_dataset(FIXTURES / "csv_rules", class_names=["spam"])
    with pytest.raises(ValueError, match=r"class_names must be distinct, non-empty strings"):
        rules.load_rules_dataset(FIXTURES / "csv_rules", class_names=["spam", "ham", "spam"])
    with pytest.raises(ValueError, match=r"not one string; got 'ham'"):
        rules.load_rules_dataset(FIXTURES / "csv_rules", class_names="ham")


def test_dataset_arrays_are_read_only():
    ds = load_weak_dataset(FIXTURES / "csv_rules")
    with pytest.raises(ValueError, match="read-only"):
        ds.train.L[0, 0] = 5


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("spam\tfree", r"rule.txt line 5: expected 3 tab-separated fields .* found 2"),
        ("spam\t(unclosed\tx", r"rule.txt line 5: the regex '\(unclosed' does not compile"),
        ("spam\ta\tb\tc", r"rule.txt line 5: expected 3 tab-separated fields .* found 4"),
        ("\tfree\tfree stuff", r"rule.txt line 5: the rule's label is empty"),
        ("spam\t\tfree stuff", r"rule.txt line 5: the rule's regex is empty"),
        ("ham\tzzz\tWin a FREE prize now", r"rule.txt lines 1 and 5: the exemplar .* both"),
    ],
)
def test_malformed_rule_lines_name_file_and_line(tmp_path, line, message):
    d = copy_fixture("csv_rules", tmp_path)
    with (d / "rule.txt").open("a") as f:
        f.write(line + "\n")
    with pytest.raises(ValueError, match=message):
        load_weak_dataset(d)


def test_a_training_label_outside_the_gold_classes_is_an_error(tmp_path):
    # Classes come from the valid and test files: a training label no gold row has (a
    # misspelling, say) is an error naming the file and line, not a class of its own ...
    d = copy_fixture("csv_rules", tmp_path)
    rewrite(d / "train.csv", "ham,ok", "eggs,ok")
    with pytest.raises(
        ValueError,
        match=r"train.csv line 6: label 'eggs' is not a known class; the classes are "
        r"\('ham', 'spam'\) \(the labels found in valid.csv, test.csv\); fix the label, or "
        r"pass class_names=",
    ):
        load_weak_dataset(d)
    # ... and class_names can add it as a class that no rule votes for.
    ds = rules.load_rules_dataset(d, class_names=["eggs", "ham", "spam"])
    np.testing.assert_array_equal(ds.train.y[3:], [2, 1, 1, 2, 0, 1])
    np.testing.assert_array_equal(ds.valid.L, [[-1, -1, 2, -1], [-1, 1, -1, -1]])
    with pytest.raises(
        ValueError,
        match=r"train.csv line 6: label 'eggs' is not a known class; the classes are "
        r"\('ham', 'spam'\) \(class_names\); if it names one of them, pass "
        r"label_map=\{'eggs': <class>\}\.$",
    ):
        rules.load_rules_dataset(d, class_names=["ham", "spam"])
    d = copy_fixture("txt_rules", tmp_path)
    rewrite(d / "test.txt", "pos:good", "happy:good")
    with pytest.raises(ValueError, match=r"test.txt line 2: label 'happy' is not a known class"):
        rules.load_rules_dataset(d, class_names=["neg", "neu", "pos"])


def test_malformed_data_lines(tmp_path):
    d = copy_fixture("csv_rules", tmp_path)
    rewrite(d / "valid.csv", "ham,thanks!", "ham,thanks!,extra")
    with pytest.raises(ValueError, match=r"valid.csv line 3: expected 2 fields \(label,text\)"):
        load_weak_dataset(d)
    rewrite(d / "valid.csv", "v1,v2", "label,message")
    with pytest.raises(ValueError, match=r"valid.csv line 1: expected the header 'v1,v2'"):
        load_weak_dataset(d)
    d = copy_fixture("txt_rules", tmp_path)
    rewrite(d / "train.txt", "neg:bad but good acting", "bad but good acting")
    with pytest.raises(ValueError, match=r"train.txt line 2: expected 'LABEL:text'"):
        load_weak_dataset(d)


def test_missing_or_ambiguous_split_files(tmp_path):
    d = copy_fixture("csv_rules", tmp_path)
    (d / "test.csv").unlink()
    with pytest.raises(ValueError, match=r"missing split 'test' .* test.csv .* test.txt"):
        load_weak_dataset(d)
    d = copy_fixture("txt_rules", tmp_path)
    (d / "valid.csv").write_text("v1,v2\npos,good\n")
    with pytest.raises(ValueError, match=r"both valid.csv and valid.txt exist"):
        load_weak_dataset(d)


def test_format_detection_and_bad_names(tmp_path):
    with pytest.raises(ValueError, match=r"looked for 'rule.txt' .* and 'train.json'"):
        load_weak_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"neither a bundled data set .* nor a directory"):
        load_weak_dataset("no-such-data-set")


def test_a_bundled_name_means_the_bundled_data(tmp_path, monkeypatch):
    shutil.copytree(FIXTURES / "wrench", tmp_path / "youtube")
    monkeypatch.chdir(tmp_path)
    assert load_weak_dataset("youtube").num_lfs == 10
    local = load_weak_dataset("./youtube")
    assert local.num_lfs == 3 and local.name == "youtube"


def write_rules_dir(root: Path, rule_lines, train, valid, test) -> Path:
    """A rules-format directory: rule.txt plus train/valid/test .csv from (label, text) rows."""
    root.mkdir(parents=True)
    (root / "rule.txt").write_text("".join(line + "\n" for line in rule_lines))
    for split, rows in (("train", train), ("valid", valid), ("test", test)):
        body = "".join(f"{label},{text}\n" for label, text in rows)
        (root / f"{split}.csv").write_text("v1,v2\n" + body)
    return root


SMALL_RULES = [
    "spam\tfree\tfree money",
    "ham\tthanks\tthanks a lot",
    "spam\tprize\tclaim your prize",
]
SMALL_TRAIN = [("spam", "free stuff"), ("ham", "thanks mate"), ("ham", "see you")]
SMALL_VALID = [("spam", "a prize"), ("ham", "ok thanks")]
SMALL_TEST = [("ham", "hello"), ("spam", "free prize")]


def test_misspelled_rule_label_is_an_error_not_a_new_class(tmp_path):
    bad_rules = [*SMALL_RULES[:2], "spma\tprize\tclaim your prize"]
    d = write_rules_dir(tmp_path / "typo", bad_rules, SMALL_TRAIN, SMALL_VALID, SMALL_TEST)
    with pytest.raises(
        ValueError,
        match=r"^rule.txt line 3: label 'spma' is not a known class; the classes are "
        r"\('ham', 'spam'\) \(the labels found in valid.csv, test.csv\); fix the "
        r"rule's label, or pass class_names= to add a class that no data row has; if it "
        r"names one of them, pass label_map=\{'spma': <class>\}\.$",
    ):
        load_weak_dataset(d)
    # The correctly spelled directory loads with two classes and the exemplar labelled spam.
    good = write_rules_dir(tmp_path / "good", SMALL_RULES, SMALL_TRAIN, SMALL_VALID, SMALL_TEST)
    ds = load_weak_dataset(good)
    assert ds.class_names == ("ham", "spam")
    assert ds.train.texts[:3] == ("free money", "thanks a lot", "claim your prize")
    np.testing.assert_array_equal(ds.train.y, [1, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(ds.train.L[2], [-1, -1, 1])


def test_a_class_only_the_rules_know_needs_class_names(tmp_path):
    rule_lines = [*SMALL_RULES, "other\tweather\tnice weather"]
    d = write_rules_dir(tmp_path / "d", rule_lines, SMALL_TRAIN, SMALL_VALID, SMALL_TEST)
    with pytest.raises(ValueError, match=r"rule.txt line 4: label 'other' is not a known class"):
        load_weak_dataset(d)
    ds = rules.load_rules_dataset(d, class_names=["ham", "spam", "other"])
    assert ds.num_classes == 3
    assert ds.train.texts[3] == "nice weather"
    assert ds.train.y[3] == 2 and ds.train.labelled[3]
    np.testing.assert_array_equal(ds.train.L[3], [-1, -1, -1, 2])


def test_training_file_without_labels(tmp_path):
    unlabelled = [("", text) for _, text in SMALL_TRAIN]
    d = write_rules_dir(tmp_path / "d", SMALL_RULES, unlabelled, SMALL_VALID, SMALL_TEST)
    ds = load_weak_dataset(d)
    # The classes come from valid and test; the training file's rows have unknown gold (-1)
    # and stay unlabelled, while the exemplars keep their rules' labels.
    assert ds.class_names == ("ham", "spam")
    np.testing.assert_array_equal(ds.train.y, [1, 0, 1, -1, -1, -1])
    np.testing.assert_array_equal(ds.train.labelled, [True] * 3 + [False] * 3)
    np.testing.assert_array_equal(ds.train.L[3], [1, -1, -1])  # "free stuff"
    # The txt format's empty label is ":text".
    t = copy_fixture("txt_rules", tmp_path)
    rewrite(t / "train.txt", "neg:terrible", ":terrible")
    assert load_weak_dataset(t).train.y[-1] == -1


def test_valid_and_test_rows_need_labels(tmp_path):
    valid = [("", "a prize"), *SMALL_VALID[1:]]
    d = write_rules_dir(tmp_path / "v", SMALL_RULES, SMALL_TRAIN, valid, SMALL_TEST)
    with pytest.raises(
        ValueError,
        match=r"^valid.csv line 2: the label is empty; every valid row needs a gold label \(only "
        r"the training file may leave labels empty\)\.$",
    ):
        load_weak_dataset(d)
    # No labels anywhere: no classes to take.
    empty = write_rules_dir(tmp_path / "e", SMALL_RULES, [("", "x")], [], [])
    with pytest.raises(
        ValueError, match=r"train.csv, valid.csv, test.csv hold no labels, so there are no classes"
    ):
        load_weak_dataset(empty)


def test_bundled_rules_data_is_unchanged_by_classes_from_data():
    # Digests of the bundled data sets loaded with classes from the rules' labels (before
    # issue 8): taking them from the data must give the same classes, order and arrays.
    assert load_weak_dataset("sms").fingerprint == (
        "cbd2d8f4f00e39de11bc42d56ca5098c0b3a2ca522aa535b5ce3fa001db2f151"
    )
    assert load_weak_dataset("youtube").fingerprint == (
        "1de441d57c41e9e5d64585839cd78383069148bbdf7cca96748f132b5b02e220"
    )


# --------------------------------------------------------------------------------------------
# WRENCH format


def test_wrench_fixture():
    ds = load_weak_dataset(FIXTURES / "wrench")
    assert ds.format == "wrench"
    assert ds.class_names == ("neg", "pos")
    assert ds.lf_names == ("lf_0", "lf_1", "lf_2")
    assert ds.train.texts == ("great fun", "boring", "mixed but good", "meh", "loved it")
    assert ds.train.ids == ("0", "1", "2", "3", "4")
    np.testing.assert_array_equal(
        ds.train.L, [[1, -1, 1], [-1, 0, -1], [0, 1, -1], [-1, -1, -1], [1, 1, 1]]
    )
    np.testing.assert_array_equal(ds.train.y, [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(ds.train.labelled, [False, True, False, False, True])
    np.testing.assert_array_equal(ds.valid.L, [[1, -1, -1], [-1, 0, 0]])
    np.testing.assert_array_equal(ds.test.y, [0, 1, 1])
    assert ds.test.ids == ("20", "21", "22")


def test_wrench_without_labeled_ids_has_no_labelled_rows(tmp_path):
    d = copy_fixture("wrench", tmp_path)
    (d / "labeled_ids.json").unlink()
    ds = load_weak_dataset(d)
    assert not ds.train.labelled.any()
    assert ds.valid.labelled.all()


def test_wrench_labeled_ids_as_a_plain_list_and_lf_names(tmp_path):
    d = copy_fixture("wrench", tmp_path)
    (d / "labeled_ids.json").write_text('["0", 3]')
    (d / "lf_names.json").write_text('["a", "b", "c"]')
    ds = load_weak_dataset(d)
    np.testing.assert_array_equal(ds.train.labelled, [True, False, False, True, False])
    assert ds.lf_names == ("a", "b", "c")
    (d / "lf_names.json").write_text('["a", "b"]')
    with pytest.raises(ValueError, match=r"lf_names.json must be a JSON list of 3 strings"):
        load_weak_dataset(d)


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        (
            "train.json",
            '"weak_labels": [0, 1, -1]',
            '"weak_labels": [0, 1]',
            r"train.json line 4 \(id '2'\): 2 weak_labels, but the rows before have 3 "
            r"\(first at train.json line 2\)",
        ),
        (
            "test.json",
            '"weak_labels": [1, 1, -1]',
            '"weak_labels": [1, 1, -1, 0]',
            r"test.json line 3 \(id '21'\): 4 weak_labels, but the rows before have 3",
        ),
        (
            "valid.json",
            '"weak_labels": [-1, 0, 0]',
            '"weak_labels": [-1, 2, 0]',
            r"valid.json line 3 \(id '11'\): weak_labels\[1\] = 2 is outside \[-1, 2\)",
        ),
        (
            "train.json",
            '"label": 0, "weak_labels": [-1, -1, -1]',
            '"label": 5, "weak_labels": [-1, -1, -1]',
            r"train.json line 5 \(id '3'\): label 5 is not a class id of label.json",
        ),
        (
            "train.json",
            '"4": {',
            '"3": {',
            r"train.json line 6: row id '3' repeats the row at line 5",
        ),
        (
            "train.json",
            '"data": {"text": "meh"}',
            '"data": {"txt": "meh"}',
            r"train.json line 5 \(id '3'\): 'data' must be an object with a string 'text'",
        ),
        ("valid.json", '"label": 1,', '"label": 1', r"valid.json line 2: invalid JSON"),
        ("labeled_ids.json", '"4"', '"99"', r"labeled_ids.json: id '99' is not a row"),
        ("labeled_ids.json", '"lf_exemplar_ids"', '"others"', r"labeled_ids.json: unknown keys"),
        ("label.json", '"1": "pos"', '"2": "pos"', r"label.json: class ids must be 0..C-1"),
    ],
)
def test_wrench_errors_name_file_and_line(tmp_path, file, old, new, message):
    d = copy_fixture("wrench", tmp_path)
    rewrite(d / file, old, new)
    with pytest.raises(ValueError, match=message):
        load_weak_dataset(d)


def test_wrench_missing_files(tmp_path):
    d = copy_fixture("wrench", tmp_path)
    (d / "label.json").unlink()
    with pytest.raises(ValueError, match=r"missing label.json"):
        load_weak_dataset(d)
    d = copy_fixture("wrench", tmp_path / "b")
    (d / "valid.json").unlink()
    with pytest.raises(ValueError, match=r"missing split 'valid': no valid.json"):
        load_weak_dataset(d)


# --------------------------------------------------------------------------------------------
# The bundled data


@pytest.fixture(scope="module")
def sms():
    return load_weak_dataset("sms")


@pytest.fixture(scope="module")
def youtube():
    return load_weak_dataset("youtube")


def test_bundled_sms(sms):
    assert sms.class_names == ("ham", "spam")
    assert sms.num_lfs == 73
    # 69 distinct exemplars + the 4502 rows of train.csv.
    assert len(sms.train) == 69 + 4502
    assert (len(sms.valid), len(sms.test)) == (500, 500)
    np.testing.assert_array_equal(sms.train.labelled, np.arange(len(sms.train)) < 69)
    assert sms.train.L.shape == (4571, 73)
    assert np.bincount(sms.valid.y).tolist() == [436, 64]
    assert np.bincount(sms.test.y).tolist() == [433, 67]
    rule_lines = (BUNDLED / "sms" / "rule.txt").read_text().rstrip("\n").split("\n")
    assert sms.lf_names == tuple(line.split("\t")[1] for line in rule_lines)
    # Every rule is one-sided, and every exemplar fires its own rule.
    for j, line in enumerate(rule_lines):
        label = sms.class_names.index(line.split("\t")[0])
        assert set(np.unique(sms.train.L[:, j])) <= {-1, label}
    exemplar_rows = {text: i for i, text in enumerate(sms.train.texts[:69])}
    for j, line in enumerate(rule_lines):
        assert sms.train.L[exemplar_rows[line.split("\t")[2].strip()], j] >= 0
    # The rules cover about 40% of the rows (SOURCE.md).
    assert 0.35 < (sms.valid.L >= 0).any(axis=1).mean() < 0.45
    # Independent check of the votes of the validation split with re.findall.
    expected = np.array(
        [
            [
                (sms.class_names.index(line.split("\t")[0]))
                if re.findall(line.split("\t")[1], text.strip().lower())
                else -1
                for line in rule_lines
            ]
            for text in sms.valid.texts
        ]
    )
    np.testing.assert_array_equal(sms.valid.L, expected)


def test_bundled_youtube(youtube):
    assert youtube.class_names == ("HAM", "SPAM")
    assert youtube.lf_names[:2] == ("keyword_my", "keyword_subscribe")
    assert youtube.num_lfs == 10
    assert (len(youtube.train), len(youtube.valid), len(youtube.test)) == (1686, 120, 250)
    assert youtube.train.labelled.sum() == 100
    labelled_ids = json.loads((BUNDLED / "youtube" / "labeled_ids.json").read_text())
    assert [youtube.train.ids[i] for i in np.flatnonzero(youtube.train.labelled)] == (
        labelled_ids["labeled_ids"]
    )
    raw = json.loads((BUNDLED / "youtube" / "test.json").read_text())
    np.testing.assert_array_equal(youtube.test.L, [row["weak_labels"] for row in raw.values()])
    np.testing.assert_array_equal(youtube.test.y, [row["label"] for row in raw.values()])
    assert set(np.unique(youtube.train.L)) == {-1, 0, 1}


# Per bundled data set: licence file -> a line of its text, and what its NOTICE must name.
LICENCES = {
    "sms": {"LICENSE-Apache-2.0.txt": "Apache License", "LICENSE-CC-BY-4.0.txt": "Attribution 4.0"},
    "youtube": {
        "LICENSE-Apache-2.0.txt": "Apache License",
        "LICENSE-CC-BY-4.0.txt": "Attribution 4.0 International",
    },
    "semeval": {
        "LICENSE-Apache-2.0.txt": "Apache License",
        "LICENSE-CC-BY-3.0.txt": "Creative Commons Attribution 3.0 Unported",
        "LICENSE-MIT.txt": "Copyright (c) 2020 INK Lab @ USC",
    },
}
NOTICE_NAMES = {
    "sms": ("CC BY 4.0", "Apache License"),
    "youtube": ("CC BY 4.0", "Apache License"),
    "semeval": ("CC BY 3.0", "Apache License", "MIT License", "Hendrickx"),
}


def test_bundled_licences_are_shipped():
    assert set(LICENCES) == set(rules.BUNDLED_DATASETS)
    for name, licences in LICENCES.items():
        d = BUNDLED / name
        for file, line in licences.items():
            assert line in (d / file).read_text(), (name, file)
        notice = (d / "NOTICE").read_text()
        assert all(n in notice for n in NOTICE_NAMES[name]), name
        assert (d / "SOURCE.md").is_file()


# --------------------------------------------------------------------------------------------
# Entity spans (relation data): the bundled SemEval set and synthetic WRENCH directories


@pytest.fixture(scope="module")
def semeval():
    return load_weak_dataset("semeval")


def test_bundled_semeval(semeval):
    assert semeval.format == "wrench" and semeval.has_entities
    assert semeval.num_classes == 9 and semeval.num_lfs == 164
    assert semeval.class_names[0] == "Cause-Effect" and semeval.class_names[8] == (
        "Product-Producer"
    )
    assert (len(semeval.train), len(semeval.valid), len(semeval.test)) == (1749, 178, 600)
    assert not semeval.train.labelled.any()  # no labeled_ids.json
    assert semeval.valid.labelled.all() and semeval.test.labelled.all()
    # Each LF votes only the class its name (from readme.txt) gives.
    assert semeval.lf_names[0] == "Cause-Effect(e1,e2): SUBJ-O caused a OBJ-O"
    L = np.concatenate([semeval.split(s).L for s in rules.SPLITS])
    for j, lf in enumerate(semeval.lf_names):
        votes = set(np.unique(L[:, j]).tolist()) - {-1}
        assert votes == {semeval.class_names.index(lf.split("(")[0])}, lf


def test_semeval_spans_point_at_the_entity_strings(semeval):
    for split in rules.SPLITS:
        s = semeval.split(split)
        raw = json.loads((BUNDLED / "semeval" / f"{split}.json").read_text())
        assert s.entities.shape == (len(s), 4) and s.entities.dtype == np.int32
        assert not s.entities.flags.writeable
        assert s.ids == tuple(raw)
        np.testing.assert_array_equal(
            s.entities, [r["data"]["span1"] + r["data"]["span2"] for r in raw.values()]
        )
        # The ends are exclusive: text[start:end] is the entity, on every row.
        for text, (a, b, c, d), row in zip(s.texts, s.entities.tolist(), raw.values(), strict=True):
            assert (text[a:b], text[c:d]) == (row["data"]["entity1"], row["data"]["entity2"])
    assert semeval.test.texts[0].startswith("Fog caused delays")
    np.testing.assert_array_equal(semeval.test.entities[0], [0, 3, 11, 17])


def test_data_sets_without_spans_have_no_entities(sms, youtube):
    assert not sms.has_entities and not youtube.has_entities
    assert youtube.train.entities is None and sms.test.entities is None
    assert load_weak_dataset(FIXTURES / "wrench").valid.entities is None


def relation_row(text, entity1, entity2, label, votes, names=True):
    """A WRENCH relation row; the spans are found in ``text`` (end exclusive)."""
    a, c = text.index(entity1), text.index(entity2)
    data = {"text": text, "span1": [a, a + len(entity1)], "span2": [c, c + len(entity2)]}
    if names:
        data.update(entity1=entity1, entity2=entity2)
    return {"label": label, "weak_labels": votes, "data": data}


def relation_rows():
    # Classes cause = 0, part = 1; entity 1 is the cause / the part, wherever it stands.
    return {
        "train": [
            relation_row("the smoke causes a fire today", "smoke", "fire", 0, [0, -1]),
            relation_row("a fire caused by smoke", "smoke", "fire", 0, [0, -1]),
            relation_row("the wheel of the car", "wheel", "car", 1, [-1, 1]),
            relation_row("the car has a wheel", "wheel", "car", 1, [-1, 1]),
        ],
        "valid": [
            relation_row("the rain causes floods", "rain", "floods", 0, [0, -1]),
            relation_row("the engine inside the truck", "engine", "truck", 1, [-1, -1]),
        ],
        "test": [
            relation_row("floods caused by the rain", "rain", "floods", 0, [0, -1]),
            relation_row("car wheel", "wheel", "car", 1, [-1, 1]),
        ],
    }


def write_wrench_dir(root: Path, splits, class_names=("cause", "part")) -> Path:
    """A WRENCH directory; row ``i`` of a file is on its line ``i + 2``, ids count on."""
    root.mkdir(parents=True)
    (root / "label.json").write_text(json.dumps(dict(enumerate(class_names))))
    row_id = 0
    for split, rows in splits.items():
        lines = []
        for row in rows:
            lines.append(f'"{row_id}": {json.dumps(row)}')
            row_id += 1
        (root / f"{split}.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
    return root


def test_wrench_with_spans_loads(tmp_path):
    ds = load_weak_dataset(write_wrench_dir(tmp_path / "rel", relation_rows()))
    assert ds.has_entities and ds.class_names == ("cause", "part")
    np.testing.assert_array_equal(
        ds.train.entities, [[4, 9, 19, 23], [17, 22, 2, 6], [4, 9, 17, 20], [14, 19, 4, 7]]
    )
    np.testing.assert_array_equal(ds.test.entities, [[21, 25, 0, 6], [4, 9, 0, 3]])
    assert ds.valid.ids == ("4", "5")
    np.testing.assert_array_equal(ds.valid.L, [[0, -1], [-1, -1]])
    # The entity strings are optional; without them the spans are the same.
    unnamed = {
        split: [relation_row(r["data"]["text"], "", "", 0, [0, -1]) for r in rows]
        for split, rows in relation_rows().items()
    }
    for split, rows in unnamed.items():
        for row, named in zip(rows, relation_rows()[split], strict=True):
            row["data"] = {k: v for k, v in named["data"].items() if not k.startswith("entity")}
    plain = load_weak_dataset(write_wrench_dir(tmp_path / "unnamed", unnamed))
    np.testing.assert_array_equal(plain.train.entities, ds.train.entities)
    # The same texts without spans: no entities, and another fingerprint (and feature cache).
    no_spans = {
        split: [{**r, "data": {"text": r["data"]["text"]}} for r in rows]
        for split, rows in relation_rows().items()
    }
    bare = load_weak_dataset(write_wrench_dir(tmp_path / "bare", no_spans))
    assert not bare.has_entities and bare.train.texts == ds.train.texts
    assert bare.fingerprint != ds.fingerprint


def _drop(key):
    return lambda data: data.pop(key)


def _set(key, value):
    return lambda data: data.__setitem__(key, value)


def _no_spans(data):
    del data["span1"], data["span2"]


@pytest.mark.parametrize(
    ("split", "row", "change", "message"),
    [
        (
            "train",
            1,
            _drop("span2"),
            r"^train.json line 3 \(id '1'\): 'data' has 'span1' but no 'span2'; a row with "
            r"entity spans needs both\.$",
        ),
        ("valid", 0, _set("span1", [0]), r"valid.json line 2 \(id '4'\): 'span1' must be \["),
        ("test", 0, _set("span2", [1.0, 3]), r"test.json line 2 \(id '6'\): 'span2' must be"),
        ("train", 0, _set("span1", [True, 3]), r"train.json line 2 \(id '0'\): 'span1' must"),
        ("train", 3, _set("span1", "14-19"), r"train.json line 5 \(id '3'\): 'span1' must be"),
        (
            "train",
            2,
            _set("span1", [5, 5]),
            r"train.json line 4 \(id '2'\): 'span1' = \[5, 5\] is not a span of the text "
            r"\(20 characters\)",
        ),
        (
            "test",
            1,
            _set("span2", [0, 99]),
            r"test.json line 3 \(id '7'\): 'span2' = \[0, 99\] is not a span of the text "
            r"\(9 characters\)",
        ),
        ("valid", 1, _set("span1", [-1, 3]), r"valid.json line 3 \(id '5'\): 'span1' = \[-1"),
        (
            # An end-inclusive span: [4, 8] for "smoke" at 4..8.
            "train",
            0,
            _set("span1", [4, 8]),
            r"^train.json line 2 \(id '0'\): 'span1' = \[4, 8\] selects 'smok' but 'entity1' "
            r"is 'smoke'; spans are character offsets \[start, end\), end exclusive\.$",
        ),
        ("train", 0, _set("entity2", 5), r"train.json line 2 \(id '0'\): 'entity2' must be a"),
        (
            "test",
            1,
            _no_spans,
            r"^test.json line 3 \(id '7'\): this row has no entity spans \('span1' and 'span2' "
            r"in 'data'\), but the rows before do \(first at train.json line 2\); give every "
            r"row",
        ),
    ],
)
def test_malformed_spans_name_file_and_row(tmp_path, split, row, change, message):
    splits = relation_rows()
    change(splits[split][row]["data"])
    with pytest.raises(ValueError, match=message):
        load_weak_dataset(write_wrench_dir(tmp_path / "bad", splits))


def test_spans_after_rows_without_them_are_an_error(tmp_path):
    splits = relation_rows()
    _no_spans(splits["train"][0]["data"])
    with pytest.raises(
        ValueError,
        match=r"^train.json line 3 \(id '1'\): this row has entity spans .* but the rows "
        r"before do not \(first at train.json line 2\)",
    ):
        load_weak_dataset(write_wrench_dir(tmp_path / "bad", splits))


def test_entities_must_fit_the_split_and_every_split():
    ds = load_weak_dataset(FIXTURES / "wrench")
    with pytest.raises(ValueError, match=r"entities must be None or an \[n, 4\] integer array"):
        rules.WeakSplit(
            "x",
            ("a",),
            np.zeros((1, 0)),
            np.zeros(1),
            np.ones(1, bool),
            ("0",),
            np.zeros((2, 4), np.int32),
        )
    spans = rules._make_split(
        "train",
        ds.train.texts,
        ds.train.L,
        ds.train.y,
        ds.train.labelled,
        ds.train.ids,
        np.zeros((5, 4), np.int32),
    )
    with pytest.raises(ValueError, match=r"either every split has entity spans or none has"):
        rules.WeakDataset("x", "", "wrench", ds.class_names, ds.lf_names, spans, ds.valid, ds.test)


# --------------------------------------------------------------------------------------------
# Entity features


def test_entity_features_are_fitted_on_training_rows_only(tmp_path):
    ds = load_weak_dataset(write_wrench_dir(tmp_path / "rel", relation_rows()))
    feats = tfidf_features(ds, ngram_range=(1, 1), max_features=None)
    plain = tfidf_features(ds, ngram_range=(1, 1), max_features=None, entity_features=False)
    assert tfidf_features(ds, ngram_range=(1, 1), max_features=None, entity_features=True) is (
        feats
    )
    f = len(plain.vocabulary)
    assert feats.vocabulary[:f] == plain.vocabulary
    # The words between the entities of the training rows, sorted; "inside" (valid only)
    # and the entity words themselves are not among them.
    between = ("by", "caused", "causes", "has", "of", "the")
    assert feats.vocabulary[f:] == (
        *(rules.BETWEEN_PREFIX + w for w in between),
        rules.ENTITY_ORDER_FEATURE,
    )
    from sklearn.feature_extraction.text import TfidfVectorizer

    train_between = [" causes a ", " caused by ", " of the ", " has a "]
    reference = TfidfVectorizer().fit(train_between)
    assert tuple(reference.get_feature_names_out()) == between
    for split, texts, order in (
        ("train", train_between, [1, 0, 1, 0]),
        ("valid", [" causes ", " inside the "], [1, 1]),
        ("test", [" caused by the ", " "], [0, 0]),
    ):
        x = feats.split(split)
        assert x.shape == (len(texts), f + len(between) + 1) and x.dtype == np.float32
        np.testing.assert_array_equal(x[:, :f], plain.split(split))
        np.testing.assert_allclose(
            x[:, f:-1], reference.transform(texts).toarray(), rtol=1e-6, atol=0
        )
        np.testing.assert_array_equal(x[:, -1], order)
    np.testing.assert_array_equal(feats.test[1, f:], 0.0)  # adjacent entities: no words


def test_entity_features_arguments(tmp_path):
    ds = load_weak_dataset(FIXTURES / "wrench")
    with pytest.raises(ValueError, match=r"entity_features=True, but the data set 'wrench' has"):
        tfidf_features(ds, entity_features=True)
    with pytest.raises(ValueError, match=r"entity_features must be None, True or False"):
        tfidf_features(ds, entity_features="yes")
    # Entities that always touch leave no word between them in the training rows.
    rows = relation_rows()
    rows["train"] = [relation_row("smoke fire", "smoke", "fire", 0, [0, -1])]
    touching = load_weak_dataset(write_wrench_dir(tmp_path / "t", rows))
    with pytest.raises(ValueError, match=r"no n-gram between the two entities survives"):
        tfidf_features(touching)
    assert tfidf_features(touching, entity_features=False).train.shape == (1, 3)


def test_semeval_entity_features(semeval):
    feats = tfidf_features(semeval, max_features=3000)
    plain = tfidf_features(semeval, max_features=3000, entity_features=False)
    f = len(plain.vocabulary)
    assert f == 3000 and feats.vocabulary[-1] == rules.ENTITY_ORDER_FEATURE
    assert all(v.startswith(rules.BETWEEN_PREFIX) for v in feats.vocabulary[f:-1])
    np.testing.assert_array_equal(feats.valid[:, :f], plain.valid)
    # "Fog caused delays ...": "caused" between the entities, entity 1 first.
    col = feats.vocabulary.index(rules.BETWEEN_PREFIX + "caused")
    assert feats.test[0, col] > 0 and feats.test[0, -1] == 1.0
    np.testing.assert_array_equal(
        feats.train[:, -1], semeval.train.entities[:, 0] < semeval.train.entities[:, 2]
    )
    # The between block's vocabulary and IDF come from the training rows only.
    from sklearn.feature_extraction.text import TfidfVectorizer

    def between(split):
        raw = json.loads((BUNDLED / "semeval" / f"{split}.json").read_text()).values()
        out = []
        for r in raw:
            (a, b), (c, d) = r["data"]["span1"], r["data"]["span2"]
            out.append(r["data"]["text"][b:c] if b <= c else r["data"]["text"][d:a])
        return out

    reference = TfidfVectorizer(ngram_range=(1, 2), max_features=3000).fit(between("train"))
    assert feats.vocabulary[f:-1] == tuple(
        rules.BETWEEN_PREFIX + v for v in reference.get_feature_names_out()
    )
    np.testing.assert_allclose(
        feats.test[:, f:-1], reference.transform(between("test")).toarray(), rtol=1e-6, atol=0
    )


@pytest.mark.parametrize(("name", "max_features"), [("sms", 2000), ("youtube", 10000)])
def test_features_without_spans_are_unchanged(name, max_features):
    # No entity blocks: the features are exactly the text vectorizer's, whatever
    # entity_features says (None or False), as before spans were supported.
    from sklearn.feature_extraction.text import TfidfVectorizer

    ds = load_weak_dataset(name)
    feats = tfidf_features(ds, max_features=max_features)
    assert tfidf_features(ds, max_features=max_features, entity_features=False) is feats
    reference = TfidfVectorizer(ngram_range=(1, 2), max_features=max_features, dtype=np.float32)
    reference.fit(ds.train.texts)
    assert feats.vocabulary == tuple(reference.get_feature_names_out())
    for split in rules.SPLITS:
        np.testing.assert_array_equal(
            feats.split(split), reference.transform(ds.split(split).texts).toarray()
        )


# --------------------------------------------------------------------------------------------
# TF-IDF


def test_tfidf_is_fitted_on_train_only():
    ds = load_weak_dataset(FIXTURES / "csv_rules")
    feats = tfidf_features(ds, ngram_range=(1, 1), max_features=None)
    # "hello" and "you" occur only in test.csv (and valid's "123" only in valid.csv).
    assert "hello" not in feats.vocabulary
    assert "123" not in feats.vocabulary
    assert "free" in feats.vocabulary and "thanks" in feats.vocabulary
    np.testing.assert_array_equal(feats.test[1], 0.0)  # "hello": no known word
    assert feats.train.shape == (9, len(feats.vocabulary))
    assert feats.valid.shape[1] == feats.test.shape[1] == len(feats.vocabulary)
    assert feats.train.dtype == np.float32 and feats.test.dtype == np.float32
    # Rows with words are L2-normalised; the IDF is the train-only one.
    from sklearn.feature_extraction.text import TfidfVectorizer

    reference = TfidfVectorizer().fit(ds.train.texts)
    np.testing.assert_allclose(
        feats.valid, reference.transform(ds.valid.texts).toarray(), rtol=1e-6
    )
    assert feats.split("valid") is feats.valid


def test_tfidf_is_cached_by_content_and_arguments():
    rules.clear_tfidf_cache()
    a = tfidf_features(load_weak_dataset(FIXTURES / "txt_rules"), max_features=5)
    # A fresh load of the same files has the same content: the cache answers.
    b = tfidf_features(load_weak_dataset(FIXTURES / "txt_rules"), max_features=5)
    assert a is b
    c = tfidf_features(load_weak_dataset(FIXTURES / "txt_rules"), max_features=4)
    assert c is not a and c.train.shape[1] == 4
    assert a.train.shape[1] == 5
    rules.clear_tfidf_cache()
    assert tfidf_features(load_weak_dataset(FIXTURES / "txt_rules"), max_features=5) is not a


def test_tfidf_argument_errors_and_missing_sklearn(monkeypatch):
    ds = load_weak_dataset(FIXTURES / "txt_rules")
    with pytest.raises(ValueError, match="ngram_range"):
        tfidf_features(ds, ngram_range=(2, 1))
    with pytest.raises(ValueError, match="max_features"):
        tfidf_features(ds, max_features=0)
    rules.clear_tfidf_cache()
    monkeypatch.setitem(sys.modules, "sklearn.feature_extraction.text", None)
    with pytest.raises(ImportError, match=r"pip install amal_jax\[bench\]"):
        tfidf_features(ds)


# --------------------------------------------------------------------------------------------
# LF summary

# Four LFs on six rows; LF 3 never votes, LF 0 votes alone on the last row.
SUMMARY_L = [
    [0, 0, -1, -1],
    [0, 1, -1, -1],
    [-1, 1, 1, -1],
    [-1, -1, -1, -1],
    [1, -1, 0, -1],
    [0, -1, -1, -1],
]
SUMMARY_Y = [0, 1, 1, 0, 1, 1]


def test_lf_summary_matches_hand_computed_numbers():
    s = lf_summary(SUMMARY_L, SUMMARY_Y, lf_names=["a", "b", "c", "d"])
    np.testing.assert_allclose(s.coverage, [4 / 6, 3 / 6, 2 / 6, 0.0])
    np.testing.assert_allclose(s.overlaps, [3 / 6, 3 / 6, 2 / 6, 0.0])
    # a conflicts on rows 1 (b says 1) and 4 (c says 0); b on row 1; c on row 4.
    np.testing.assert_allclose(s.conflicts, [2 / 6, 1 / 6, 1 / 6, 0.0])
    assert s.polarity == ((0, 1), (0, 1), (0, 1), ())
    np.testing.assert_array_equal(s.correct, [2, 3, 1, 0])
    np.testing.assert_array_equal(s.incorrect, [2, 0, 1, 0])
    np.testing.assert_allclose(s.accuracy[:3], [1 / 2, 1.0, 1 / 2])
    assert np.isnan(s.accuracy[3])
    assert s.total_coverage == pytest.approx(5 / 6)
    assert s.num_rows == 6
    record = s.records()[1]
    assert (record["lf"], record["polarity"], record["correct"], record["incorrect"]) == (
        "b",
        (0, 1),
        3,
        0,
    )
    assert record["coverage"] == pytest.approx(0.5)
    assert record["conflicts"] == pytest.approx(1 / 6)
    assert record["accuracy"] == 1.0


def test_lf_summary_unknown_gold_and_no_gold():
    # Row 1's gold unknown: a loses its incorrect vote there, b its correct one.
    s = lf_summary(SUMMARY_L, [0, -1, 1, 0, 1, 1])
    np.testing.assert_array_equal(s.correct, [2, 2, 1, 0])
    np.testing.assert_array_equal(s.incorrect, [1, 0, 1, 0])
    s = lf_summary(SUMMARY_L)
    assert s.accuracy is None and s.correct is None
    assert "Emp. Acc." not in format_lf_summary(s)


def test_lf_summary_errors():
    with pytest.raises(ValueError, match=r"L\[0, 0\] = 3 is outside \[-1, 2\)"):
        lf_summary([[3]], num_classes=2)
    with pytest.raises(ValueError, match=r"y must have shape \(6,\)"):
        lf_summary(SUMMARY_L, [0, 1])
    with pytest.raises(ValueError, match=r"lf_names has 2 names but L has 4 LFs"):
        lf_summary(SUMMARY_L, lf_names=["a", "b"])


def test_format_lf_summary_table():
    s = lf_summary(
        SUMMARY_L, SUMMARY_Y, lf_names=["a", "b" * 50, "c", "d"], class_names=["no", "yes"]
    )
    text = format_lf_summary(s, name_width=10)
    lines = text.split("\n")
    assert lines[0].split() == [
        "j",
        "LF",
        "Polarity",
        "Coverage",
        "Overlaps",
        "Conflicts",
        "Correct",
        "Incorrect",
        "Emp.",
        "Acc.",
    ]
    assert lines[1].split() == ["0", "a", "no,yes", "0.667", "0.500", "0.333", "2", "2", "0.500"]
    assert lines[2].split()[1] == "bbbbbbb..."
    assert lines[4].split() == ["3", "d", "-", "0.000", "0.000", "0.000", "0", "0", "-"]
    assert lines[-1] == "total coverage 0.833 of 6 rows, 4 LFs"
    # Columns are aligned: every "Coverage" value starts where its header does.
    start = lines[0].index("Coverage")
    assert all(
        line[start : start + 5] in {"0.667", "0.500", "0.333", "0.000"} for line in lines[1:5]
    )
    short = format_lf_summary(s, max_rows=2).split("\n")
    assert short[-2] == "... 2 more LFs" and len(short) == 1 + 2 + 2


def test_lf_summary_of_bundled_youtube(youtube):
    s = lf_summary(
        youtube.valid.L, youtube.valid.y, lf_names=youtube.lf_names, class_names=("HAM", "SPAM")
    )
    # keyword_song votes HAM, regex_check_out votes SPAM; every LF is one-sided.
    assert s.polarity[4] == (0,) and s.polarity[5] == (1,)
    assert all(len(p) == 1 for p in s.polarity)
    assert s.total_coverage == pytest.approx(np.mean((youtube.valid.L >= 0).any(axis=1)))
    assert "textblob_subjectivity" in format_lf_summary(s)


# --------------------------------------------------------------------------------------------
# Rules directories as published: TREC's abbreviated labels and COARSE:fine test lines

TREC_RULES = [
    "DESCRIPTION\t( |^)how (did|does)( |$)\thow did serfdom develop ?",
    "ENTITY\t( |^)what (animal|film)( |$)\twhat film featured popeye ?",
    "NUMERIC\t( |^)how (far|many)( |$)\thow far is it to aspen ?",
    "HUMAN\t( |^)who( |$)\twho was galileo ?",
]


def write_trec_dir(root: Path, *, test_lines, train_lines=None) -> Path:
    """rule.txt with full class names; train/valid .txt with abbreviated, lowercased rows."""
    root.mkdir(parents=True)
    (root / "rule.txt").write_text("".join(line + "\n" for line in TREC_RULES))
    train = train_lines or ["DESC:how does it work ?", "ENTY:what animal barks ?"]
    valid = ["HUM:who wrote it ?", "NUM:how many legs ?", "DESC:how did it end ?"]
    valid.append("ENTY:what film won ?")
    for name, lines in (("train", train), ("valid", valid), ("test", test_lines)):
        (root / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    return root


TREC_TEST = [
    "NUM:dist How far is it from Denver to Aspen ?",
    "HUM:ind Who was Galileo ?",
    "DESC:manner How did serfdom develop ?",
    "ENTY:animal What animal barks ?",
]


def test_trec_abbreviated_labels_and_coarse_fine_lines(tmp_path):
    d = write_trec_dir(tmp_path / "trec", test_lines=TREC_TEST)
    with pytest.warns(UserWarning, match=r"'DESC' -> 'DESCRIPTION', 'ENTY' -> 'ENTITY', 'HUM' "):
        ds = load_weak_dataset(d)
    assert ds.class_names == ("DESCRIPTION", "ENTITY", "HUMAN", "NUMERIC")
    # The fine label is dropped from the text; the coarse one is the class.
    assert ds.test.texts[0] == "How far is it from Denver to Aspen ?"
    np.testing.assert_array_equal(ds.test.y, [3, 2, 0, 1])
    np.testing.assert_array_equal(
        ds.test.L, [[-1, -1, 3, -1], [-1, -1, -1, 2], [0] + [-1] * 3, [-1, 1, -1, -1]]
    )
    # Lowercased LABEL:text files keep their first word.
    assert ds.valid.texts[0] == "who wrote it ?"
    np.testing.assert_array_equal(ds.valid.y, [2, 3, 0, 1])
    np.testing.assert_array_equal(ds.train.y, [0, 1, 3, 2, 0, 1])
    # An explicit label_map gives the same classes without the warning.
    mapping = {"DESC": "DESCRIPTION", "ENTY": "ENTITY", "HUM": "HUMAN", "NUM": "NUMERIC"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mapped = rules.load_rules_dataset(d, label_map=mapping)
    assert mapped.class_names == ds.class_names
    np.testing.assert_array_equal(mapped.test.L, ds.test.L)


def test_trec_test_file_without_fine_labels_reads_as_before(tmp_path):
    d = write_trec_dir(tmp_path / "trec", test_lines=["NUM:how far is it ?", "HUM:who is he ?"])
    with pytest.warns(UserWarning):
        ds = load_weak_dataset(d)
    assert ds.test.texts == ("how far is it ?", "who is he ?")


def test_ambiguous_or_misspelled_labels_are_refused(tmp_path):
    # A misspelling abbreviates no class; an abbreviation of two classes names neither.
    d = write_trec_dir(tmp_path / "a", test_lines=TREC_TEST, train_lines=["NXM:how many ?"])
    with pytest.raises(
        ValueError,
        match=r"^train.txt line 1: label 'NXM' is not a known class; the classes are "
        r"\('DESCRIPTION', 'ENTITY', 'HUMAN', 'NUMERIC'\) \(the labels found in valid.txt, "
        r"test.txt\); fix the label, .*; if it names one of them, pass "
        r"label_map=\{'NXM': <class>\}\.$",
    ):
        load_weak_dataset(d)
    d = write_trec_dir(tmp_path / "b", test_lines=TREC_TEST)
    with pytest.raises(
        ValueError, match=r"valid.txt line 1: label 'HUM' could be any of \('HUMAN', 'HUMOUR'\)"
    ):
        rules.load_rules_dataset(
            d, class_names=["DESCRIPTION", "ENTITY", "HUMAN", "HUMOUR", "NUMERIC"]
        )
    with pytest.raises(ValueError, match=r"label_map maps to \['PLACE'\], which are not classes"):
        rules.load_rules_dataset(d, label_map={"LOC": "PLACE"})
    with pytest.raises(ValueError, match="label_map must map labels as written to class names"):
        rules.load_rules_dataset(d, label_map={"LOC": 3})


def test_lf_summary_shows_the_learned_accuracy_beside_the_empirical_one():
    L, y = [[0, 1], [0, -1], [1, 1]], [0, 0, 1]
    s = lf_summary(L, y, learned_accuracy=[0.9, 0.6])
    assert [r["learned_accuracy"] for r in s.records()] == [0.9, 0.6]
    assert [r["accuracy"] for r in s.records()] == [1.0, 0.5]  # the existing fields stay
    header = format_lf_summary(s).splitlines()[0]
    assert header.endswith("Emp. Acc.  Learned Acc.")
    assert "learned_accuracy" not in lf_summary(L, y).records()[0]
    with pytest.raises(ValueError, match=r"learned_accuracy must have one value per LF"):
        lf_summary(L, y, learned_accuracy=[0.9])
