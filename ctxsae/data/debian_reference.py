"""The Debian Reference: a ~93k-word technical book in parallel translations, as labelled documents.

Debian ships the book as XHTML chapters, one package per translation
(``apt-get install debian-reference-en debian-reference-de ...``), under
``/usr/share/debian-reference/`` as ``<chapter>.<suffix>.html`` (``pr01``, ``ch01`` .. ``ch12``,
``apa``; suffix = language, ``zh-cn`` for Chinese). Each chapter of each language is one
:class:`~ctxsae.data.text.Document`, its text the chapter's blocks joined by blank lines, each
block a :class:`~ctxsae.data.text.Block` that keeps its kind:

=============  ==============================================================================
heading        ``<h1>`` .. ``<h4>``, and the ``<p class="title">`` captions of tables
prose          ``<p>`` of running text (footnotes included)
list_item      ``<li>``, ``<dt>``, ``<dd>`` and the paragraphs inside them
note           everything inside a note, tip, caution, warning or important box (its title too)
table_cell     ``<td>``, ``<th>`` and what they contain
code           ``<pre>`` (``<pre class="screen">``: shell sessions, file listings), whitespace kept
=============  ==============================================================================

Precedence where they nest: code > note > heading > the enclosing cell or item > the element's own
kind; a block that contains other blocks (a list item with a nested list) is cut around them, so
blocks never overlap and stay in reading order. Navigation bars, tables of contents and the
``<head>`` are left out. Whitespace of non-code blocks is collapsed to single spaces.

The chapters are XHTML, so they are parsed with the standard library's XML parser (strict: a file
that is not well-formed is an error, never a silently truncated chapter). The translations are
made with po4a from the English source and keep its structure: in every chapter but the appendix
(``apa``, translator credits) all six languages have the same sequence of block kinds, block for
block, which is what :func:`parallel_switch_texts` relies on (it checks, chapter by chapter).
"""

from __future__ import annotations

import hashlib
import random
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from itertools import count
from pathlib import Path

from ctxsae.data.text import BadTextSource, Block, Document, SwitchText, TextNotFound, TextSource, file_stat

DEBIAN_REFERENCE_ROOT = "/usr/share/debian-reference"
DEBIAN_REFERENCE_LANGUAGES = ("en", "de", "fr", "es", "ja", "zh")
_SUFFIX = {"zh": "zh-cn"}  # file and package suffix where it is not the ISO 639-1 code
BLOCK_KINDS = ("heading", "prose", "list_item", "note", "table_cell", "code")
BLOCK_SEPARATOR = "\n\n"
_FORMAT = 1  # bump when parsing changes: it changes the text, hence the cache key

_XHTML = "{http://www.w3.org/1999/xhtml}"
_SKIPPED_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables"}
_NOTE_CLASSES = {"note", "tip", "caution", "warning", "important"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_OWN_KIND = {"p": "prose", "li": "list_item", "dt": "list_item", "dd": "list_item", "td": "table_cell", "th": "table_cell"}
_BLOCK_TAGS = {"pre", *_HEADINGS, *_OWN_KIND}


def _suffix(language: str) -> str:
    return _SUFFIX.get(language, language)


def _package(language: str) -> str:
    return f"debian-reference-{_suffix(language)}"


def _block_kind(tag: str, cls: str, inherited: str | None) -> str:
    if tag == "pre":
        return "code"
    if inherited == "note":
        return "note"
    if tag in _HEADINGS or (tag == "p" and cls == "title"):
        return "heading"
    return inherited or _OWN_KIND[tag]


def _text_runs(el: ET.Element, inherited: str | None, block_id: int | None, ids: count, out: list) -> None:
    """Append (block id, kind, text) runs of ``el``'s subtree to ``out`` in reading order.

    ``inherited``: the kind an enclosing block or note box imposes on blocks inside it.
    Text outside any block element (whitespace between divs) gets block id None.
    """
    tag, cls = el.tag.removeprefix(_XHTML), el.get("class") or ""
    kind = inherited
    if cls in _NOTE_CLASSES and inherited != "code":
        kind = inherited = "note"
    if tag in _BLOCK_TAGS:
        kind = inherited = _block_kind(tag, cls, inherited)
        block_id = next(ids)
    if el.text:
        out.append((block_id, kind, el.text))
    for child in el:
        if child.tag.removeprefix(_XHTML) != "head" and (child.get("class") or "") not in _SKIPPED_CLASSES:
            _text_runs(child, inherited, block_id, ids, out)
        if child.tail:  # the tail continues the parent's block, after the child's
            out.append((block_id, kind, child.tail))


def parse_chapter(path: Path, language: str) -> Document:
    """One XHTML chapter as a Document whose blocks label its text (see the module docstring)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise BadTextSource(
            f"{path} does not parse as XHTML ({e}): reinstall it with "
            f"`apt-get install --reinstall {_package(language)}`, or drop '{language}' from data.source.languages"
        ) from e
    runs: list[tuple[int | None, str | None, str]] = []
    _text_runs(root, None, None, count(), runs)
    # Consecutive runs of one block id are one block; a block cut by a nested block is two.
    merged: list[tuple[str, list[str]]] = []
    last_id = None
    for block_id, kind, text in runs:
        if block_id is None:
            last_id = None
            continue
        if block_id != last_id:
            merged.append((kind, []))
            last_id = block_id
        merged[-1][1].append(text)
    pieces, blocks, pos = [], [], 0
    for kind, texts in merged:
        raw = "".join(texts)
        text = raw.strip("\n").rstrip() if kind == "code" else " ".join(raw.split())
        if not text:
            continue
        if pieces:
            pieces.append(BLOCK_SEPARATOR)
            pos += len(BLOCK_SEPARATOR)
        blocks.append(Block(pos, pos + len(text), kind, language))
        pieces.append(text)
        pos += len(text)
    return Document("".join(pieces), f"{language}/{path.name.split('.')[0]}", language, tuple(blocks))


class DebianReferenceSource(TextSource):
    """The Debian Reference's chapters, one labelled Document per chapter and language.

    ``languages``: ISO 639-1 codes among ``DEBIAN_REFERENCE_LANGUAGES`` (zh is Debian's zh-cn).
    Order: by language as given (duplicates dropped), then chapter file name (apa, ch01..ch12, pr01).
    """

    def __init__(self, root: str = DEBIAN_REFERENCE_ROOT, languages: Sequence[str] = DEBIAN_REFERENCE_LANGUAGES):
        languages = [languages] if isinstance(languages, str) else list(languages)
        unknown = [lang for lang in languages if lang not in DEBIAN_REFERENCE_LANGUAGES]
        if unknown or not languages:
            raise BadTextSource(
                f"unknown Debian Reference language(s) {unknown}: set data.source.languages to some of "
                f"{list(DEBIAN_REFERENCE_LANGUAGES)}"
            )
        self.root, self.languages = str(root), list(dict.fromkeys(languages))

    def chapters(self, language: str) -> list[Path]:
        """The chapter files of one language, sorted by name (the index and redirect pages left out)."""
        paths = sorted(p for p in Path(self.root).glob(f"*.{_suffix(language)}.html") if not p.name.startswith("index."))
        if not paths:
            raise TextNotFound(
                f"no '{language}' Debian Reference under {self.root}: install it with `apt-get install "
                f"{_package(language)}` (scripts/setup.sh does), or drop '{language}' from data.source.languages"
            )
        return paths

    def files(self) -> list[tuple[str, Path]]:
        return [(lang, path) for lang in self.languages for path in self.chapters(lang)]

    def documents(self) -> Iterator[Document]:
        for lang, path in self.files():
            yield parse_chapter(path, lang)

    def fingerprint(self) -> dict:
        stats = "\n".join(file_stat(path) for _, path in self.files())
        return {
            "class": f"{__name__}.{type(self).__name__}",
            "format": _FORMAT,
            "root": self.root,
            "languages": self.languages,
            "files_stat_sha256": hashlib.sha256(stats.encode()).hexdigest(),  # paths, sizes, mtimes
        }


# ----------------------------------------------------------------------------------------------
# Parallel switches

SWITCH_KINDS = ("prose", "list_item", "note")  # blocks of running text: code and cells say little of a language


def _span(doc: Document, first: int, last: int) -> str:
    return doc.text[doc.blocks[first].start : doc.blocks[last].end]


def parallel_switch_texts(
    pairs: Sequence[str],
    n_per_pair: int = 32,
    seed: int = 0,
    root: str = DEBIAN_REFERENCE_ROOT,
    joiner: str = BLOCK_SEPARATOR,
    context_chars: int = 600,
    kinds: Sequence[str] = SWITCH_KINDS,
) -> list[SwitchText]:
    """Texts that continue the same chapter in another language at a block boundary.

    For a pair "a-b": blocks ..i of a chapter in language a, ``joiner``, then blocks i+1.. of the
    same chapter in language b, so the content runs on and only the language changes, at
    ``switch_char`` exactly (the first character of block i+1). Only chapters whose two
    translations have the same sequence of block kinds are used; block i of a and block i+1 of b
    must be of ``kinds`` and block i+1 must differ between a and b (untranslated blocks are
    skipped). Each side holds whole blocks, as many as fit in ``context_chars`` (at least one).
    Boundaries are drawn seeded, without repetition within a pair.
    """
    pair_langs = [tuple(p.split("-")) for p in pairs]
    if any(len(p) != 2 or p[0] == p[1] for p in pair_langs):
        raise BadTextSource(f"probe pairs must look like 'en-de' with two different languages, got {list(pairs)}")
    langs = list(dict.fromkeys(lang for p in pair_langs for lang in p))
    source = DebianReferenceSource(root, langs)
    chapters = {lang: {d.source.split("/", 1)[1]: d for d in (parse_chapter(p, lang) for p in source.chapters(lang))} for lang in langs}
    rng = random.Random(seed)
    out = []
    for a, b in pair_langs:
        candidates = []
        for name in sorted(chapters[a].keys() & chapters[b].keys()):
            da, db = chapters[a][name], chapters[b][name]
            if [blk.kind for blk in da.blocks] != [blk.kind for blk in db.blocks]:
                continue  # not block-parallel (the appendix): no exact alignment
            for i in range(len(da.blocks) - 1):
                nxt_a, nxt_b = _span(da, i + 1, i + 1), _span(db, i + 1, i + 1)
                if da.blocks[i].kind in kinds and db.blocks[i + 1].kind in kinds and nxt_a != nxt_b:
                    candidates.append((da, db, i))
        if len(candidates) < n_per_pair:
            raise BadTextSource(f"only {len(candidates)} parallel {a}-{b} block boundaries for {n_per_pair} switches: lower probe.n_windows")
        for da, db, i in rng.sample(candidates, n_per_pair):
            first = i
            while first > 0 and da.blocks[i].end - da.blocks[first - 1].start <= context_chars:
                first -= 1
            last = i + 1
            while last + 1 < len(db.blocks) and db.blocks[last + 1].end - db.blocks[i + 1].start <= context_chars:
                last += 1
            before = _span(da, first, i)
            out.append(SwitchText(before + joiner + _span(db, i + 1, last), a, b, len(before) + len(joiner)))
    return out
