"""Tokens -> fixed windows: documents are tokenised, concatenated into one stream and cut.

    doc 0            doc 1      doc 2
    [bos a b c d e f][bos g h][bos i j k l m ...]      one stream, in document order
    |---- window 0 ----|---- window 1 ----|--- ...     consecutive, non-overlapping n_ctx slices

Windows keep the stream order exactly. A window may span several documents: ``doc_start_NT`` marks
where each one begins, and every window start (where the LM's context begins); a contextual SAE
resets its context there. The ragged tail of the stream is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ctxsae.data.text import BadTextSource, Document

_BATCH_CHARS = 1 << 20  # tokenise ~1M characters per call: batched calls are much faster than one per doc


class TokenWindows(NamedTuple):
    tokens_NT: Tensor  # int64 (LongTensor) token ids, ready for the LM; stream order within and across windows
    doc_start_NT: Tensor  # bool: a document starts here, or a window does (always True at t = 0)
    doc_index_NT: Tensor  # int32: index, in the input iterable, of the document each token came from


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust `tokenizers.Tokenizer` of a fast HF tokenizer
    if backend is not None:  # same ids as tokenizer(texts), ~2-3x faster: no offsets, no BatchEncoding
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _batches(texts: Iterator[tuple[int, str]], max_chars: int) -> Iterator[list[tuple[int, str]]]:
    batch, chars = [], 0
    for item in texts:
        batch.append(item)
        chars += len(item[1])
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
    after that many windows (and stops tokenising once enough tokens are in).
    """
    if n_ctx < 1:
        raise BadTextSource(f"n_ctx must be >= 1, got {n_ctx}")
    prefix = [] if doc_separator_id is None else [doc_separator_id]
    texts = ((i, d if isinstance(d, str) else d.text) for i, d in enumerate(documents))
    pieces, doc_ids, n_docs, n_tokens = [], [], 0, 0
    needed = first_windows * n_ctx if first_windows > 0 else None
    # Small first batches when few tokens are needed; the chars-per-token ratio is >= 1 for most text.
    for batch in _batches(texts, min(_BATCH_CHARS, needed or _BATCH_CHARS)):
        n_docs += len(batch)
        ids = _encode(tokenizer, [t for _, t in batch])
        for (i, _), doc_tokens in zip(batch, ids):
            if doc_tokens:
                pieces.append(np.asarray(prefix + doc_tokens, dtype=np.int64))
                doc_ids.append(i)
                n_tokens += len(pieces[-1])
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
    return TokenWindows(
        torch.from_numpy(stream.reshape(n_windows, n_ctx)),
        doc_start_NT,
        torch.from_numpy(doc_index[:keep].reshape(n_windows, n_ctx)),
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
