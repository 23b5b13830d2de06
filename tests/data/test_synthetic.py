import json
from dataclasses import asdict, replace

import pytest
import torch

from ctxsae.data.synthetic import (
    SyntheticConfig,
    SyntheticData,
    SyntheticSource,
    generate,
    ground_truth_dense_l0,
    ground_truth_l0,
)

CFG = SyntheticConfig(n_windows=300)  # more than one seeded block of windows


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(CFG)


def group_view(data: SyntheticData, cfg: SyntheticConfig = CFG) -> torch.Tensor:
    N, T, _ = data.acts_NTF.shape
    return data.acts_NTF[..., data.is_region_F].reshape(N, T, cfg.n_region_groups, cfg.group_size)


def test_shapes_and_types(data):
    N, T, D, F = CFG.n_windows, CFG.n_ctx, CFG.d_in, CFG.n_features
    assert data.x_NTD.shape == (N, T, D) and data.x_NTD.dtype == torch.float32
    assert data.doc_start_NT.shape == (N, T) and data.doc_start_NT.dtype == torch.bool
    assert data.acts_NTF.shape == data.onset_NTF.shape == (N, T, F)
    assert data.features_FD.shape == (F, D)
    torch.testing.assert_close(data.features_FD.norm(dim=1), torch.ones(F))
    assert data.is_region_F[: CFG.n_region].all() and not data.is_region_F[CFG.n_region :].any()
    assert bool(data.doc_start_NT[:, 0].all()) and not data.doc_start_NT[:, 1:].any()
    assert (data.acts_NTF >= 0).all()


def test_deterministic_and_seeded(data):
    again = generate(CFG)
    for a, b in zip(data, again):
        assert torch.equal(a, b)
    other = generate(replace(CFG, seed=1))
    assert not torch.equal(data.features_FD, other.features_FD)
    assert not torch.equal(data.acts_NTF, other.acts_NTF)


def test_x_is_features_plus_noise(data):
    resid = data.x_NTD - data.acts_NTF @ data.features_FD
    assert abs(resid.std().item() - CFG.noise_std) < 0.05 * CFG.noise_std
    # Random directions are orthogonal on average, so E|x|^2 = sum_f E[a_f^2] + D * noise^2.
    m2_region = CFG.region_magnitude**2 + CFG.region_magnitude_jitter**2 / 3
    m2_token = CFG.token_magnitude**2 + CFG.token_magnitude_jitter**2 / 3
    expected = (
        CFG.n_region_groups * (1 - CFG.p_region_off) * m2_region
        + CFG.n_token_features * CFG.token_rate * m2_token
        + CFG.d_in * CFG.noise_std**2
    )
    assert abs(data.x_NTD.pow(2).sum(-1).mean().item() / expected - 1) < 0.1


def test_groups_are_mutually_exclusive_and_off_at_the_right_rate(data):
    on_NTGS = group_view(data) > 0
    assert on_NTGS.sum(-1).max() == 1
    off_share = (~on_NTGS.any(-1)).float().mean().item()
    assert abs(off_share - CFG.p_region_off) < 0.03
    token_rate = (data.acts_NTF[..., ~data.is_region_F] > 0).float().mean().item()
    assert abs(token_rate - CFG.token_rate) < 0.002


def test_regions_are_constant_between_onsets(data):
    acts, onset = group_view(data), data.onset_NTF[..., data.is_region_F].reshape(group_view(data).shape)
    on = acts > 0
    # Inside a document, the state of a group changes only where one of its features has an onset or it goes silent.
    changed = (acts[:, 1:] != acts[:, :-1]).any(-1)
    explained = onset[:, 1:].any(-1) | ~on[:, 1:].any(-1)
    assert not (changed & ~explained).any()
    # Regions have geometric lengths with the configured mean: boundaries per position ~ 1 / mean_region_len.
    onsets_inside = onset[:, 1:].any(-1).float().mean().item()
    expected = (1 - CFG.p_region_off) / CFG.mean_region_len
    assert abs(onsets_inside / expected - 1) < 0.1


def test_switches_change_the_feature_and_silences_forget_it(data):
    member = group_view(data).argmax(-1)  # [N, T, G] which feature of each group (0 when silent)
    on = group_view(data).gt(0).any(-1)
    inside = ~data.doc_start_NT[:, 1:, None]
    switch = on[:, 1:] & on[:, :-1] & inside & (group_view(data)[:, 1:] != group_view(data)[:, :-1]).any(-1)
    assert switch.any() and not (member[:, 1:] == member[:, :-1])[switch].any()
    # After a silent region the next feature is drawn afresh: it is the one before the silence ~1/group_size of the time.
    last_on = torch.where(on, member, -1)
    N, T, G = member.shape
    idx = torch.where(on, torch.arange(T).view(1, T, 1), -1).cummax(1).values  # last active position so far
    prev_member = torch.gather(last_on, 1, idx.clamp_min(0))
    returns = on[:, 1:] & ~on[:, :-1] & inside & (idx[:, :-1] >= 0)
    same = (member[:, 1:] == prev_member[:, :-1])[returns].float().mean().item()
    assert abs(same - 1 / CFG.group_size) < 0.05


def test_onsets_exactly_where_a_feature_becomes_active(data):
    on = data.acts_NTF > 0
    before = torch.zeros_like(on)
    before[:, 1:] = on[:, :-1]
    starts = on & (~before | data.doc_start_NT[..., None])
    assert torch.equal(data.onset_NTF, starts & data.is_region_F)


def test_doc_starts_reset_regions():
    cfg = replace(CFG, doc_len=24, mean_region_len=1e9)  # regions would never end, except at doc starts
    data = generate(cfg)
    interior = data.doc_start_NT[:, 1:]
    assert interior.any() and interior.sum(1).max() <= cfg.n_ctx // cfg.doc_len + 1
    # Windows tile one stream: documents start every doc_len positions of it (plus every window start).
    pos = torch.arange(cfg.n_windows)[:, None] * cfg.n_ctx + torch.arange(cfg.n_ctx)
    assert torch.equal(data.doc_start_NT[:, 1:], (pos % cfg.doc_len == 0)[:, 1:])
    region = data.acts_NTF[..., data.is_region_F]
    on = region > 0
    # Every active feature at a doc start is an onset, and nothing but doc starts ever changes a region.
    assert torch.equal(data.onset_NTF[..., data.is_region_F], on & data.doc_start_NT[..., None])
    same = (region[:, 1:] == region[:, :-1]).all(-1)
    assert torch.equal(~same & ~interior, torch.zeros_like(same))
    # Across a doc start the new state is drawn afresh: features repeat only by chance (~1/group_size).
    G = group_view(data, cfg)
    both_on = (G[:, 1:] > 0).any(-1) & (G[:, :-1] > 0).any(-1) & interior[..., None]
    repeat = ((G[:, 1:] > 0) & (G[:, :-1] > 0)).any(-1)[both_on].float().mean().item()
    assert abs(repeat - 1 / cfg.group_size) < 0.1


def test_without_region_features_there_are_none():
    data = generate(replace(CFG, region_features=False, n_windows=64))
    assert data.features_FD.shape[0] == CFG.n_token_features
    assert not data.is_region_F.any() and not data.onset_NTF.any() and (data.group_F == -1).all()
    assert ground_truth_l0(data) == ground_truth_dense_l0(data)


def test_ground_truth_l0_counts_novel_events():
    # One window, one group of two region features (f0, f1) and one token feature; T = 6:
    #   t:       0    1    2    3     4    5
    #   region:  f0   f0   f1   off   f1   f1'  (doc start at t=5)
    #   token:   -    x    -    -     -    -
    acts = torch.zeros(1, 6, 3)
    acts[0, 0:2, 0] = 1.0
    acts[0, 2, 1] = 0.9
    acts[0, 4:6, 1] = 1.1
    acts[0, 1, 2] = 1.0
    doc_start = torch.tensor([[True, False, False, False, False, True]])
    onset = torch.zeros(1, 6, 3, dtype=torch.bool)
    onset[0, [0, 2, 4, 5], [0, 1, 1, 1]] = True
    data = SyntheticData(
        torch.zeros(1, 6, 4), doc_start, torch.eye(3, 4), acts, onset,
        torch.tensor([True, True, False]), torch.tensor([0, 0, -1]),
    )
    assert ground_truth_dense_l0(data) == pytest.approx(6 / 6)
    # onsets at 0, 2, 4, 5 + silence at 3 + token at 1; the switch at 2 counts once.
    assert ground_truth_l0(data) == pytest.approx(6 / 6)
    # An additive code also pays for switching f0 off at 2 and f1 off at 3.
    assert ground_truth_l0(data, diff_code=True) == pytest.approx(7 / 6)


def test_persistent_regions_need_fewer_codes_than_a_per_token_code(data):
    dense, novel = ground_truth_dense_l0(data), ground_truth_l0(data)
    assert novel < dense - 2  # four groups active ~80% of the time, carried by context
    memoryless = generate(replace(CFG, mean_region_len=1.0, n_windows=64))  # every position its own region
    assert ground_truth_l0(memoryless) >= ground_truth_dense_l0(memoryless)


def test_source_chunks_reproduce_generate_across_chunk_and_block_boundaries():
    cfg = replace(CFG, doc_len=40)
    src = SyntheticSource(**asdict(cfg))
    full = generate(cfg)
    chunks = list(src.chunks(start=37, chunk_windows=100))
    assert [len(c.x_NTD) for c in chunks] == [100, 100, 63]
    assert torch.equal(torch.cat([c.x_NTD for c in chunks]), full.x_NTD[37:])
    assert torch.equal(torch.cat([c.doc_start_NT for c in chunks]), full.doc_start_NT[37:])
    assert all(c.tokens_NT.dtype == torch.int32 and (c.tokens_NT == -1).all() for c in chunks)
    part = src.ground_truth(slice(250, 270))
    assert torch.equal(part.acts_NTF, full.acts_NTF[250:270]) and torch.equal(part.onset_NTF, full.onset_NTF[250:270])
    picked = src.ground_truth([3, 299, 7])  # e.g. a DataModule's held-out windows
    for name in ("x_NTD", "doc_start_NT", "acts_NTF", "onset_NTF"):
        assert torch.equal(getattr(picked, name), getattr(full, name)[[3, 299, 7]])
    assert torch.equal(picked.features_FD, full.features_FD)


def test_source_protocol_and_fingerprint():
    src = SyntheticSource(**asdict(CFG))
    assert (src.d_in, src.n_ctx, src.n_windows()) == (CFG.d_in, CFG.n_ctx, CFG.n_windows)
    fp = src.fingerprint()
    assert json.loads(json.dumps(fp)) == fp and fp["source"].endswith("SyntheticSource")
    assert fp != SyntheticSource(**asdict(replace(CFG, token_rate=0.03))).fingerprint()


def test_hydra_config_builds_the_source():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(overrides=["+data=synthetic", "data.source.n_ctx=16"])
    src = instantiate(cfg.data.source)
    assert isinstance(src, SyntheticSource) and src.n_ctx == cfg.data.n_ctx == 16
    assert src.fingerprint() | {"n_ctx": 64} == SyntheticSource().fingerprint()  # yaml defaults = dataclass defaults
