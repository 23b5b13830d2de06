import pytest
import torch

from ctxsae.data.text import SwitchText
from ctxsae.extract.tiny import BOS_ID, byte_tokenizer
from ctxsae.metrics.language import (
    SwitchWindows, auroc, latent_timing, switch_probe, switch_windows, with_controls,
)


def test_auroc_known_values():
    pos = torch.tensor([[1.0, 0.0, 0.0, 2.0], [2.0, 0.0, 0.0, 2.0]])
    neg = torch.tensor([[0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 3.0, 2.0], [0.0, 0.0, 3.0, 2.0]])
    # column 0 separates perfectly, 1 never fires (all ties), 2 is inverted, 3 fires everywhere alike
    assert auroc(pos, neg).tolist() == [1.0, 0.5, 0.0, 0.5]
    # ties count half: positives {1, 0} vs negatives {0, 0}
    assert auroc(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [0.0]])).item() == pytest.approx(0.75)
    assert auroc(torch.rand(50, 700), torch.rand(80, 700), chunk=256).shape == (700,)  # chunks agree in shape


def texts(n=6):
    a = [f"The fox number {i} jumps over the lazy dog again." for i in range(n)]
    b = [f"Der Fuchs Nummer {i} springt wieder über den Hund." for i in range(n)]
    return [SwitchText(x + "\n\n" + y, "en", "de", len(x) + 2) for x, y in zip(a, b)]


def test_windows_find_the_switch_token_and_controls_repeat_the_second_language():
    ts = with_controls(texts(), "\n\n")
    assert [t.lang_a for t in ts[:4]] == ["en", "de", "en", "de"]
    assert ts[1].text == ts[2].text[ts[2].switch_char :] + "\n\n" + ts[0].text[ts[0].switch_char :]
    w = switch_windows(ts, byte_tokenizer(), n_ctx=40)
    assert w.tokens_NT.shape == (12, 40) and (w.tokens_NT[:, 0] == BOS_ID).all() and not w.valid_NT[:, 0].any()
    assert w.control_N.tolist() == [False, True] * 6 and w.source_N.tolist() == list(range(12))
    for n in range(12):
        s = int(w.switch_N[n])
        assert s == 20  # byte tokens: the switch is halfway (the end of A is cut from the front)
        assert bytes(w.tokens_NT[n, s - 2 : s + 3].tolist()) == b"\n\nDer"
    w = switch_windows(ts, byte_tokenizer(), n_ctx=8)  # under min_tokens of B: every window dropped
    assert len(w.switch_N) == 0


def windows(N=40, T=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    switch = torch.randint(8, 20, (N,), generator=g)
    valid = torch.ones(N, T, dtype=torch.bool)
    valid[:, 0] = False
    pairs = ["en-de", "de-de"] * (N // 2)
    return SwitchWindows(torch.zeros(N, T, dtype=torch.long), valid, switch, pairs, torch.arange(N))


def test_a_latent_firing_exactly_at_language_switches_is_found_with_auroc_one():
    w = windows()
    N, T, F = len(w.switch_N), w.valid_NT.shape[1], 16
    codes = torch.rand(N, T, F, generator=torch.Generator().manual_seed(1)) * (torch.rand(N, T, F) < 0.1)
    rows = torch.arange(N)
    codes[:, :, 5] = 0
    codes[rows[~w.control_N], w.switch_N[~w.control_N], 5] = 2.0  # the switch detector
    codes[:, :, 7] = 0
    codes[rows, w.switch_N, 7] = 3.0  # a paragraph detector: fires at the control boundaries too
    effective = torch.zeros(N, T, F)
    t = torch.arange(T)[None]
    effective[..., 9] = ((t >= w.switch_N[:, None]) | w.control_N[:, None]).float()  # "this is German" state
    effective[..., 11] = ((t < w.switch_N[:, None]) & ~w.control_N[:, None]).float()  # "this is English" state
    r = switch_probe(codes, effective, w)
    assert r["latent"] == 5 and r["auroc_heldout"] == 1 and r["boundary_auroc_heldout"] == 1
    assert r["hit_rate"] == 1 and r["latency"] == 0 and r["refire_rate"] == 0 and r["false_alarm_rate"] == 0
    assert r["control_hit_rate"] == 0 and r["auroc_by_pair"] == {"en-de": 1.0}
    assert r["language_auroc_heldout"] == 1
    assert {x: v["latent"] for x, v in r["language_auroc_by_language"].items()} == {"de": 9, "en": 11}
    codes[..., 5] = 0  # without it, the paragraph latent wins on everything but the control boundaries
    r = switch_probe(codes, effective, w)
    assert r["latent"] == 7 and r["elsewhere_auroc_heldout"] == 1 and r["boundary_auroc_heldout"] == 0.5
    assert r["auroc_heldout"] == 0.75 and r["control_hit_rate"] == 1


def test_timing_of_a_late_refiring_latent():
    valid = torch.ones(1, 20, dtype=torch.bool)
    fire = torch.zeros(1, 20, dtype=torch.bool)
    fire[0, [3, 13, 16, 18]] = True  # one false alarm in A; first fires 3 tokens after the switch at 10
    r = latent_timing(fire, valid, torch.tensor([10]))
    assert r["latency"] == 3 and r["hit_rate"] == 0 and r["fires_in_b_rate"] == 1
    assert r["refire_rate"] == pytest.approx(2 / 6)  # positions 14..19 after the first firing
    assert r["false_alarm_rate"] == pytest.approx(1 / 9)  # positions 0..8 precede the switch
