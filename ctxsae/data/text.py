"""Text sources: where the text comes from, before tokenisation.

Each source is a small :class:`TextSource` that Hydra builds from ``_target_`` (plain constructor
arguments only) with two methods:

- ``documents()`` yields :class:`Document` s in a fixed, deterministic order;
- ``fingerprint()`` returns a JSON-able dict of everything that determines that text (class,
  arguments, size and mtime of the local files read). The activation cache is keyed on it.

Sources: :class:`FortunesSource` (the Debian fortunes packages in five languages; available
offline, and its files are topic- and language-homogeneous regions, i.e. long documents with a
clear context), :class:`HFSource` (anything ``datasets.load_dataset`` reads) and
:class:`LocalSource` (local txt/json/parquet files through HFSource). :func:`language_switch_windows`
builds the two-language texts of the language-switch probe.

Errors are ``UserError`` s with a one-line message naming the fix: :class:`TextNotFound` (also a
FileNotFoundError) when the text is missing or unreachable, :class:`BadTextSource` (also a
ValueError) when the source is misconfigured.
"""

from __future__ import annotations

import abc
import glob
import hashlib
import random
import re
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import NamedTuple

from ctxsae.errors import UserError


class TextNotFound(UserError, FileNotFoundError):
    """The text is missing or unreachable (package not installed, wrong path, offline hub)."""


class BadTextSource(UserError, ValueError):
    """The text source is misconfigured, or yields too little text."""


class Block(NamedTuple):
    """A labelled stretch of a document's text: ``text[start:end]`` is one block of one kind."""

    start: int  # character offsets into Document.text
    end: int
    kind: str  # e.g. "heading", "prose", "code" (ctxsae.data.debian_reference.BLOCK_KINDS), or a user's label
    language: str


class Document(NamedTuple):
    text: str
    source: str  # where it came from, e.g. "de/anekdoten" (language/file) or a dataset id
    language: str  # ISO 639-1 code, or "unknown"
    blocks: tuple[Block, ...] = ()  # in text order, not overlapping; empty: the source has no region labels


class TextSource(abc.ABC):
    """Text to be tokenised and run through an LM (the DataModule sends every TextSource through one)."""

    @abc.abstractmethod
    def documents(self) -> Iterator[Document]:
        """The documents, in a fixed, deterministic order."""

    @abc.abstractmethod
    def fingerprint(self) -> dict:
        """JSON-able description of everything that determines the text (keys the activation cache)."""


def file_stat(path: Path) -> str:
    st = path.stat()
    return f"{path}\t{st.st_size}\t{st.st_mtime_ns}"


# ----------------------------------------------------------------------------------------------
# Debian fortunes

FORTUNES_ROOT = "/usr/share/games/fortunes"
FORTUNES_LANGUAGES = ("en", "de", "es", "ru", "zh")
# The Chinese files sit next to the English ones at the top level; de/es/ru have their own folders.
_ZH_FILES = ("chinese", "song100", "tang300")
_PACKAGES = {"en": "fortunes", "de": "fortunes-de", "es": "fortunes-es", "ru": "fortunes-ru", "zh": "fortunes-zh"}
_FORTUNES_FORMAT = 1  # bump when parsing or cleaning changes: it changes the text, hence the cache key

SEPARATOR = "\n%\n"  # how entries are joined in unit="file" documents (the files' own format)
_SEPARATOR_LINE = re.compile(r"^%[ \t]*$", re.MULTILINE)  # a few files have "% " separators
_ANSI = re.compile(r"\x1b(\[[0-9;]*[A-Za-z]?)?")  # colour codes (zh files), also broken ones like "\x1b[;"
_OVERSTRIKE = re.compile(r"[^\n\x08]\x08")  # "_\bx": typewriter underlining in old English files


def _clean(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n")
    text = _ANSI.sub("", text)
    while "\x08" in text:  # "____\b\b\b\b" needs one pass per backspace of a run
        text, n = _OVERSTRIKE.subn("", text)
        if not n:
            break
    return text


def read_fortune_entries(path: Path) -> list[str]:
    """The non-empty entries of one fortune file, cleaned, without their ``%`` separator lines."""
    entries = (e.strip("\n") for e in _SEPARATOR_LINE.split(_clean(path.read_bytes())))
    return [e for e in entries if e.strip()]


def _cap(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars``, at the last entry boundary if there is one."""
    if not max_chars or len(text) <= max_chars:
        return text
    cut = text.rfind(SEPARATOR, 0, max_chars + len(SEPARATOR))
    return text[:cut] if cut > 0 else text[:max_chars]


class FortunesSource(TextSource):
    """The Debian ``fortunes`` packages: en (top level), de/, es/, ru/, zh (chinese, tang300, song100).

    Offensive subfolders (``off/``), ``.dat`` indexes and ``.u8`` symlinks are skipped. Text is
    decoded as UTF-8 (errors replaced) with ANSI colour codes and backspace overstrikes removed.
    Order: by language (sorted), then file name.

    unit="file": one document per file, its entries joined by ``%`` lines (``SEPARATOR``), so a
    document is a long topic- and language-homogeneous region. unit="entry": one per fortune.
    max_chars_per_doc > 0 cuts each document at the last entry boundary before that many chars
    (use it so that a window budget covers many files rather than the first few big ones).
    """

    def __init__(
        self,
        root: str = FORTUNES_ROOT,
        languages: Sequence[str] = FORTUNES_LANGUAGES,
        unit: str = "file",
        max_chars_per_doc: int = 0,
    ):
        languages = [languages] if isinstance(languages, str) else list(languages)
        unknown = sorted(set(languages) - set(FORTUNES_LANGUAGES))
        if unknown:
            raise BadTextSource(f"unknown fortunes language(s) {unknown}: valid ones are {list(FORTUNES_LANGUAGES)}")
        if unit not in ("file", "entry"):
            raise BadTextSource(f"unit must be 'file' or 'entry', got {unit!r}")
        self.root, self.languages, self.unit = str(root), sorted(set(languages)), unit
        self.max_chars_per_doc = int(max_chars_per_doc)

    def files(self) -> list[tuple[str, Path]]:
        """(language, path) of every file read, in document order."""
        root = Path(self.root)
        if not root.is_dir():
            raise TextNotFound(
                f"fortunes not found at {root}: install them with `apt-get install "
                f"{' '.join(_PACKAGES[lang] for lang in FORTUNES_LANGUAGES)}` (or choose data=hf / data=local)"
            )
        out = []
        for lang in self.languages:
            folder = root if lang in ("en", "zh") else root / lang
            names = sorted(
                p.name for p in (folder.iterdir() if folder.is_dir() else ())
                if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
            )
            names = [n for n in names if (n in _ZH_FILES) == (lang == "zh")]
            if not names:
                raise TextNotFound(
                    f"no '{lang}' fortunes under {folder}: install them with `apt-get install {_PACKAGES[lang]}` "
                    f"(or drop '{lang}' from data.source.languages, or choose data=hf / data=local)"
                )
            out += [(lang, folder / n) for n in names]
        return out

    def documents(self) -> Iterator[Document]:
        for lang, path in self.files():
            entries = read_fortune_entries(path)
            texts = [SEPARATOR.join(entries)] if self.unit == "file" else entries
            for text in texts:
                yield Document(_cap(text, self.max_chars_per_doc), f"{lang}/{path.name}", lang)

    def fingerprint(self) -> dict:
        stats = "\n".join(file_stat(path) for _, path in self.files())
        return {
            "class": f"{__name__}.{type(self).__name__}",
            "format": _FORTUNES_FORMAT,
            "root": self.root,
            "languages": self.languages,
            "unit": self.unit,
            "max_chars_per_doc": self.max_chars_per_doc,
            "files_stat_sha256": hashlib.sha256(stats.encode()).hexdigest(),  # paths, sizes, mtimes
        }


# ----------------------------------------------------------------------------------------------
# Hugging Face datasets, hub or local files

_BUILDERS = ("text", "json", "parquet", "csv")  # datasets' packaged loaders for local files


class HFSource(TextSource):
    """Rows of ``datasets.load_dataset(path, name, split=..., data_files=...)``, one document per row.

    ``path`` is a hub dataset id, a local dataset folder, or a packaged builder ("text", "json",
    "parquet", ...) reading ``data_files``. For the "text" builder ``sample_by`` says what a row is
    ("line", "paragraph" or "document" = whole file). ``max_documents`` > 0 stops after that many
    rows. ``cache_dir`` only says where datasets keeps its arrow cache; it does not change the text.
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        split: str = "train",
        text_column: str = "text",
        streaming: bool = False,
        data_files: str | list[str] | None = None,
        revision: str | None = None,
        sample_by: str | None = None,
        max_documents: int = 0,
        language: str = "unknown",
        cache_dir: str | None = None,
    ):
        self.path, self.name, self.split, self.text_column = path, name, split, text_column
        self.streaming, self.revision, self.sample_by = streaming, revision, sample_by
        self.data_files = [data_files] if isinstance(data_files, str) else list(data_files or []) or None
        self.max_documents, self.language, self.cache_dir = int(max_documents), language, cache_dir

    @property
    def source(self) -> str:
        if self.path in _BUILDERS:
            return ",".join(Path(f).name for f in self.data_files or [])
        return self.path if self.name is None else f"{self.path}/{self.name}"

    def _load(self):
        import datasets  # slow to import: only when this source is used

        extra = {"sample_by": self.sample_by} if self.sample_by else {}
        try:
            return datasets.load_dataset(
                self.path, self.name, split=self.split, data_files=self.data_files, streaming=self.streaming,
                revision=self.revision, cache_dir=self.cache_dir, **extra,
            )
        except Exception as e:
            cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if self.path in _BUILDERS:
                msg = f"could not read {self.data_files} as {self.path}: check data.source.format ({cause})"
                raise BadTextSource(msg) from e
            raise TextNotFound(
                f"could not load dataset {self.path!r} from the Hugging Face hub (offline?): use data=local with "
                f"data.source.data_files=... or set HF_DATASETS_OFFLINE=1 with a cached copy ({cause})"
            ) from e

    def documents(self) -> Iterator[Document]:
        rows = self._load()
        for row in islice(rows, self.max_documents) if self.max_documents else rows:
            if self.text_column not in row:
                raise BadTextSource(
                    f"no column {self.text_column!r} in {self.source}: set data.source.text_column to one of {[*row]}"
                )
            yield Document(row[self.text_column], self.source, self.language)

    def fingerprint(self) -> dict:
        local = [Path(p) for f in self.data_files or [] for p in sorted(glob.glob(f))]
        return {
            "class": f"{__name__}.{type(self).__name__}",
            "path": self.path,
            "name": self.name,
            "split": self.split,
            "text_column": self.text_column,
            "data_files": [file_stat(p) for p in local] or self.data_files,  # local: with size and mtime
            "revision": self.revision,  # None: whatever the hub serves, which may change
            "sample_by": self.sample_by,
            "max_documents": self.max_documents,
        }


_EXTENSIONS = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def _infer_format(data_files: list[str]) -> str:
    suffixes = set()
    for f in data_files:
        p = Path(f)
        suffixes.add(Path(p.stem).suffix if p.suffix in _COMPRESSED else p.suffix)
    formats = {_EXTENSIONS.get(s) for s in suffixes}
    if len(formats) != 1 or None in formats:
        raise BadTextSource(
            f"cannot tell the format of {data_files} from extensions {sorted(suffixes)}: "
            f"set data.source.format to one of text/json/parquet"
        )
    return formats.pop()


class LocalSource(HFSource):
    """Local text files through HFSource with a packaged builder, inferred from the file extension.

    format: "auto" (.txt/.md -> text, .json/.jsonl -> json, .parquet -> parquet; .gz etc. allowed),
    or "text"/"json"/"parquet". Plain text files are one document per file unless ``sample_by``
    says "paragraph" (blank-line separated) or "line". Glob patterns are allowed in ``data_files``.
    """

    def __init__(
        self,
        data_files: str | list[str],
        format: str = "auto",
        text_column: str = "text",
        sample_by: str = "document",
        max_documents: int = 0,
        language: str = "unknown",
        cache_dir: str | None = None,
    ):
        files = [data_files] if isinstance(data_files, str) else list(data_files)
        missing = [f for f in files if not glob.glob(f)]
        if not files or missing:
            raise TextNotFound(f"local data file(s) not found: {missing or files}: fix data.source.data_files")
        if format not in ("auto", "text", "json", "parquet"):
            raise BadTextSource(f"format must be auto/text/json/parquet, got {format!r}")
        fmt = _infer_format(files) if format == "auto" else format
        super().__init__(
            fmt, text_column=text_column, data_files=files, sample_by=sample_by if fmt == "text" else None,
            max_documents=max_documents, language=language, cache_dir=cache_dir,
        )


# ----------------------------------------------------------------------------------------------
# Language-switch probe

class SwitchText(NamedTuple):
    text: str  # an entry in lang_a, then ``joiner``, then an entry in lang_b
    lang_a: str
    lang_b: str
    switch_char: int  # text[switch_char:] is the lang_b entry (the joiner belongs to the first part)


DEFAULT_SWITCH_PAIRS = ("en-de", "en-zh", "de-ru", "es-en", "ru-es", "zh-de")


def language_switch_windows(
    root: str = FORTUNES_ROOT,
    pairs: Sequence[str] = DEFAULT_SWITCH_PAIRS,
    n_per_pair: int = 32,
    seed: int = 0,
    joiner: str = "\n\n",
    min_chars: int = 40,
    max_chars: int = 400,
) -> list[SwitchText]:
    """Texts that switch language once at a known character: fortunes entry of lang_a + entry of lang_b.

    Entries are drawn (seeded; no entry twice within a pair) among those with
    ``min_chars <= len <= max_chars``, which skips one-liners and long blocks (ASCII art, poems).
    Returns texts, not token windows: the caller finds the switch token from the tokenizer's
    offsets (``return_offsets_mapping=True``), as it depends on the tokenizer.
    """
    pair_langs = [tuple(p.split("-")) for p in pairs]
    if any(len(p) != 2 or p[0] == p[1] for p in pair_langs):
        raise BadTextSource(f"pairs must look like 'en-de' with two different languages, got {list(pairs)}")
    langs = sorted({lang for p in pair_langs for lang in p})
    entries: dict[str, list[str]] = {lang: [] for lang in langs}
    for doc in FortunesSource(root, langs, unit="entry").documents():
        if min_chars <= len(doc.text) <= max_chars:
            entries[doc.language].append(doc.text)
    rng = random.Random(seed)
    out = []
    for a, b in pair_langs:
        if min(len(entries[a]), len(entries[b])) < n_per_pair:
            msg = f"too few {a}/{b} entries of {min_chars}-{max_chars} chars for {n_per_pair} pairs: lower n_per_pair"
            raise BadTextSource(msg)
        for first, second in zip(rng.sample(entries[a], n_per_pair), rng.sample(entries[b], n_per_pair)):
            out.append(SwitchText(first + joiner + second, a, b, len(first) + len(joiner)))
    return out


def segment_switch_texts(path: str) -> list[SwitchText]:
    """Switch texts from a user's JSONL of labelled segments: one switch per label change.

    Each line is a document: ``[{"text": ..., "label": ...}, ...]``, its segments' texts joined as
    they are (put any whitespace you want at the boundary into the texts). Where the label changes
    between two segments, the text of the run of segments before the change (back to the previous
    change) and of the run after it (up to the next) is one :class:`SwitchText`, ``lang_a`` and
    ``lang_b`` the two labels (any strings without "-", which joins them into the probe's pair
    names), ``switch_char`` the first character of the later run. Lines without a change give none.
    """
    import json

    file = Path(path)
    if not file.is_file():
        raise TextNotFound(f"no JSONL of labelled segments at {path}: fix the path (probe.segments)")
    out = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            segments = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadTextSource(f"{where} is not JSON ({e.msg}): each line must be [{{\"text\": ..., \"label\": ...}}, ...]") from e
        if not isinstance(segments, list) or not all(
            isinstance(s, dict) and isinstance(s.get("text"), str) and isinstance(s.get("label"), str) for s in segments
        ):
            raise BadTextSource(f"{where}: every segment needs a string \"text\" and a string \"label\": fix the segments")
        if any("-" in s["label"] for s in segments):
            raise BadTextSource(f"{where}: labels must not contain '-' (it joins the probe's pair names): rename the labels")
        runs: list[tuple[str, str]] = []  # (label, text) of each run of equally labelled segments
        for s in segments:
            if runs and runs[-1][0] == s["label"]:
                runs[-1] = (s["label"], runs[-1][1] + s["text"])
            else:
                runs.append((s["label"], s["text"]))
        out += [SwitchText(a + b, la, lb, len(a)) for (la, a), (lb, b) in zip(runs, runs[1:]) if a and b]
    if not out:
        raise BadTextSource(f"{path} has no label change between two segments: the probe needs documents whose label changes")
    return out
