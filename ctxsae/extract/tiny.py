"""A tiny byte-level tokenizer for offline tests (and for the tiny random test LM).

Token id == UTF-8 byte value (0..255), plus ``<bos>`` = 256. No merges, so tokenising is exactly
``list(text.encode("utf-8"))``: tests can check token streams against the text without a model.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS_ID = 256


def _byte_to_char() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet the ByteLevel pre-tokenizer emits."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    shifted = [b for b in range(256) if b not in printable]  # control bytes, space, ...: moved above 255
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(shifted)}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """257-token byte-level tokenizer: ids 0..255 are bytes, 256 is ``<bos>`` (also eos/pad)."""
    vocab = {char: byte for byte, char in _byte_to_char().items()} | {"<bos>": BOS_ID}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>", pad_token="<bos>")
