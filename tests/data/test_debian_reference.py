import pytest

from tests.book import BOOK_BLOCKS, expected_blocks
from ctxsae.data.debian_reference import DebianReferenceSource, parallel_switch_texts, parse_chapter
from ctxsae.data.text import BadTextSource, TextNotFound
from ctxsae.errors import UserError


def test_chapter_blocks_keep_their_kind_and_reading_order(tiny_book):
    doc = parse_chapter(tiny_book / "ch01.de.html", "de")
    assert [(b.kind, doc.text[b.start : b.end]) for b in doc.blocks] == expected_blocks("de")
    assert all(b.language == "de" for b in doc.blocks)
    # Blocks are the whole text, separated by blank lines; navigation and contents are left out.
    assert doc.text == "\n\n".join(text for _, text in expected_blocks("de"))
    assert doc.source == "de/ch01" and doc.language == "de"


def test_source_yields_one_document_per_chapter_and_language(tiny_book):
    src = DebianReferenceSource(str(tiny_book), ["de", "en"])
    assert [d.source for d in src.documents()] == ["de/ch01", "de/ch02", "en/ch01", "en/ch02"]
    fp = src.fingerprint()
    (tiny_book / "ch02.en.html").write_text((tiny_book / "ch02.en.html").read_text() + " ")
    assert src.fingerprint() != fp  # a changed file changes the cache key


def test_bad_book_input_names_the_fix(tiny_book, tmp_path):
    with pytest.raises(BadTextSource, match="data.source.languages"):
        DebianReferenceSource(str(tiny_book), ["en", "xx"])
    with pytest.raises(TextNotFound, match="apt-get install debian-reference-zh-cn"):
        list(DebianReferenceSource(str(tiny_book), ["zh"]).documents())
    (tiny_book / "ch02.de.html").write_text("<html><p>unclosed</html>")
    with pytest.raises(BadTextSource, match="does not parse.*--reinstall debian-reference-de") as e:
        list(DebianReferenceSource(str(tiny_book), ["de"]).documents())
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


def test_parallel_switches_continue_the_same_chapter_in_the_other_language(tiny_book):
    texts = parallel_switch_texts(["en-de", "de-en"], n_per_pair=4, root=str(tiny_book), context_chars=40)
    assert [(t.lang_a, t.lang_b) for t in texts] == [("en", "de")] * 4 + [("de", "en")] * 4
    for t in texts:
        before, after = t.text[: t.switch_char - 2], t.text[t.switch_char :]
        assert t.text[t.switch_char - 2 : t.switch_char] == "\n\n"
        # Blocks ..i of a chapter in A, then blocks i+1.. of the same chapter in B: same place, other language.
        ends = [
            i for n in (0, 1) for i in range(len(BOOK_BLOCKS) - 1)
            if before.endswith(expected_blocks(t.lang_a, n)[i][1]) and after.startswith(expected_blocks(t.lang_b, n)[i + 1][1])
        ]
        assert len(ends) == 1, t
        assert {BOOK_BLOCKS[ends[0]][0], BOOK_BLOCKS[ends[0] + 1][0]} <= {"prose", "list_item", "note"}
    assert len({t.text for t in texts}) == len(texts)  # drawn without repetition
    with pytest.raises(BadTextSource, match="lower probe.n_windows"):
        parallel_switch_texts(["en-de"], n_per_pair=1000, root=str(tiny_book))
