import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported: no hub retries in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from ctxsae.data.text import (  # noqa: E402
    FORTUNES_ROOT,
    SEPARATOR,
    FortunesSource,
    HFSource,
    LocalSource,
    SwitchText,
    TextNotFound,
    language_switch_windows,
    segment_switch_texts,
)
from ctxsae.errors import UserError  # noqa: E402

# A fake fortunes install: the same layout as the Debian packages, with the same oddities.
FAKE = {
    "fortunes": "Fortune one.\n%\nFortune two,\non two lines.\n%\n",
    "cookie": "%\nA cookie.\n\t\t-- Author\n% \nAfter a '% ' separator.\n%\n\n%\nUse _\bI or *___\b\b\bnot* that.\n",
    "chinese": "\x1b[33m要有礼貌\x1b[m\n%\n\x1b[;\x1b[34;1m善意推定\x1b[m\n%\n",
    "tang300": "床前明月光\n%\n",
    "off/rude": "An offensive one.\n%\n",
    "de/witze": "Ein Witz.\n%\nNoch ein Witz.\n%\n",
    "de/zitate": "Ein Zitat.\r\n%\r\n",
    "es/vida.fortunes": "La vida.\n%\n",
    "es/off/camioneros.fortunes": "Ofensivo.\n%\n",
    "ru/2001.03": "Аппетит приходит.\n%\n",
}
ENTRIES = [  # (source, text) of every entry, in document order: language, then file name
    ("de/witze", "Ein Witz."), ("de/witze", "Noch ein Witz."), ("de/zitate", "Ein Zitat."),
    ("en/cookie", "A cookie.\n\t\t-- Author"), ("en/cookie", "After a '% ' separator."),
    ("en/cookie", "Use I or *not* that."),
    ("en/fortunes", "Fortune one."), ("en/fortunes", "Fortune two,\non two lines."),
    ("es/vida.fortunes", "La vida."), ("ru/2001.03", "Аппетит приходит."),
    ("zh/chinese", "要有礼貌"), ("zh/chinese", "善意推定"), ("zh/tang300", "床前明月光"),
]


@pytest.fixture
def fake_root(tmp_path):
    for rel, text in FAKE.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
        if "/" not in rel or rel.startswith("de/"):
            (path.parent / f"{path.name}.dat").write_bytes(b"\x00\x02\xff\xfe")  # strfile index: binary
            (path.parent / f"{path.name}.u8").symlink_to(path.name)
    return tmp_path


def test_entries_split_cleaned_and_ordered(fake_root):
    docs = list(FortunesSource(str(fake_root), unit="entry").documents())
    assert [(d.source, d.text) for d in docs] == ENTRIES
    assert all(d.source.startswith(d.language + "/") for d in docs)


def test_file_unit_keeps_separators_between_entries(fake_root):
    docs = list(FortunesSource(str(fake_root)).documents())
    by_file: dict[str, list[str]] = {}
    for source, text in ENTRIES:
        by_file.setdefault(source, []).append(text)
    assert [(d.source, d.text) for d in docs] == [(s, SEPARATOR.join(t)) for s, t in by_file.items()]
    assert "\n%\n" in docs[0].text


def test_languages_select_folders(fake_root):
    docs = list(FortunesSource(str(fake_root), languages=["zh", "ru"]).documents())
    assert [d.source for d in docs] == ["ru/2001.03", "zh/chinese", "zh/tang300"]


def test_max_chars_per_doc_cuts_at_an_entry_boundary(fake_root):
    full = next(d.text for d in FortunesSource(str(fake_root), ["en"]).documents() if d.source == "en/cookie")
    cut = next(d.text for d in FortunesSource(str(fake_root), ["en"], max_chars_per_doc=50).documents())
    assert cut == "A cookie.\n\t\t-- Author" + SEPARATOR + "After a '% ' separator."
    assert len(cut) <= 50 < len(full) and full.startswith(cut + SEPARATOR)
    entries = FortunesSource(str(fake_root), ["en"], unit="entry", max_chars_per_doc=5).documents()
    assert all(len(d.text) <= 5 for d in entries)


def test_errors_name_the_fix(fake_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes fortunes-de") as missing:
        list(FortunesSource(str(tmp_path / "nowhere")).documents())
    assert isinstance(missing.value, UserError)  # train.py prints these without a traceback
    for folder in (fake_root / "ru").iterdir():
        folder.unlink()
    with pytest.raises(FileNotFoundError, match="no 'ru' fortunes.*apt-get install fortunes-ru"):
        list(FortunesSource(str(fake_root)).documents())
    with pytest.raises(ValueError, match=r"\['xx'\].*valid ones are \['en', 'de', 'es', 'ru', 'zh'\]"):
        FortunesSource(str(fake_root), languages=["en", "xx"])


def test_fingerprint_tracks_arguments_and_files(fake_root):
    fp = FortunesSource(str(fake_root)).fingerprint()
    assert json.loads(json.dumps(fp)) == fp
    assert FortunesSource(str(fake_root)).fingerprint() == fp
    assert FortunesSource(str(fake_root), unit="entry").fingerprint() != fp
    (fake_root / "de" / "witze").write_text("Ein anderer Witz.\n%\n")
    assert FortunesSource(str(fake_root)).fingerprint() != fp


@pytest.mark.skipif(not Path(FORTUNES_ROOT).is_dir(), reason="Debian fortunes packages not installed")
def test_real_fortunes_install():
    docs = list(FortunesSource().documents())
    assert {d.language for d in docs} == {"en", "de", "es", "ru", "zh"}
    assert not any("\x1b" in d.text or "\x08" in d.text for d in docs)
    assert sum(SEPARATOR in d.text for d in docs) > 0.9 * len(docs)  # unit=file: entries joined by % lines
    assert not any("/off/" in d.source or d.source.endswith((".dat", ".u8")) for d in docs)
    assert {d.source for d in docs if d.language == "zh"} == {"zh/chinese", "zh/song100", "zh/tang300"}


# --- Hugging Face datasets on local files -------------------------------------------------------

def test_local_text_json_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("first paragraph\nstill first\n\nsecond paragraph\n")
    (tmp_path / "b.txt").write_text("whole file b\n")
    rows = [{"text": "row one", "id": 1}, {"text": "row two", "id": 2}, {"text": "row three", "id": 3}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    cache = str(tmp_path / "cache")

    files = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    texts = [d.text for d in LocalSource(files, cache_dir=cache).documents()]
    assert texts == ["first paragraph\nstill first\n\nsecond paragraph\n", "whole file b\n"]
    paragraphs = LocalSource(str(tmp_path / "a.txt"), sample_by="paragraph", cache_dir=cache).documents()
    assert [d.text.strip() for d in paragraphs] == ["first paragraph\nstill first", "second paragraph"]
    for name in ("d.jsonl", "d.parquet"):
        docs = list(LocalSource(str(tmp_path / name), language="en", cache_dir=cache).documents())
        assert [d.text for d in docs] == [r["text"] for r in rows]
        assert {(d.source, d.language) for d in docs} == {(name, "en")}
    capped = HFSource("json", data_files=str(tmp_path / "d.jsonl"), max_documents=2, cache_dir=cache).documents()
    assert [d.text for d in capped] == ["row one", "row two"]
    streamed = HFSource("parquet", data_files=str(tmp_path / "d.parquet"), streaming=True).documents()
    assert [d.text for d in streamed] == [r["text"] for r in rows]


def test_local_fingerprint_tracks_files(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n')
    fp = LocalSource(str(path)).fingerprint()
    assert json.loads(json.dumps(fp)) == fp and fp["path"] == "json"
    path.write_text('{"text": "ab"}\n')
    assert LocalSource(str(path)).fingerprint() != fp


def test_hf_errors_name_the_fix(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail at once, without network retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "d.jsonl").write_text('{"body": "x", "id": 1}\n')
    with pytest.raises(ValueError, match=r"no column 'text'.*\['body', 'id'\]"):
        list(LocalSource(str(tmp_path / "d.jsonl"), cache_dir=str(tmp_path / "cache")).documents())
    with pytest.raises(FileNotFoundError, match="not found.*data.source.data_files"):
        LocalSource(str(tmp_path / "missing.jsonl"))
    (tmp_path / "d.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match="data.source.format"):
        LocalSource(str(tmp_path / "d.csv"))
    with pytest.raises(TextNotFound, match="could not load dataset 'nobody/no-such-dataset'.*data=local"):
        list(HFSource("nobody/no-such-dataset", cache_dir=str(tmp_path / "cache")).documents())


# --- language switch ----------------------------------------------------------------------------

def test_language_switch_offsets(fake_root):
    pairs = ["en-de", "de-zh", "zh-en"]
    switches = language_switch_windows(str(fake_root), pairs, n_per_pair=2, seed=1, min_chars=1)
    entries = {lang: {t for s, t in ENTRIES if s.startswith(lang + "/")} for lang in ("en", "de", "zh")}
    assert [(s.lang_a, s.lang_b) for s in switches] == [tuple(p.split("-")) for p in pairs for _ in range(2)]
    for s in switches:
        assert s.text[s.switch_char:] in entries[s.lang_b]
        assert s.text[: s.switch_char].endswith("\n\n") and s.text[: s.switch_char - 2] in entries[s.lang_a]
    assert switches == language_switch_windows(str(fake_root), pairs, n_per_pair=2, seed=1, min_chars=1)
    with pytest.raises(ValueError, match="two different languages"):
        language_switch_windows(str(fake_root), ["en-en"])
    with pytest.raises(ValueError, match="too few en/de entries.*lower n_per_pair"):
        language_switch_windows(str(fake_root), ["en-de"], n_per_pair=4, min_chars=1)


def test_segment_switches_from_a_users_jsonl(tmp_path):
    lines = [
        [{"text": "Hello. ", "label": "en"}, {"text": "How are you? ", "label": "en"}, {"text": "Gut, danke. ", "label": "de"},
         {"text": "Y tú?", "label": "es"}],
        [{"text": "only one label", "label": "en"}],
    ]
    path = tmp_path / "segments.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    texts = segment_switch_texts(str(path))
    assert texts == [
        SwitchText("Hello. How are you? Gut, danke. ", "en", "de", len("Hello. How are you? ")),
        SwitchText("Gut, danke. Y tú?", "de", "es", len("Gut, danke. ")),
    ]
    for bad, fix in [
        ('[{"text": "a", "label": "en"}, {"label": "de"}]', 'needs a string "text" and a string "label"'),
        ('[{"text": "a", "label": "en"}, {"text": "b"}]', 'needs a string "text" and a string "label"'),
        ("[{not json", "is not JSON"),
        ('[{"text": "a", "label": "zh-cn"}]', "must not contain '-'"),
        ('[{"text": "a", "label": "en"}]', "no label change"),
    ]:
        path.write_text(bad + "\n")
        with pytest.raises(UserError, match=fix) as e:
            segment_switch_texts(str(path))
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="fix the path"):
        segment_switch_texts(str(tmp_path / "missing.jsonl"))
