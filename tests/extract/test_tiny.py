from ctxsae.extract.tiny import BOS_ID, byte_tokenizer


def test_byte_tokenizer_ids_are_utf8_bytes():
    tok = byte_tokenizer()
    text = "Grüße, 中文!\n\t%\x00 \x1b[33m end  "
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert len(tok) == 257 and tok.bos_token_id == BOS_ID == 256
    assert tok.decode([BOS_ID] + ids[:4]) == "<bos>Grü"
