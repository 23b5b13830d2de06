"""Tokens -> fixed windows: documents are tokenised, concatenated into one stream and cut.

    doc 0            doc 1      doc 2
    [bos a b c d e f][bos g h][bos i j k l m ...]      one stream, in document order
    |---- window 0 ----|---- window 1 ----|--- ...     consecutive, non-overlapping n_ctx slices

Windows keep the stream order exactly. A window may span several documents: ``doc_start_NT`` marks
where each one begins, and every window start (where the LM's context begins); a contextual SAE
resets its context there. The ragged tail of the stream is dropped.

**Region labels.** Documents that carry :class:`~ctxsae.data.text.Block` s (the Debian Reference)
give every token the language, kind and index of the block it belongs to (:class:`TokenLabels`).
A token belongs to the block that holds its *last* character: the whole document is tokenised
at once (the stream the LM sees is the same as without labels) and the tokenizer's character
offsets are matched to the blocks' starts. So the first token of a block is the first token
holding one of its characters (as the language-switch probe defines its switch position), and
the tokens of the blank line between two blocks end the earlier block. Tokenising block by block
would make the boundaries trivially exact too, but would change the token stream at every
boundary (BPE merges across them), so the labelled stream would not be the text's own.
The BOS separator before a document belongs to no block (-1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ctxsae.data.text import BadTextSource, Block, Document

_BATCH_CHARS = 1 << 20  # tokenise ~1M characters per call: batched calls are much faster than one per doc


class TokenLabels(NamedTuple):
    """Per-token region labels (see the module docstring); -1 where no block covers a token."""

    language_NT: Tensor  # int16: index into ``languages``
    kind_NT: Tensor  # int16: index into ``kinds``
    block_NT: Tensor  # int32: index of the block within its document
    languages: tuple[str, ...]  # names of the codes, in order of first appearance in the text
    kinds: tuple[str, ...]

    def select(self, index) -> TokenLabels:
        """The labels of the windows (first axis) picked by ``index``."""
        return self._replace(language_NT=self.language_NT[index], kind_NT=self.kind_NT[index], block_NT=self.block_NT[index])

    def to(self, device) -> TokenLabels:
        return self._replace(**{k: getattr(self, k).to(device) for k in ("language_NT", "kind_NT", "block_NT")})


class TokenWindows(NamedTuple):
    tokens_NT: Tensor  # int64 (LongTensor) token ids, ready for the LM; stream order within and across windows
    doc_start_NT: Tensor  # bool: a document starts here, or a window does (always True at t = 0)
    doc_index_NT: Tensor  # int32: index, in the input iterable, of the document each token came from
    labels: TokenLabels | None = None  # when the documents carry blocks

    def select(self, index) -> TokenWindows:
        """The windows picked by ``index`` (first axis), labels included."""
        tensors = (self.tokens_NT[index], self.doc_start_NT[index], self.doc_index_NT[index])
        return TokenWindows(*tensors, None if self.labels is None else self.labels.select(index))


def _encode(tokenizer, texts: list[str], offsets: bool = False) -> tuple[list[list[int]], list | None]:
    """Token ids of each text, and with ``offsets`` each token's (start, end) characters in its text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust `tokenizers.Tokenizer` of a fast HF tokenizer
    if backend is not None and not offsets:  # same ids as tokenizer(texts), ~2-3x faster: no offsets, no BatchEncoding
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)], None
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings], [e.offsets for e in encodings]
    if not offsets:
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"], None
    enc = tokenizer(texts, add_special_tokens=False, verbose=False, return_offsets_mapping=True)  # fast tokenizers only
    return enc["input_ids"], enc["offset_mapping"]


def _block_of_tokens(offsets: list[tuple[int, int]], blocks: Sequence[Block]) -> np.ndarray:
    """Index of the block holding each token's last character; -1 before the first block."""
    ends = np.array([end for _, end in offsets], dtype=np.int64)
    starts = np.array([b.start for b in blocks], dtype=np.int64)
    return np.searchsorted(starts, ends - 1, side="right") - 1


def _batches(docs: Iterator[tuple[int, Document]], max_chars: int) -> Iterator[list[tuple[int, Document]]]:
    batch, chars = [], 0
    for item in docs:
        batch.append(item)
        chars += len(item[1].text)
        if chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def make_windows(
    documents: Iterable[str | Document],
    tokenizer,
    n_ctx: int,
    first_windows: int = 0,
    doc_separator_id: int | None = None,
) -> TokenWindows:
    """Cut the concatenated token stream of ``documents`` into ``[N, n_ctx]`` windows.

    Each document is tokenised without special tokens (``tokenizer(texts, add_special_tokens=False)``,
    any Hugging Face tokenizer) and, if ``doc_separator_id`` is given (e.g. the BOS id), that token is
    put in front of it. Documents that tokenise to nothing are skipped. ``first_windows`` > 0 stops
    after that many windows (and stops tokenising once enough tokens are in). Documents with
    blocks get :class:`TokenLabels` (a fast tokenizer's offsets are needed); ``labels`` is None
    when none has blocks.
    """
    if n_ctx < 1:
        raise BadTextSource(f"n_ctx must be >= 1, got {n_ctx}")
    prefix = [] if doc_separator_id is None else [doc_separator_id]
    docs = ((i, Document(d, "", "unknown") if isinstance(d, str) else d) for i, d in enumerate(documents))
    pieces, label_pieces, doc_ids, n_docs, n_tokens = [], [], [], 0, 0
    languages: dict[str, int] = {}
    kinds: dict[str, int] = {}
    needed = first_windows * n_ctx if first_windows > 0 else None
    # Small first batches when few tokens are needed; the chars-per-token ratio is >= 1 for most text.
    for batch in _batches(docs, min(_BATCH_CHARS, needed or _BATCH_CHARS)):
        n_docs += len(batch)
        labelled = any(d.blocks for _, d in batch)
        ids, offsets = _encode(tokenizer, [d.text for _, d in batch], offsets=labelled)
        for n, ((i, doc), doc_tokens) in enumerate(zip(batch, ids)):
            if not doc_tokens:
                continue
            pieces.append(np.asarray(prefix + doc_tokens, dtype=np.int64))
            doc_ids.append(i)
            n_tokens += len(pieces[-1])
            if not doc.blocks:  # only its length: unlabelled corpora allocate no labels
                label_pieces.append(len(pieces[-1]))
                continue
            labels = np.full((3, len(pieces[-1])), -1, dtype=np.int32)  # language, kind, block
            block = _block_of_tokens(offsets[n], doc.blocks)
            lang_of = np.array([languages.setdefault(b.language, len(languages)) for b in doc.blocks] + [-1])
            kind_of = np.array([kinds.setdefault(b.kind, len(kinds)) for b in doc.blocks] + [-1])
            labels[:, len(prefix) :] = lang_of[block], kind_of[block], block  # block -1 picks the -1 appended
            label_pieces.append(labels)
        if needed is not None and n_tokens >= needed:
            break
    if n_docs == 0:
        raise BadTextSource("the text source yielded no documents: check data.source (path, files, languages)")
    if n_tokens < n_ctx:
        raise BadTextSource(
            f"the text source yielded {n_tokens} tokens, fewer than one window of n_ctx={n_ctx}: "
            f"add text or lower data.n_ctx"
        )

    lengths = np.array([len(p) for p in pieces])
    n_windows = n_tokens // n_ctx if needed is None else min(n_tokens // n_ctx, first_windows)
    keep = n_windows * n_ctx
    stream = np.concatenate(pieces)[:keep]
    doc_start = np.zeros(n_tokens, dtype=bool)
    doc_start[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True
    doc_index = np.repeat(np.array(doc_ids, dtype=np.int32), lengths)
    doc_start_NT = torch.from_numpy(doc_start[:keep].reshape(n_windows, n_ctx))
    doc_start_NT[:, 0] = True
    token_labels = None
    if languages:
        full = [np.full((3, p), -1, dtype=np.int32) if isinstance(p, int) else p for p in label_pieces]
        language, kind, block = np.concatenate(full, axis=1)[:, :keep].reshape(3, n_windows, n_ctx)
        token_labels = TokenLabels(
            torch.from_numpy(language.astype(np.int16)), torch.from_numpy(kind.astype(np.int16)),
            torch.from_numpy(block), tuple(languages), tuple(kinds),
        )
    return TokenWindows(
        torch.from_numpy(stream.reshape(n_windows, n_ctx)),
        doc_start_NT,
        torch.from_numpy(doc_index[:keep].reshape(n_windows, n_ctx)),
        token_labels,
    )


def loss_mask(doc_start_NT: Tensor, exclude_first: int = 1) -> Tensor:
    """bool ``[N, T]``: False on the first ``exclude_first`` positions of every window, True elsewhere.

    Position 0 is the LM's attention sink (in SmolLM2 its residual norm is ~5x the others'), so it
    is left out of loss and metrics by default. Only window starts are masked, deliberately simple:
    a document starting mid-window comes after other tokens in the LM's context, so it is not the
    sink. (A mid-window BOS separator may still have a large norm; mask ``doc_start_NT`` too if so.)
    """
    mask = torch.ones_like(doc_start_NT, dtype=torch.bool)
    mask[:, :exclude_first] = False
    return mask


def context_starts(doc_start_NT: Tensor, mask_NT: Tensor) -> Tensor:
    """bool ``[N, T]``: where an SAE's context (re)starts: every document start, and every kept position right
    after a left-out one.

    SAEs are called with these rather than the document starts. The positions the mask leaves out
    (the attention sink at a window start, whose norm at deep layers is ~50x the others') then
    reach no kept position through a contextual SAE's context, as they reach none through the loss.
    """
    start_NT = doc_start_NT.clone()
    start_NT[:, 1:] |= mask_NT[:, 1:] & ~mask_NT[:, :-1]
    return start_NT


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each position's text. A character split over several tokens is shown at the token that completes it.

    Decoded one by one, the bytes of a multi-byte character (CJK, or Cyrillic in a byte-level
    vocabulary) would each show as U+FFFD; a UTF-8 character has at most 4. Earlier pieces get "".
    """
    texts, pending = [], []
    for i in ids:
        pending.append(i)
        text = tokenizer.decode(pending)
        if text.endswith("\ufffd") and len(pending) < 4:
            texts.append("")
            continue
        texts.append(text)
        pending = []
    return texts
