"""Weakly supervised text data sets: labelling-function votes, gold labels, TF-IDF features.

Two on-disk formats are read, for any directory laid out like them:

- **rules** (Imply-Loss, Awasthi et al. 2020): ``rule.txt`` holds one rule a line,
  ``LABEL<TAB>python regex<TAB>exemplar sentence``; the splits are ``train``, ``valid`` and
  ``test``, each either ``<split>.csv`` (header ``v1,v2`` or ``label,text``, then
  ``label,text`` rows) or ``<split>.txt`` (``LABEL:text`` lines). The classes are the labels
  found in the valid and test files, in sorted order (or ``class_names=``), and every rule's
  label and every training label must be one of them: a misspelled label is an error, not a
  new class. A
  training-file row may leave its label empty (an unlabelled row, gold ``y = -1``); valid and
  test rows need one. The rules are applied here:
  rule ``j`` votes its label on text ``t`` when ``re.findall(regex, t.strip().lower())`` is
  non-empty and abstains (``-1``) otherwise. The labelled rows are the distinct exemplar
  sentences with their rule's label; they come first in the training split, followed by the
  (unlabelled) rows of the training file.
- **WRENCH** (Zhang et al. 2021): ``train.json``, ``valid.json``, ``test.json`` map row ids
  to ``{"label": int, "weak_labels": [m ints, -1 = abstain], "data": {"text": str}}``;
  ``label.json`` maps class ids to names; the optional ``labeled_ids.json`` names the
  training rows whose gold label may be used (without it none may). An optional
  ``lf_names.json`` (a JSON list of ``m`` strings, not part of WRENCH) names the LFs.
  Relation data sets mark two entities per row: ``"data"`` then also holds
  ``"span1": [start, end]`` and ``"span2": [start, end]``, character offsets into the text
  with the end exclusive (``text[start:end]``), and optionally the entity strings
  ``"entity1"`` / ``"entity2"``, which must equal the text they span. Either every row of the
  three files has both spans or none has; they are kept as :attr:`WeakSplit.entities`.

Both give a :class:`WeakDataset`; :func:`load_weak_dataset` takes a bundled name
(:data:`BUNDLED_DATASETS`) or a directory and detects the format. Every malformed input is
a ``ValueError`` naming the file and line; nothing is dropped silently.

Example::

    ds = load_weak_dataset("sms")
    ds.train.L          # [n, m] int32 votes, -1 = abstain
    ds.train.labelled   # [n] bool: rows whose gold label may be used
    feats = tfidf_features(ds)   # fitted on the training texts only
    load_weak_dataset("semeval").train.entities   # [n, 4] int32 entity spans
"""

from __future__ import annotations

import bisect
import collections
import csv
import dataclasses
import functools
import hashlib
import io
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BETWEEN_PREFIX",
    "BUNDLED_DATASETS",
    "ENTITY_ORDER_FEATURE",
    "SPLITS",
    "TfidfFeatures",
    "WeakDataset",
    "WeakSplit",
    "clear_tfidf_cache",
    "load_rules_dataset",
    "load_weak_dataset",
    "load_wrench_dataset",
    "tfidf_features",
]

#: The names :func:`load_weak_dataset` resolves to the data shipped in ``amal_jax/weak/bundled``.
BUNDLED_DATASETS = ("sms", "youtube", "semeval")

#: The splits every data set has, in order.
SPLITS = ("train", "valid", "test")

#: The name of the column of :func:`tfidf_features` that is 1 where entity 1 starts before
#: entity 2 in the text (entity-span data sets only).
ENTITY_ORDER_FEATURE = "[entity1 before entity2]"

#: The prefix of the :func:`tfidf_features` columns of the words between the two entities.
BETWEEN_PREFIX = "between:"

_BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
_CSV_HEADERS = (("v1", "v2"), ("label", "text"))


def _frozen(array: np.ndarray) -> np.ndarray:
    # The data sets are shared (and cached features are keyed on their content), so their
    # arrays are read-only: an in-place edit would silently invalidate the cache.
    array.setflags(write=False)
    return array


@dataclasses.dataclass(frozen=True, eq=False)
class WeakSplit:
    """One split of a :class:`WeakDataset`.

    Fields:
        name: ``"train"``, ``"valid"`` or ``"test"``.
        texts: ``n`` texts, as in the files.
        L: ``[n, m]`` int32 votes of the ``m`` labelling functions; ``-1`` = abstain.
        y: ``[n]`` int32 gold labels in ``[0, C)``. For the training split they are the
            files' labels, for analysis only: use them as supervision only where ``labelled``.
            ``-1`` (unknown) for a rules-format training row whose label field is empty.
        labelled: ``[n]`` bool, the rows whose gold label may be used (all rows of
            ``valid`` / ``test``).
        ids: ``n`` row ids: the WRENCH keys, or ``"file:line"`` for the rules format.
        entities: ``[n, 4]`` int32 character spans of the two marked entities,
            ``(start1, end1, start2, end2)`` with the ends exclusive (entity ``k`` is
            ``texts[i][start_k:end_k]``), for relation data sets; ``None`` for data sets
            without entity spans.
    """

    name: str
    texts: tuple[str, ...] = dataclasses.field(repr=False)
    L: np.ndarray = dataclasses.field(repr=False)
    y: np.ndarray = dataclasses.field(repr=False)
    labelled: np.ndarray = dataclasses.field(repr=False)
    ids: tuple[str, ...] = dataclasses.field(repr=False)
    entities: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        e = self.entities
        if e is not None and (
            not isinstance(e, np.ndarray)
            or e.shape != (len(self.texts), 4)
            or not np.issubdtype(e.dtype, np.integer)
        ):
            raise ValueError(
                f"WeakSplit {self.name!r}: entities must be None or an [n, 4] integer array "
                f"with n = {len(self.texts)} rows; got "
                f"{getattr(e, 'shape', type(e).__name__)} {getattr(e, 'dtype', '')}."
            )

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        return (
            f"WeakSplit(name={self.name!r}, n={len(self)}, m={self.L.shape[1]}, "
            f"labelled={int(self.labelled.sum())})"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class WeakDataset:
    """A weakly supervised classification data set: texts, LF votes and gold labels per split.

    Fields:
        name: the bundled name or the directory's name.
        path: the directory it was read from.
        format: ``"rules"`` or ``"wrench"``.
        class_names: the ``C`` class names; class ``c`` is ``class_names[c]``.
        lf_names: the ``m`` labelling-function names (the regex for rules, else ``lf_j``).
        train, valid, test: the three :class:`WeakSplit` s; either all three carry
            entity spans (:attr:`WeakSplit.entities`) or none does.
    """

    name: str
    path: str
    format: str
    class_names: tuple[str, ...]
    lf_names: tuple[str, ...] = dataclasses.field(repr=False)
    train: WeakSplit
    valid: WeakSplit
    test: WeakSplit

    def __post_init__(self):
        present = {name: self.split(name).entities is not None for name in SPLITS}
        if len(set(present.values())) > 1:
            raise ValueError(
                f"WeakDataset {self.name!r}: either every split has entity spans or none has; "
                f"got {present}."
            )

    @property
    def has_entities(self) -> bool:
        """Whether the rows carry entity spans (:attr:`WeakSplit.entities`).

        Example:
            >>> load_weak_dataset("semeval").has_entities, load_weak_dataset("sms").has_entities
            (True, False)
        """
        return self.train.entities is not None

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes."""
        return len(self.class_names)

    @property
    def num_lfs(self) -> int:
        """``m``, the number of labelling functions."""
        return len(self.lf_names)

    def split(self, name: str) -> WeakSplit:
        """The split called ``name`` (one of :data:`SPLITS`).

        Example:
            >>> load_weak_dataset("youtube").split("valid").L.shape
            (120, 10)
        """
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {name!r}.")
        return getattr(self, name)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A SHA-256 hex digest of the contents (names, texts, votes, labels, masks, spans)."""
        h = hashlib.sha256()
        h.update(repr((self.class_names, self.lf_names)).encode())
        for name in SPLITS:
            s = self.split(name)
            h.update(name.encode())
            for text in s.texts:
                # Length-prefixed so that ("ab", "c") and ("a", "bc") differ.
                data = text.encode("utf-8", "surrogatepass")
                h.update(len(data).to_bytes(8, "little") + data)
            for a in (s.L, s.y, s.labelled):
                h.update(np.ascontiguousarray(a).tobytes())
            if s.entities is not None:
                # Only where present, so data sets without spans keep their digests.
                h.update(b"entities" + np.ascontiguousarray(s.entities, np.int64).tobytes())
        return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Entry point


def load_weak_dataset(name_or_path: str | Path) -> WeakDataset:
    """Loads a bundled data set by name, or any directory in the rules or WRENCH format.

    A directory with ``rule.txt`` is read by :func:`load_rules_dataset`; one with
    ``train.json`` by :func:`load_wrench_dataset`.

    Args:
        name_or_path: one of :data:`BUNDLED_DATASETS` (``"sms"``: 73 regex rules on SMS spam;
            ``"youtube"``: 10 LFs on YouTube comment spam; ``"semeval"``: 164 patterns on
            SemEval-2010 Task 8 relations, 9 classes, with entity spans and no labelled
            training rows) or a directory. A bundled name always means the bundled data;
            write ``"./sms"`` for a local directory so named.

    Returns:
        A :class:`WeakDataset`.

    Example:
        >>> ds = load_weak_dataset("sms")
        >>> ds.class_names, ds.num_lfs, len(ds.valid), len(ds.test)
        (('ham', 'spam'), 73, 500, 500)
    """
    if isinstance(name_or_path, str) and name_or_path in BUNDLED_DATASETS:
        name, path = name_or_path, _BUNDLED_DIR / name_or_path
    else:
        name, path = None, Path(name_or_path)
        if not path.is_dir():
            raise ValueError(
                f"{str(name_or_path)!r} is neither a bundled data set {BUNDLED_DATASETS} nor a "
                "directory."
            )
    if (path / "rule.txt").is_file():
        return load_rules_dataset(path, name=name)
    if (path / "train.json").is_file():
        return load_wrench_dataset(path, name=name)
    raise ValueError(
        f"cannot tell the format of {str(path)!r}: looked for 'rule.txt' (rules format: "
        "rule.txt + train/valid/test .csv or .txt) and 'train.json' (WRENCH format: "
        "train/valid/test .json + label.json); found neither."
    )


# --------------------------------------------------------------------------------------------
# Reading text


def _read_text(path: Path, encoding: str | None) -> str:
    if not path.is_file():
        raise ValueError(f"missing file {str(path)!r}.")
    raw = path.read_bytes()
    if encoding is not None:
        return raw.decode(encoding)
    try:
        # utf-8-sig drops a byte-order mark a spreadsheet may have written.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # The Imply-Loss files were written as latin-1; it decodes any byte string.
        return raw.decode("latin-1")


def _lines(text: str) -> list[str]:
    # Not str.splitlines: that also splits on \x0b, \x1c, \u2028, ... which may occur in texts.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


# --------------------------------------------------------------------------------------------
# Rules format


class _Rule(NamedTuple):
    label: str
    pattern: re.Pattern
    exemplar: str
    line: int


def _read_rules(path: Path, encoding: str | None) -> list[_Rule]:
    rules = []
    for lineno, line in enumerate(_lines(_read_text(path, encoding)), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(
                f"{path.name} line {lineno}: expected 3 tab-separated fields "
                f"(LABEL<TAB>regex<TAB>exemplar), found {len(fields)}: {line[:80]!r}."
            )
        label, regex, exemplar = fields
        label = label.strip()
        if not label:
            raise ValueError(f"{path.name} line {lineno}: the rule's label is empty.")
        if not regex:
            raise ValueError(
                f"{path.name} line {lineno}: the rule's regex is empty; an empty pattern would "
                "vote on every text."
            )
        try:
            pattern = re.compile(regex)
        except re.error as e:
            raise ValueError(
                f"{path.name} line {lineno}: the regex {regex!r} does not compile: {e}."
            ) from None
        rules.append(_Rule(label, pattern, exemplar.strip(), lineno))
    if not rules:
        raise ValueError(f"{path.name} holds no rules.")
    return rules


def _read_split_rows(
    directory: Path, split: str, encoding: str | None
) -> tuple[str, list[tuple[str, str, int]]]:
    """Returns ``(file name, [(label, text, line)])`` for ``<split>.csv`` or ``<split>.txt``."""
    csv_path, txt_path = directory / f"{split}.csv", directory / f"{split}.txt"
    if csv_path.is_file() and txt_path.is_file():
        raise ValueError(
            f"both {csv_path.name} and {txt_path.name} exist in {str(directory)!r}; keep one."
        )
    if csv_path.is_file():
        return csv_path.name, _read_csv_rows(csv_path, encoding)
    if txt_path.is_file():
        return txt_path.name, _read_txt_rows(txt_path, encoding)
    raise ValueError(
        f"missing split {split!r} in {str(directory)!r}: looked for {csv_path.name} "
        f"(csv, header v1,v2) and {txt_path.name} (LABEL:text lines)."
    )


def _read_csv_rows(path: Path, encoding: str | None) -> list[tuple[str, str, int]]:
    text = _read_text(path, encoding)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    header = None
    last_line = 0
    for fields in reader:
        # A quoted field may span lines: the record starts after the previous one ended.
        lineno, last_line = last_line + 1, reader.line_num
        if header is None:
            header = tuple(f.strip().lower() for f in fields)
            if header not in _CSV_HEADERS:
                raise ValueError(
                    f"{path.name} line {lineno}: expected the header 'v1,v2' (label,text) or "
                    f"'label,text'; found {','.join(fields)[:80]!r}."
                )
            continue
        if not fields:
            continue  # a blank line between records
        if len(fields) != 2:
            raise ValueError(
                f"{path.name} line {lineno}: expected 2 fields (label,text), found "
                f"{len(fields)}: {fields!r:.80}."
            )
        rows.append((fields[0].strip(), fields[1], lineno))
    if header is None:
        raise ValueError(f"{path.name} is empty; expected the header 'v1,v2' and rows.")
    return rows


# ``COARSE:fine Text``: a lowercase fine label, one space, then the text (TREC's form).
_FINE_LABEL = re.compile(r"([a-z][a-z0-9_]*) (?=\S)")


def _read_txt_rows(path: Path, encoding: str | None) -> list[tuple[str, str, int]]:
    rows = []
    for lineno, line in enumerate(_lines(_read_text(path, encoding)), start=1):
        if not line.strip():
            continue
        label, sep, text = line.partition(":")
        if not sep:
            raise ValueError(
                f"{path.name} line {lineno}: expected 'LABEL:text', found no ':' in {line[:80]!r}."
            )
        rows.append((label.strip(), text, lineno))
    return _drop_fine_labels(rows)


def _drop_fine_labels(rows: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Rows of a ``COARSE:fine Text`` file (TREC's ``NUM:dist How far is it ...``) lose the
    fine label; other files are returned as they are.

    A file is in that form when every row's text starts with a lowercase word and one space
    and, in nearly every row (95%), the word after it starts with a capital, a digit or a
    symbol: the fine label is then a lowercase tag before a cased text. A lowercased file
    (``DESC:how did ...``) has lowercase second words and is left alone.
    """
    if not rows:
        return rows
    matches = [_FINE_LABEL.match(text) for _, text, _ in rows]
    if not all(matches):
        return rows
    cased = sum(not text[m.end()].islower() for (_, text, _), m in zip(rows, matches, strict=True))
    if cased < 0.95 * len(rows):
        return rows
    return [
        (label, text[m.end() :], lineno)
        for (label, text, lineno), m in zip(rows, matches, strict=True)
    ]


def _rule_votes(rules: Sequence[_Rule], rule_ids: Sequence[int], texts: Sequence[str]):
    votes = np.full((len(texts), len(rules)), -1, dtype=np.int32)
    for i, text in enumerate(texts):
        t = text.strip().lower()
        for j, rule in enumerate(rules):
            # re.search finds a match exactly when re.findall's list is non-empty.
            if rule.pattern.search(t) is not None:
                votes[i, j] = rule_ids[j]
    return votes


def _abbreviates(short: str, full: str) -> bool:
    """Whether ``short`` abbreviates ``full``: same first letter, its letters in order in
    ``full``, case ignored (``DESC`` / ``DESCRIPTION``, ``ENTY`` / ``ENTITY``)."""
    short, full = short.lower(), full.lower()
    if not short or not full or short[0] != full[0] or len(short) > len(full):
        return False
    letters = iter(full)
    return all(ch in letters for ch in short)


def _abbreviation_match(label: str, names) -> set[str]:
    """The names that ``label`` abbreviates or that abbreviate it."""
    return {n for n in names if _abbreviates(label, n) or _abbreviates(n, label)}


def _check_label_map(label_map: Any) -> dict[str, str]:
    if label_map is None:
        return {}
    if not isinstance(label_map, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in label_map.items()
    ):
        raise ValueError(
            f"label_map must map labels as written to class names, both strings; got "
            f"{label_map!r:.80}."
        )
    return dict(label_map)


def load_rules_dataset(
    path: str | Path,
    *,
    name: str | None = None,
    class_names: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    encoding: str | None = None,
) -> WeakDataset:
    """Loads a directory in the Imply-Loss rules format (see the module docstring).

    Classes come from the gold-labelled data: they are the distinct labels of the ``valid``
    and ``test`` files, in sorted order (``ham`` = 0, ``spam`` = 1), unless ``class_names``
    fixes them. The rules and the training file must use those classes: a rule label or a
    training label outside them (``spma`` for ``spam``) is a ``ValueError`` naming its file
    and line, never a new class. A class that no valid or test row has therefore needs
    ``class_names``.

    The training file's labels are for analysis only and may be left empty (``,text`` in a
    csv, ``:text`` in a txt): such a row gets gold ``y = -1``, and a training file without
    any labels leaves the classes to ``valid`` and ``test``. Valid and test rows must be
    labelled. Exemplar sentences shared by several rules count once; an exemplar given two
    different labels is an error. An empty exemplar field adds no labelled row.

    Published directories do not always spell a class the same way in every file (TREC:
    ``DESC:how did ...`` in the data, ``DESCRIPTION`` in ``rule.txt``). A label that is not
    a class is matched to the class it abbreviates, or that abbreviates it: the same first
    letter and its letters in order in the other name, case ignored (``DESC`` for
    ``DESCRIPTION``, ``ENTY`` for ``ENTITY``), when exactly one class matches. The class is
    then named by the longer spelling, and a ``UserWarning`` lists the mapping once. A label
    matching no class (``spma``), or several, is an error naming the file, the line and the
    classes; ``label_map`` settles such labels explicitly. A ``.txt`` split in TREC's
    ``COARSE:fine Text`` form (``NUM:dist How far is it ...``) is read as label ``NUM`` and
    text ``How far is it ...`` (see :func:`_drop_fine_labels`).

    Args:
        path: the directory holding ``rule.txt`` and the three splits.
        name: the data set's name; default the directory's name.
        class_names: the classes in order, to fix their order or to add a class that no
            data row carries; every rule label and data label must be one of them.
        label_map: ``{label as written: class name}`` for labels spelled another way in
            some file (``{"DESC": "DESCRIPTION"}``); applied before any other matching.
        encoding: the files' encoding; default UTF-8, falling back to latin-1.

    Returns:
        A :class:`WeakDataset` with ``format="rules"`` and the rules' regexes as LF names.
        The training split is the exemplar rows (``labelled``) followed by the training
        file's rows (not ``labelled``).

    Raises:
        ValueError: for a malformed file (naming it and the line), a rule label or data label
            outside the classes, an empty valid / test label, or no labels at all.

    Example:
        >>> ds = load_rules_dataset(_BUNDLED_DIR / "sms")
        >>> ds.train.L.shape, int(ds.train.labelled.sum())
        ((4571, 73), 69)
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"{str(directory)!r} is not a directory.")
    rules = _read_rules(directory / "rule.txt", encoding)
    split_rows = {split: _read_split_rows(directory, split, encoding) for split in SPLITS}
    for split in ("valid", "test"):
        file_name, rows = split_rows[split]
        for label, _, lineno in rows:
            if not label:
                raise ValueError(
                    f"{file_name} line {lineno}: the label is empty; every {split} row needs a "
                    "gold label (only the training file may leave labels empty)."
                )
    file_names = ", ".join(file_name for file_name, _ in split_rows.values())
    label_map = _check_label_map(label_map)

    def mapped(label: str) -> str:
        return label_map.get(label, label)

    aliases: dict[str, str] = {}  # label as written -> class name, matched by abbreviation
    if class_names is None:
        # Classes come from the gold-labelled splits, not the rules or the training file: a
        # rule label is hand-written, the training file's labels are not used for training,
        # and a misspelling in either must not become a class of its own.
        gold = [split_rows[split] for split in ("valid", "test")]
        found = {mapped(label) for _, rows in gold for label, _, _ in rows if label}
        if not found:
            raise ValueError(
                f"{file_names} hold no labels, so there are no classes; label the valid and "
                "test rows or pass class_names=."
            )
        # A rule label that abbreviates a gold label, or that it abbreviates, names that
        # class; the class takes the longer spelling.
        longer: dict[str, str] = {}
        for r in rules:
            label = mapped(r.label)
            if label in found:
                continue
            match = _abbreviation_match(label, found)
            if len(match) == 1:
                (short,) = match
                if len(label) > len(longer.get(short, short)):
                    longer[short] = label
        classes = tuple(sorted(longer.get(c, c) for c in found))
        aliases.update({short: full for short, full in longer.items()})
        source = f"the labels found in {', '.join(name for name, _ in gold)}"
    else:
        if isinstance(class_names, str):
            raise ValueError(
                f"class_names must be a sequence of class names, not one string; got "
                f"{class_names!r} (write [{class_names!r}] for one class)."
            )
        classes = tuple(str(c) for c in class_names)
        if len(set(classes)) != len(classes) or not classes or "" in classes:
            raise ValueError(f"class_names must be distinct, non-empty strings; got {classes!r}.")
        source = "class_names"
    unknown_target = sorted(set(label_map.values()) - set(classes))
    if unknown_target:
        raise ValueError(
            f"label_map maps to {unknown_target}, which are not classes; the classes are "
            f"{classes} ({source})."
        )
    label_ids = {c: k for k, c in enumerate(classes)}

    def resolve(label: str, where: str, hint: str) -> int:
        label = mapped(label)
        if label in label_ids:
            return label_ids[label]
        if label not in aliases:
            match = _abbreviation_match(label, classes)
            if len(match) != 1:
                problem = (
                    f"could be any of {tuple(sorted(match))}"
                    if match
                    else f"is not a known class; the classes are {classes} ({source}){hint}"
                )
                raise ValueError(
                    f"{where}: label {label!r} {problem}; if it names one of them, pass "
                    f"label_map={{{label!r}: <class>}}."
                )
            (aliases[label],) = match
        return label_ids[aliases[label]]

    rule_hint = (
        ""
        if class_names is not None
        else "; fix the rule's label, or pass class_names= to add a class that no data row has"
    )
    rule_ids = [resolve(r.label, f"rule.txt line {r.line}", rule_hint) for r in rules]

    exemplars: dict[str, _Rule] = {}
    exemplar_ids: dict[str, int] = {}
    for r, rule_id in zip(rules, rule_ids, strict=True):
        if not r.exemplar:
            continue
        first = exemplars.setdefault(r.exemplar, r)
        exemplar_ids.setdefault(r.exemplar, rule_id)
        if exemplar_ids[r.exemplar] != rule_id:
            raise ValueError(
                f"rule.txt lines {first.line} and {r.line}: the exemplar {r.exemplar[:60]!r} is "
                f"labelled both {first.label!r} and {r.label!r}."
            )

    splits = {}
    for split in SPLITS:
        file_name, rows = split_rows[split]
        hint = (
            ""
            if class_names is not None
            else "; fix the label, or pass class_names= to add a class that no valid or test "
            "row has"
        )
        y = [
            resolve(label, f"{file_name} line {lineno}", hint) if label else -1
            for label, _, lineno in rows
        ]
        texts = [text for _, text, _ in rows]
        ids = [f"{file_name}:{lineno}" for _, _, lineno in rows]
        labelled = [split != "train"] * len(rows)
        if split == "train":
            texts = [r.exemplar for r in exemplars.values()] + texts
            y = [exemplar_ids[text] for text in exemplars] + y
            ids = [f"rule.txt:{r.line}" for r in exemplars.values()] + ids
            labelled = [True] * len(exemplars) + labelled
        splits[split] = _make_split(
            split, texts, _rule_votes(rules, rule_ids, texts), y, labelled, ids
        )
    matched = {label: c for label, c in aliases.items() if label != c}
    if matched:
        listing = ", ".join(f"{label!r} -> {c!r}" for label, c in sorted(matched.items()))
        warnings.warn(
            f"{directory.name}: labels matched to classes by abbreviation: {listing}; pass "
            "label_map= to set them explicitly.",
            stacklevel=2,
        )
    return WeakDataset(
        name=name or directory.name,
        path=str(directory),
        format="rules",
        class_names=classes,
        lf_names=tuple(r.pattern.pattern for r in rules),
        **splits,
    )


def _make_split(name, texts, L, y, labelled, ids, entities=None) -> WeakSplit:
    m = L.shape[1] if np.ndim(L) == 2 else 0
    if entities is not None:
        entities = _frozen(np.asarray(entities, dtype=np.int32).reshape(len(texts), 4))
    return WeakSplit(
        name=name,
        texts=tuple(texts),
        L=_frozen(np.asarray(L, dtype=np.int32).reshape(len(texts), m)),
        y=_frozen(np.asarray(y, dtype=np.int32).reshape(len(texts))),
        labelled=_frozen(np.asarray(labelled, dtype=bool).reshape(len(texts))),
        ids=tuple(ids),
        entities=entities,
    )


# --------------------------------------------------------------------------------------------
# WRENCH format


_WS = re.compile(r"\s*")


def _json_rows(path: Path, encoding: str | None) -> list[tuple[str, Any, int]]:
    """Reads a top-level JSON object as ``[(key, value, line of the key)]``, keys unique."""
    text = _read_text(path, encoding)
    newlines = [match.start() for match in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_left(newlines, pos) + 1

    def fail(pos: int, what: str):
        raise ValueError(f"{path.name} line {line_of(pos)}: {what}")

    decoder = json.JSONDecoder()
    i = _WS.match(text, 0).end()
    if text[i : i + 1] != "{":
        fail(i, "expected a JSON object {id: row, ...}.")
    i = _WS.match(text, i + 1).end()
    rows, seen = [], {}
    if text[i : i + 1] == "}":
        i += 1
    else:
        while True:
            if text[i : i + 1] != '"':
                fail(i, "expected a row id (a JSON string).")
            start = i
            try:
                key, i = json.decoder.scanstring(text, i + 1)
                i = _WS.match(text, i).end()
                if text[i : i + 1] != ":":
                    fail(i, f"expected ':' after the row id {key!r}.")
                value, i = decoder.raw_decode(text, _WS.match(text, i + 1).end())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path.name} line {e.lineno}: invalid JSON: {e.msg}.") from None
            if key in seen:
                fail(start, f"row id {key!r} repeats the row at line {seen[key]}.")
            seen[key] = line_of(start)
            rows.append((key, value, seen[key]))
            i = _WS.match(text, i).end()
            if text[i : i + 1] == ",":
                i = _WS.match(text, i + 1).end()
            elif text[i : i + 1] == "}":
                i += 1
                break
            else:
                fail(i, "expected ',' or '}' after a row.")
    if text[_WS.match(text, i).end() :]:
        fail(i, "unexpected data after the JSON object.")
    return rows


def _read_json(path: Path, encoding: str | None) -> Any:
    try:
        return json.loads(_read_text(path, encoding))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name} line {e.lineno}: invalid JSON: {e.msg}.") from None


def _read_label_json(path: Path, encoding: str | None) -> tuple[str, ...]:
    labels = _read_json(path, encoding)
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path.name} must be a non-empty JSON object {{class id: name}}.")
    try:
        ids = sorted(int(k) for k in labels)
    except ValueError:
        raise ValueError(
            f"{path.name}: class ids must be integers; got {list(labels)!r}."
        ) from None
    if ids != list(range(len(labels))):
        raise ValueError(f"{path.name}: class ids must be 0..C-1; got {ids}.")
    names = {int(k): str(v) for k, v in labels.items()}
    return tuple(names[k] for k in ids)


def _read_labeled_ids(path: Path, encoding: str | None) -> list[str]:
    data = _read_json(path, encoding)
    if isinstance(data, list):
        ids = data
    elif isinstance(data, dict):
        unknown = set(data) - {"labeled_ids", "lf_exemplar_ids"}
        if unknown:
            raise ValueError(
                f"{path.name}: unknown keys {sorted(unknown)}; expected 'labeled_ids' and "
                "optionally 'lf_exemplar_ids'."
            )
        ids = list(data.get("labeled_ids", [])) + list(data.get("lf_exemplar_ids", []))
    else:
        raise ValueError(
            f"{path.name} must be a JSON list of ids or {{'labeled_ids': [...], "
            "'lf_exemplar_ids': [...]}."
        )
    return [str(i) for i in ids]


def load_wrench_dataset(
    path: str | Path, *, name: str | None = None, encoding: str | None = None
) -> WeakDataset:
    """Loads a directory in the WRENCH JSON format (see the module docstring).

    ``labeled_ids.json`` may be a list of training ids or WRENCH's
    ``{"labeled_ids": [...], "lf_exemplar_ids": [...]}``; both lists are marked
    ``labelled`` (the exemplars' labels were seen when the LFs were written, as for the rules
    format). Rows keep the files' order.

    Entity spans (``"span1"`` / ``"span2"`` in a row's ``"data"``, see the module docstring)
    are kept as :attr:`WeakSplit.entities`. A span must be two integers ``[start, end]``
    with ``0 <= start < end <= len(text)``, the end exclusive, and where the row names the
    entity (``"entity1"`` / ``"entity2"``) it must equal ``text[start:end]``: a mismatch
    usually means the spans follow another convention (end inclusive, token offsets), and
    features built from them would be silently wrong. Either every row of the three files has
    spans or none has.

    Args:
        path: the directory.
        name: the data set's name; default the directory's name.
        encoding: the files' encoding; default UTF-8, falling back to latin-1.

    Returns:
        A :class:`WeakDataset` with ``format="wrench"``; LF names from ``lf_names.json`` if
        present, else ``lf_0 .. lf_{m-1}``; ``entities`` set on every split when the rows
        have spans, else ``None``.

    Raises:
        ValueError: for a malformed file, row, label, vote or span, naming the file, line
            and row id; for rows with spans mixed with rows without.

    Example:
        >>> ds = load_wrench_dataset(_BUNDLED_DIR / "youtube")
        >>> ds.class_names, ds.train.L.shape, int(ds.train.labelled.sum())
        (('HAM', 'SPAM'), (1686, 10), 100)
        >>> ds = load_wrench_dataset(_BUNDLED_DIR / "semeval")
        >>> start1, end1, start2, end2 = ds.test.entities[0]
        >>> ds.test.texts[0][start1:end1], ds.test.texts[0][start2:end2]
        ('Fog', 'delays')
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"{str(directory)!r} is not a directory.")
    for split in SPLITS:
        if not (directory / f"{split}.json").is_file():
            raise ValueError(f"missing split {split!r}: no {split}.json in {str(directory)!r}.")
    if not (directory / "label.json").is_file():
        raise ValueError(f"missing label.json (class id -> name) in {str(directory)!r}.")
    classes = _read_label_json(directory / "label.json", encoding)
    num_classes = len(classes)

    rows_read = {}
    m = None  # the number of LFs, fixed by the first row read
    m_source = ""
    with_spans = None  # whether rows have entity spans, fixed by the first row read
    spans_source = ""
    for split in SPLITS:
        file_name = f"{split}.json"
        texts, votes, y, ids, spans = [], [], [], [], []
        for key, row, line in _json_rows(directory / file_name, encoding):
            where = f"{file_name} line {line} (id {key!r})"
            if not isinstance(row, dict) or not {"label", "weak_labels", "data"} <= set(row):
                raise ValueError(
                    f"{where}: a row must be an object with 'label', 'weak_labels' and 'data'."
                )
            label, weak, data = row["label"], row["weak_labels"], row["data"]
            if not isinstance(data, dict) or not isinstance(data.get("text"), str):
                raise ValueError(f"{where}: 'data' must be an object with a string 'text'.")
            if not _is_int(label) or not 0 <= label < num_classes:
                raise ValueError(
                    f"{where}: label {label!r} is not a class id of label.json "
                    f"(0..{num_classes - 1}: {classes})."
                )
            if not isinstance(weak, list) or not all(_is_int(v) for v in weak):
                raise ValueError(f"{where}: 'weak_labels' must be a list of integers.")
            if m is None:
                m, m_source = len(weak), f"{file_name} line {line}"
            elif len(weak) != m:
                raise ValueError(
                    f"{where}: {len(weak)} weak_labels, but the rows before have {m} "
                    f"(first at {m_source})."
                )
            for j, v in enumerate(weak):
                if not -1 <= v < num_classes:
                    raise ValueError(
                        f"{where}: weak_labels[{j}] = {v} is outside [-1, {num_classes}) "
                        "(-1 = abstain, else a class id)."
                    )
            row_spans = _row_spans(data, where)
            if with_spans is None:
                with_spans, spans_source = row_spans is not None, f"{file_name} line {line}"
            elif (row_spans is not None) != with_spans:
                raise ValueError(
                    f"{where}: this row {'has' if row_spans is not None else 'has no'} entity "
                    f"spans ('span1' and 'span2' in 'data'), but the rows before "
                    f"{'do' if with_spans else 'do not'} (first at {spans_source}); give every "
                    "row of train.json, valid.json and test.json both spans, or none."
                )
            texts.append(data["text"])
            votes.append(weak)
            y.append(label)
            ids.append(key)
            spans.append(row_spans)
        rows_read[split] = (texts, votes, y, ids, spans)

    splits = {}
    for split in SPLITS:
        texts, votes, y, ids, spans = rows_read[split]
        labelled = np.full(len(ids), split != "train")
        if split == "train":
            labelled_path = directory / "labeled_ids.json"
            if labelled_path.is_file():
                index = {key: i for i, key in enumerate(ids)}
                for key in _read_labeled_ids(labelled_path, encoding):
                    if key not in index:
                        raise ValueError(
                            f"labeled_ids.json: id {key!r} is not a row of train.json."
                        )
                    labelled[index[key]] = True
        entities = np.asarray(spans, np.int32).reshape(len(texts), 4) if with_spans else None
        splits[split] = _make_split(
            split,
            texts,
            np.asarray(votes, np.int32).reshape(len(texts), m or 0),
            y,
            labelled,
            ids,
            entities,
        )
    m = m or 0
    lf_names = tuple(f"lf_{j}" for j in range(m))
    names_path = directory / "lf_names.json"
    if names_path.is_file():
        names = _read_json(names_path, encoding)
        if (
            not isinstance(names, list)
            or len(names) != m
            or not all(isinstance(n, str) for n in names)
        ):
            raise ValueError(f"lf_names.json must be a JSON list of {m} strings (one per LF).")
        lf_names = tuple(names)
    return WeakDataset(
        name=name or directory.name,
        path=str(directory),
        format="wrench",
        class_names=classes,
        lf_names=lf_names,
        **splits,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_SPAN_KEYS = (("span1", "entity1"), ("span2", "entity2"))


def _row_spans(data: dict, where: str) -> tuple[int, int, int, int] | None:
    """A row's ``(start1, end1, start2, end2)``, or ``None`` if it has no spans."""
    present = [key for key, _ in _SPAN_KEYS if key in data]
    if not present:
        return None
    if len(present) == 1:
        (missing,) = {key for key, _ in _SPAN_KEYS} - set(present)
        raise ValueError(
            f"{where}: 'data' has {present[0]!r} but no {missing!r}; a row with entity spans "
            "needs both."
        )
    text = data["text"]
    out = []
    for key, entity_key in _SPAN_KEYS:
        span = data[key]
        if not (isinstance(span, list) and len(span) == 2 and all(_is_int(v) for v in span)):
            raise ValueError(
                f"{where}: {key!r} must be [start, end], two integers; got {span!r:.60}."
            )
        start, end = span
        if not 0 <= start < end <= len(text):
            raise ValueError(
                f"{where}: {key!r} = [{start}, {end}] is not a span of the text "
                f"({len(text)} characters); spans are character offsets [start, end), end "
                "exclusive, with 0 <= start < end <= len(text)."
            )
        if entity_key in data:
            entity = data[entity_key]
            if not isinstance(entity, str):
                raise ValueError(
                    f"{where}: {entity_key!r} must be a string; got {type(entity).__name__}."
                )
            if text[start:end] != entity:
                raise ValueError(
                    f"{where}: {key!r} = [{start}, {end}] selects {text[start:end]!r:.60} but "
                    f"{entity_key!r} is {entity!r:.60}; spans are character offsets "
                    "[start, end), end exclusive."
                )
        out += [start, end]
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Features


class TfidfFeatures(NamedTuple):
    """TF-IDF features of a :class:`WeakDataset`, fitted on its training texts.

    Fields:
        train, valid, test: ``[n_split, F]`` float32 dense, read-only arrays.
        vocabulary: the ``F`` column names: the n-grams of the texts, then, with entity
            features, the n-grams between the entities (prefixed :data:`BETWEEN_PREFIX`)
            and :data:`ENTITY_ORDER_FEATURE`. Column ``f`` is ``vocabulary[f]``.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocabulary: tuple[str, ...]

    def split(self, name: str) -> np.ndarray:
        """The feature matrix of the split called ``name``.

        Example:
            >>> tfidf_features(load_weak_dataset("youtube")).split("test").shape[0]
            250
        """
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}; got {name!r}.")
        return getattr(self, name)


_TFIDF_CACHE: collections.OrderedDict[tuple, TfidfFeatures] = collections.OrderedDict()
# Dense features are large (SMS at 10k columns: ~220 MB), so only a few are kept.
_TFIDF_CACHE_SIZE = 4


def clear_tfidf_cache() -> None:
    """Empties the in-process cache of :func:`tfidf_features`.

    Example:
        >>> clear_tfidf_cache()
    """
    _TFIDF_CACHE.clear()


def tfidf_features(
    dataset: WeakDataset,
    *,
    ngram_range: tuple[int, int] = (1, 2),
    max_features: int | None = 10000,
    min_df: int | float = 1,
    sublinear_tf: bool = False,
    lowercase: bool = True,
    entity_features: bool | None = None,
) -> TfidfFeatures:
    """TF-IDF features of every split, with the vocabulary and IDF fitted on ``train`` only.

    Uses scikit-learn's ``TfidfVectorizer`` (rows L2-normalised). Results are cached in
    process, keyed by the data set's content (:attr:`WeakDataset.fingerprint`) and the
    arguments, so a second call returns the same object without recomputing.

    For a data set with entity spans (:attr:`WeakDataset.has_entities`, relation
    classification) two blocks follow the text's columns, unless ``entity_features=False``:

    - the TF-IDF of the words between the two entities (from the end of the entity that
      starts first to the start of the other; empty when they overlap), with its own
      vocabulary and IDF, also fitted on the training split only, with the same arguments
      (so up to ``max_features`` more columns), each row L2-normalised on its own;
    - one column, 1.0 where entity 1 starts before entity 2 and 0.0 otherwise: the same
      words between the entities can mean another relation when the entities come in the
      other order, which a bag of words does not see.

    The text block is the same with or without them, and data sets without spans get only
    it, exactly as before the entity blocks existed.

    Args:
        dataset: a :class:`WeakDataset`.
        ngram_range: ``(min_n, max_n)`` word n-gram lengths.
        max_features: keep the most frequent ``max_features`` n-grams of the training texts;
            ``None`` keeps all.
        min_df: drop n-grams in fewer training texts than this (an int count or a fraction).
        sublinear_tf: use ``1 + log(tf)`` instead of raw term counts.
        lowercase: lowercase the texts before tokenising.
        entity_features: add the entity blocks: ``None`` (default) where the data set has
            entity spans, ``True`` always (an error without spans), ``False`` never.

    Returns:
        A :class:`TfidfFeatures` of float32 arrays.

    Raises:
        ValueError: for bad arguments, an empty training split, ``entity_features=True``
            without spans, or no word between the entities in any training row.

    Example:
        >>> feats = tfidf_features(load_weak_dataset("youtube"), max_features=500)
        >>> feats.train.shape, feats.valid.dtype
        ((1686, 500), dtype('float32'))
        >>> feats = tfidf_features(load_weak_dataset("semeval"), max_features=500)
        >>> feats.train.shape, feats.vocabulary[-1]
        ((1749, 1001), '[entity1 before entity2]')
    """
    if not isinstance(dataset, WeakDataset):
        raise ValueError(f"dataset must be a WeakDataset; got {type(dataset).__name__}.")
    ngram_range = tuple(ngram_range)
    if (
        len(ngram_range) != 2
        or not all(_is_int(n) for n in ngram_range)
        or not 1 <= ngram_range[0] <= ngram_range[1]
    ):
        raise ValueError(
            f"ngram_range must be (min_n, max_n) with 1 <= min_n <= max_n; got {ngram_range!r}."
        )
    if max_features is not None and (not _is_int(max_features) or max_features < 1):
        raise ValueError(f"max_features must be a positive integer or None; got {max_features!r}.")
    if entity_features is not None and not isinstance(entity_features, bool):
        raise ValueError(f"entity_features must be None, True or False; got {entity_features!r}.")
    if entity_features and not dataset.has_entities:
        raise ValueError(
            f"entity_features=True, but the data set {dataset.name!r} has no entity spans "
            "(WeakSplit.entities is None); use entity_features=None or False."
        )
    with_entities = dataset.has_entities if entity_features is None else entity_features
    key = (
        dataset.fingerprint,
        ngram_range,
        max_features,
        min_df,
        bool(sublinear_tf),
        lowercase,
        with_entities,
    )
    if key in _TFIDF_CACHE:
        _TFIDF_CACHE.move_to_end(key)
        return _TFIDF_CACHE[key]
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError:
        raise ImportError(
            "tfidf_features needs scikit-learn: pip install amal_jax[bench]"
        ) from None
    if len(dataset.train) == 0:
        raise ValueError("tfidf_features: the training split is empty; nothing to fit on.")

    def vectorizer():
        return TfidfVectorizer(
            ngram_range=ngram_range,
            max_features=max_features,
            min_df=min_df,
            sublinear_tf=sublinear_tf,
            lowercase=lowercase,
            dtype=np.float32,
        )

    text_vectorizer = vectorizer().fit(dataset.train.texts)
    blocks = {
        split: [
            np.asarray(text_vectorizer.transform(dataset.split(split).texts).toarray(), np.float32)
        ]
        for split in SPLITS
    }
    vocabulary = text_vectorizer.get_feature_names_out().tolist()
    if with_entities:
        between = {split: _between_texts(dataset.split(split)) for split in SPLITS}
        try:
            between_vectorizer = vectorizer().fit(between["train"])
        except ValueError as e:
            # scikit-learn's "empty vocabulary" (or min_df pruning everything).
            raise ValueError(
                f"tfidf_features: no n-gram between the two entities survives in the training "
                f"rows of {dataset.name!r} ({e}); pass entity_features=False."
            ) from None
        for split in SPLITS:
            entities = dataset.split(split).entities
            blocks[split].append(
                np.asarray(between_vectorizer.transform(between[split]).toarray(), np.float32)
            )
            blocks[split].append((entities[:, 0] < entities[:, 2]).astype(np.float32)[:, None])
        vocabulary += [BETWEEN_PREFIX + v for v in between_vectorizer.get_feature_names_out()]
        vocabulary.append(ENTITY_ORDER_FEATURE)
    arrays = {
        # One block stays the vectorizer's own array, so the features of data sets without
        # spans are exactly what they were before the entity blocks existed.
        split: _frozen(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
        for split, parts in blocks.items()
    }
    features = TfidfFeatures(vocabulary=tuple(vocabulary), **arrays)
    _TFIDF_CACHE[key] = features
    while len(_TFIDF_CACHE) > _TFIDF_CACHE_SIZE:
        _TFIDF_CACHE.popitem(last=False)
    return features


def _between_texts(split: WeakSplit) -> list[str]:
    """The text between the two entities of each row (empty where the spans overlap)."""
    out = []
    for text, (start1, end1, start2, end2) in zip(
        split.texts, split.entities.tolist(), strict=True
    ):
        # From the end of the entity that starts first to the start of the other.
        lo, hi = (end1, start2) if start1 <= start2 else (end2, start1)
        out.append(text[lo:hi] if lo < hi else "")
    return out
