import itertools

import pytest
import torch

from ctxsae.data.text import Block, Document
from ctxsae.data.windows import loss_mask, make_windows, token_texts
from ctxsae.errors import UserError
from ctxsae.extract.tiny import BOS_ID, byte_tokenizer

# Uneven lengths, multi-byte UTF-8, an empty document (skipped) and one longer than a window.
DOCS = ["Hello there.", "Grüße aus Köln!", "", "中文文本", "x" * 40, "%\nlast one\n"]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def expected_stream(docs, sep=None):
    """The concatenated token stream and, per token, its document's index and whether it starts it."""
    tokens, doc_index, starts = [], [], []
    for i, text in enumerate(docs):
        ids = ([sep] if sep is not None and text else []) + list(text.encode())
        tokens += ids
        doc_index += [i] * len(ids)
        starts += [True] + [False] * (len(ids) - 1) if ids else []
    return torch.tensor(tokens), torch.tensor(doc_index), torch.tensor(starts)


@pytest.mark.parametrize("sep", [None, BOS_ID])
def test_windows_are_the_stream_cut_in_order(tok, sep):
    n_ctx = 16
    w = make_windows(DOCS, tok, n_ctx, doc_separator_id=sep)
    tokens, doc_index, starts = expected_stream(DOCS, sep)
    n = len(tokens) // n_ctx
    assert w.tokens_NT.shape == w.doc_start_NT.shape == w.doc_index_NT.shape == (n, n_ctx)
    assert w.tokens_NT.dtype == torch.int64 and w.doc_start_NT.dtype == torch.bool
    assert w.doc_index_NT.dtype == torch.int32
    assert torch.equal(w.tokens_NT.flatten(), tokens[: n * n_ctx])  # ragged tail dropped, order kept
    assert torch.equal(w.doc_index_NT.flatten().long(), doc_index[: n * n_ctx])
    window_starts = torch.arange(n * n_ctx) % n_ctx == 0
    assert torch.equal(w.doc_start_NT.flatten(), starts[: n * n_ctx] | window_starts)
    assert 2 not in w.doc_index_NT  # the empty document contributes nothing


def test_doc_starts_are_exactly_the_boundaries(tok):
    docs = ["ab", "cde", "f", "ghij"]  # 10 bytes; separators make 14 tokens = 2 windows of 7
    w = make_windows(docs, tok, 7, doc_separator_id=BOS_ID)
    assert w.tokens_NT.tolist() == [[256, 97, 98, 256, 99, 100, 101], [256, 102, 256, 103, 104, 105, 106]]
    assert w.doc_start_NT.tolist() == [[1, 0, 0, 1, 0, 0, 0], [1, 0, 1, 0, 0, 0, 0]]
    w = make_windows(docs, tok, 3)  # without separators a start can fall mid-window or on t = 0
    assert w.tokens_NT.flatten().tolist() == list(b"abcdefghi")
    assert w.doc_start_NT.tolist() == [[1, 0, 1], [1, 0, 1], [1, 0, 0]]
    assert w.doc_index_NT.tolist() == [[0, 0, 1], [1, 1, 2], [3, 3, 3]]


def test_first_windows_stops_reading_early(tok):
    read = []

    def endless():
        for i in itertools.count():
            read.append(i)
            yield Document(f"document number {i}. ", "gen", "en")

    w = make_windows(endless(), tok, 32, first_windows=5)
    assert w.tokens_NT.shape == (5, 32)
    assert len(read) < 100  # stopped pulling documents soon after 5 * 32 tokens
    full = make_windows([d.text for d in itertools.islice(endless(), 50)], tok, 32)
    assert torch.equal(w.tokens_NT, full.tokens_NT[:5])  # a prefix of the uncapped windows


def test_too_little_text_names_the_fix(tok):
    with pytest.raises(ValueError, match=r"yielded 11 tokens, fewer than one window of n_ctx=128: .*data.n_ctx") as e:
        make_windows(["hello", "world!"], tok, 128)
    assert isinstance(e.value, UserError)
    with pytest.raises(ValueError, match="yielded no documents"):
        make_windows([], tok, 8)
    with pytest.raises(ValueError, match="yielded 0 tokens"):
        make_windows(["", ""], tok, 8)


def test_loss_mask_drops_window_starts_only():
    doc_start = torch.zeros(3, 8, dtype=torch.bool)
    doc_start[:, 0] = doc_start[1, 5] = True
    assert loss_mask(doc_start).tolist() == [[False] + [True] * 7] * 3
    assert loss_mask(doc_start, exclude_first=3).sum(1).tolist() == [5, 5, 5]
    assert loss_mask(doc_start, exclude_first=0).all()


def test_tokenizers_without_rust_backend_give_the_same_windows(tok):
    class Slow:  # the __call__ interface of a Python-only Hugging Face tokenizer
        def __call__(self, texts, add_special_tokens, verbose):
            assert not add_special_tokens
            return {"input_ids": [list(t.encode()) for t in texts]}

    fast = make_windows(DOCS, tok, 8, doc_separator_id=BOS_ID)
    slow = make_windows(DOCS, Slow(), 8, doc_separator_id=BOS_ID)
    assert all(torch.equal(a, b) for a, b in zip(fast[:3], slow[:3])) and fast.labels is slow.labels is None


def test_token_texts_show_a_split_character_at_the_token_that_completes_it():
    tok = byte_tokenizer()
    ids = list("a你b".encode())  # 你 is three byte tokens
    assert token_texts(tok, ids) == ["a", "", "", "你", "b"]
    assert "".join(token_texts(tok, list("Съешь ещё <b>".encode()))) == "Съешь ещё <b>"


def test_region_labels_follow_each_blocks_characters(tok):
    # "Grüße" (multi-byte) then a blank line, then "x = 1" (code), then "中文": three blocks, two languages.
    text = "Grüße\n\nx = 1\n\n中文"
    blocks = (Block(0, 5, "prose", "de"), Block(7, 12, "code", "de"), Block(14, 16, "prose", "zh"))
    docs = [Document("plain", "p", "en"), Document(text, "t", "de", blocks)]
    w = make_windows(docs, tok, 4, doc_separator_id=BOS_ID)
    labels = w.labels
    assert labels.languages == ("de", "zh") and labels.kinds == ("prose", "code")
    # Per byte token of the labelled document: the block holding its character; the blank lines end the block before.
    per_char = [0] * 7 + [1] * 7 + [2] * 2
    expected_block = [-1] + [b for ch, b in zip(text, per_char) for _ in ch.encode()]  # BOS first
    kind_of, lang_of = {-1: -1, 0: 0, 1: 1, 2: 0}, {-1: -1, 0: 0, 1: 0, 2: 1}
    n_plain = 1 + len("plain")  # the unlabelled document: -1 throughout
    flat = lambda t: t.flatten().tolist()  # noqa: E731
    total = len(flat(w.tokens_NT))
    assert flat(labels.block_NT) == ([-1] * n_plain + expected_block)[:total]
    assert flat(labels.kind_NT) == ([-1] * n_plain + [kind_of[b] for b in expected_block])[:total]
    assert flat(labels.language_NT) == ([-1] * n_plain + [lang_of[b] for b in expected_block])[:total]
    assert labels.kind_NT.dtype == torch.int16 and labels.block_NT.dtype == torch.int32
    # Selecting windows selects their labels.
    picked = w.select(torch.tensor([2, 0]))
    assert torch.equal(picked.labels.block_NT, labels.block_NT[[2, 0]]) and torch.equal(picked.tokens_NT, w.tokens_NT[[2, 0]])


def test_unlabelled_text_has_no_labels(tok):
    assert make_windows(DOCS, tok, 8).labels is None
