"""The language-switch probe: is there a latent that says "language B has started", once, on time?

Each *switch window* is one fortune in language A, a joiner ("\\n\\n"), then one in language B
(``ctxsae.data.text.language_switch_windows``): BOS, the end of A, the start of B, at most the
training ``n_ctx`` long with the switch at most halfway. The switch position ``s`` is the first
token holding a character of B. Whole windows go through LM -> SAE, so a contextual SAE sees A
before the switch.

The joiner alone marks every switch, so a latent for "a new paragraph starts" would look like a
perfect switch detector. Each switch window therefore has a *control window* built the same way
from two fortunes in language B (another window's B entry, the joiner, this window's B entry):
the same boundary and the same text after it, only no change of language.

Per latent, a window's *boundary score* is its largest |novel code| within s-1..s+1 (one token of
slack either way); |z| rather than z, as a contextual SAE may mark the switch by resetting A's
latent as well as by opening B's. The switch windows' boundary scores are the positives, scored
(AUROC = P(positive > negative), ties half) against two kinds of negatives:

* ``elsewhere_auroc``: |code| at every other kept position of both kinds of window;
* ``boundary_auroc``: the control windows' boundary scores: language change vs. paragraph change;
* ``auroc``: their mean, i.e. a negative drawn half from each kind. A latent that fires exactly at
  language switches and nowhere else scores 1, one that never fires 0.5, a paragraph latent ~0.75.

Picking the best of d_sae latents on the same windows flatters it, so the latent is chosen on the
even-numbered windows and its AUROC reported on the odd ones (``*_heldout``; ``*_select`` is the
in-sample figure). For the chosen latent, over the switch windows:

* ``hit_rate``: share of windows where it fires within s-1..s+1 (``control_hit_rate``: the same in
  control windows);
* ``latency``: median tokens from s to its first firing at or after s-1 (windows where it fires in B);
* ``refire_rate``: firings per position of B after its first firing there, beyond s+1 (a latent
  that fires once per region: 0; a per-token language latent: close to its coverage);
* ``false_alarm_rate``: firings per position of A before s-1.

``language_auroc`` asks the other question with *effective* codes: for each language X, does some
latent's effective code say "this is X" wherever the text is in X (positions of the switch windows
in X against those in the other languages)? The latent is again picked on the even windows;
``language_auroc_heldout`` is the mean over languages of the picked latents' held-out AUROC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ctxsae.data.text import SwitchText


def with_controls(texts: Sequence[SwitchText], joiner: str) -> list[SwitchText]:
    """Each switch text followed by its control: another text's B entry (same pair), ``joiner``, its B entry."""
    by_pair: dict[tuple[str, str], list[int]] = {}
    for i, st in enumerate(texts):
        by_pair.setdefault((st.lang_a, st.lang_b), []).append(i)
    out = []
    for i, st in enumerate(texts):
        group = by_pair[(st.lang_a, st.lang_b)]
        other = texts[group[(group.index(i) + 1) % len(group)]]
        before = other.text[other.switch_char :]
        out += [st, SwitchText(before + joiner + st.text[st.switch_char :], st.lang_b, st.lang_b, len(before) + len(joiner))]
    return out


class SwitchWindows(NamedTuple):
    tokens_NT: Tensor  # int64 ids, BOS first, right-padded with the pad (or BOS) id
    valid_NT: Tensor  # bool: a real token after the BOS (the BOS is the attention sink: never scored)
    switch_N: Tensor  # int64: first token holding a character of the second entry
    pair_N: list[str]  # "en-de", ...; a control window is "de-de"
    source_N: Tensor  # int64: index of the text each window was cut from

    @property
    def control_N(self) -> Tensor:
        return torch.tensor([a == b for a, b in (p.split("-") for p in self.pair_N)], dtype=torch.bool)


def switch_windows(texts: Sequence[SwitchText], tokenizer, n_ctx: int, min_tokens: int = 4) -> SwitchWindows:
    """Tokenise switch texts into windows of at most ``n_ctx`` tokens: BOS, the end of A, the start of B.

    A is cut from the front so that the switch falls at most halfway through the window (B gets at
    least half of it); texts with fewer than ``min_tokens`` tokens of A or of B are dropped.
    """
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    head = [] if bos is None else [bos]
    rows, switches, pairs, sources = [], [], [], []
    for i, st in enumerate(texts):
        enc = tokenizer(st.text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        s = next((i for i, (_, end) in enumerate(offsets) if end > st.switch_char), len(ids))
        keep_a = min(s, (n_ctx - len(head)) // 2)
        a, b = ids[s - keep_a : s], ids[s : s + n_ctx - len(head) - keep_a]
        if len(a) < min_tokens or len(b) < min_tokens:
            continue
        rows.append(head + a + b)
        switches.append(len(head) + len(a))
        pairs.append(f"{st.lang_a}-{st.lang_b}")
        sources.append(i)
    T = max((len(r) for r in rows), default=1)
    tokens = torch.full((len(rows), T), pad if pad is not None else 0, dtype=torch.long)
    valid = torch.zeros(len(rows), T, dtype=torch.bool)
    for n, r in enumerate(rows):
        tokens[n, : len(r)] = torch.tensor(r)
        valid[n, len(head) : len(r)] = True
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return SwitchWindows(tokens, valid, as_long(switches), pairs, as_long(sources))


def auroc(pos_PF: Tensor, neg_MF: Tensor, chunk: int = 512) -> Tensor:
    """Per column [F]: P(positive > negative) + P(tie) / 2 (the Mann-Whitney AUROC); nan without negatives."""
    out = []
    for lo in range(0, pos_PF.shape[1], chunk):
        neg = neg_MF[:, lo : lo + chunk].T.contiguous().sort(dim=-1).values  # [f, M]
        pos = pos_PF[:, lo : lo + chunk].T.contiguous()  # [f, P]
        below = torch.searchsorted(neg, pos, right=False).double()
        not_above = torch.searchsorted(neg, pos, right=True).double()
        out.append(((below + not_above) / 2).mean(-1) / neg.shape[-1])
    return torch.cat(out)


def near_boundary(switch_N: Tensor, T: int) -> Tensor:
    """bool [N, T]: within one token of the switch."""
    t = torch.arange(T)[None]
    return (t >= switch_N[:, None] - 1) & (t <= switch_N[:, None] + 1)


def boundary_scores(codes_NTF: Tensor, valid_NT: Tensor, switch_N: Tensor) -> tuple[Tensor, Tensor]:
    """Per window the largest |code| near the boundary [N, F], and |code| at every other kept position [M, F]."""
    score = codes_NTF.abs()
    near = near_boundary(switch_N, codes_NTF.shape[1]) & valid_NT
    return torch.where(near[..., None], score, 0).amax(1), score[valid_NT & ~near]


def switch_auroc(codes_NTF: Tensor, valid_NT: Tensor, switch_N: Tensor, control_N: Tensor) -> dict[str, Tensor]:
    """[F] AUROCs for "the language switches here" (see the module docstring)."""
    at, elsewhere = boundary_scores(codes_NTF, valid_NT, switch_N)
    pos = at[~control_N]
    scores = {"elsewhere_auroc": auroc(pos, elsewhere), "boundary_auroc": auroc(pos, at[control_N])}
    return {"auroc": (scores["elsewhere_auroc"] + scores["boundary_auroc"]) / 2, **scores}


def position_languages(windows: SwitchWindows) -> list[list[str]]:
    """The language of each position: A's before the switch, B's from it on."""
    T = windows.valid_NT.shape[1]
    return [[a] * int(s) + [b] * (T - int(s)) for (a, b), s in zip((p.split("-") for p in windows.pair_N), windows.switch_N)]


def language_auroc(effective_NTF: Tensor, valid_NT: Tensor, is_x_NT: Tensor) -> Tensor:
    """[F] AUROC of the effective code for "this position is in language X" (X positions vs other kept ones)."""
    return auroc(effective_NTF[valid_NT & is_x_NT], effective_NTF[valid_NT & ~is_x_NT])


def latent_timing(fire_NT: Tensor, valid_NT: Tensor, switch_N: Tensor) -> dict[str, float]:
    """Hit rate, latency, re-firing and false alarms of one latent's firing pattern (see the module docstring)."""
    N, T = fire_NT.shape
    t = torch.arange(T)[None].expand(N, T)
    fire = fire_NT & valid_NT
    near = near_boundary(switch_N, T)
    in_b = valid_NT & (t >= switch_N[:, None] - 1)
    first_t = torch.where(fire & in_b, t, T).min(1).values  # [N]; T: never fires in B
    fires_in_b = first_t < T
    after_first = valid_NT & (t > first_t[:, None]) & ~near
    in_a = valid_NT & (t < switch_N[:, None] - 1)
    latency = (first_t - switch_N)[fires_in_b].double()
    return {
        "hit_rate": (fire & near).any(1).double().mean().item(),
        "fires_in_b_rate": fires_in_b.double().mean().item(),
        "latency": latency.median().item() if len(latency) else float("nan"),
        "refire_rate": ((fire & after_first).sum() / after_first.sum().clamp_min(1)).item(),
        "false_alarm_rate": ((fire & in_a).sum() / in_a.sum().clamp_min(1)).item(),
    }


def switch_probe(codes_NTF: Tensor, effective_NTF: Tensor, windows: SwitchWindows) -> dict:
    """Every probe figure for one SAE's codes (CPU) on ``windows`` cut from ``with_controls`` texts.

    Texts come in (switch, control) pairs, so ``source // 2`` keeps a switch window and its control
    in the same half of the select / held-out split.
    """
    valid, switch, control = windows.valid_NT, windows.switch_N, windows.control_N
    select = (windows.source_N // 2) % 2 == 0

    def sw(rows: Tensor) -> dict[str, Tensor]:
        return switch_auroc(codes_NTF[rows], valid[rows], switch[rows], control[rows])

    lang_NT = position_languages(windows)
    languages = sorted({x for row, c in zip(lang_NT, control.tolist()) if not c for x in row})

    def lang(rows: Tensor, x: str) -> Tensor:
        rows = rows & ~control
        is_x = torch.tensor([[y == x for y in lang_NT[n]] for n in rows.nonzero().flatten().tolist()], dtype=torch.bool)
        return language_auroc(effective_NTF[rows], valid[rows], is_x.view(-1, valid.shape[1]))

    picked, held_out = sw(select), sw(~select)
    latent = int(picked["auroc"].argmax())
    by_language = {}
    for x in languages:
        picked_x = lang(select, x)
        best = int(picked_x.argmax())
        by_language[x] = {"latent": best, "auroc_select": float(picked_x[best]),
                          "auroc_heldout": float(lang(~select, x)[best])}
    fire = codes_NTF[..., latent] != 0
    by_pair = {}
    for pair in sorted({p for p, c in zip(windows.pair_N, control.tolist()) if not c}):
        lang_b = pair.split("-")[1]
        rows = torch.tensor([p in (pair, f"{lang_b}-{lang_b}") for p in windows.pair_N])
        by_pair[pair] = float(sw(rows)["auroc"][latent])
    return {
        "n_windows": int((~control).sum()),
        "n_control_windows": int(control.sum()),
        "latent": latent,
        **{f"{k}_select": float(v[latent]) for k, v in picked.items()},
        **{f"{k}_heldout": float(v[latent]) for k, v in held_out.items()},
        **latent_timing(fire[~control], valid[~control], switch[~control]),
        "control_hit_rate": (fire[control] & near_boundary(switch[control], fire.shape[1])).any(1).double().mean().item(),
        "auroc_by_pair": by_pair,
        "language_auroc_select": sum(v["auroc_select"] for v in by_language.values()) / len(by_language),
        "language_auroc_heldout": sum(v["auroc_heldout"] for v in by_language.values()) / len(by_language),
        "language_auroc_by_language": by_language,
    }
