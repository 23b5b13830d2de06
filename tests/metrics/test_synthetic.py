import math

import pytest
import torch

from ctxsae.data.synthetic import SyntheticConfig, generate, ground_truth_dense_l0
from ctxsae.metrics.synthetic import (
    evaluate,
    feature_recovery,
    l0_at_matched_fvu,
    match_by_activation,
    match_by_decoder,
    onset_scores,
)
from ctxsae.models.base import SAE, SAEConfig, SAEOutput


@pytest.fixture(scope="module")
def data():
    return generate(SyntheticConfig(n_windows=128, doc_len=48))


def permuted_latents(data, extra: int = 20, seed: int = 0):
    """A dictionary holding the true features in shuffled order among random distractor rows."""
    gen = torch.Generator().manual_seed(seed)
    F, D = data.features_FD.shape
    perm = torch.randperm(F + extra, generator=gen)  # latent perm[g] holds true feature g
    W = torch.randn(F + extra, D, generator=gen)
    W[perm[:F]] = data.features_FD
    return W, perm[:F]


def test_recovery_is_one_for_the_true_dictionary_and_finds_each_feature(data):
    W, latent_of = permuted_latents(data)
    rec = feature_recovery(W, data.features_FD, data.is_region_F)
    assert rec.mean == pytest.approx(1.0) and rec.region == pytest.approx(1.0) and rec.token == pytest.approx(1.0)
    assert torch.equal(rec.latent_G, latent_of)
    assert torch.equal(match_by_decoder(W, data), latent_of[data.is_region_F])


def test_recovery_is_low_for_random_or_negated_dictionaries(data):
    random = feature_recovery(torch.randn(256, data.features_FD.shape[1]), data.features_FD)
    assert random.mean < 0.6 and math.isnan(random.region)
    negated = feature_recovery(-data.features_FD, data.features_FD)
    assert negated.mean < 0.6  # signed cosine: -f is not f
    half = feature_recovery(data.features_FD[: len(data.features_FD) // 2], data.features_FD)
    assert half.cos_G[: len(data.features_FD) // 2].min() == pytest.approx(1.0) and half.mean < 0.8


def test_match_by_activation_follows_the_effective_codes(data):
    _, latent_of = permuted_latents(data)
    F = data.features_FD.shape[0]
    effective = torch.zeros(*data.acts_NTF.shape[:2], F + 20)
    effective[..., latent_of] = data.acts_NTF
    assert torch.equal(match_by_activation(effective, data), latent_of[data.is_region_F])


def codes_from(signal_NTF, latent_of, n_latents):
    codes = torch.zeros(*signal_NTF.shape[:2], n_latents)
    codes[..., latent_of] = signal_NTF.float()
    return codes


def test_onset_scores_of_a_perfect_contextual_code(data):
    _, latent_of = permuted_latents(data)
    match = latent_of[data.is_region_F]
    s = onset_scores(codes_from(data.onset_NTF, latent_of, 164), data, match)
    assert (s.precision, s.recall, s.firings_per_region) == (1.0, 1.0, 1.0)
    # One token late is still a hit (slack); two tokens late is a miss.
    late = torch.zeros_like(data.onset_NTF)
    late[:, 1:] = data.onset_NTF[:, :-1] & ~data.doc_start_NT[:, 1:, None]
    s1 = onset_scores(codes_from(late, latent_of, 164), data, match)
    assert s1.precision == 1.0 and s1.recall > 0.95  # misses only onsets on a doc's last position
    late2 = torch.zeros_like(late)
    late2[:, 2:] = data.onset_NTF[:, :-2]
    s2 = onset_scores(codes_from(late2, latent_of, 164), data, match)
    assert s2.recall < 0.1 and s2.precision < 0.1


def test_onset_scores_of_a_per_token_code(data):
    _, latent_of = permuted_latents(data)
    match = latent_of[data.is_region_F]
    s = onset_scores(codes_from(data.acts_NTF, latent_of, 164), data, match)
    assert s.recall == 1.0
    assert s.precision < 0.3 and s.firings_per_region > 5  # fires at every position of every region
    silent = onset_scores(torch.zeros(*data.acts_NTF.shape[:2], 164), data, match)
    assert silent.recall == 0.0 and math.isnan(silent.precision) and silent.firings_per_region == 0.0


def test_onset_precision_ignores_firings_outside_the_region(data):
    _, latent_of = permuted_latents(data)
    on = data.acts_NTF > 0
    offsets = torch.zeros_like(on)
    offsets[:, 1:] = on[:, :-1] & ~on[:, 1:]  # a diff code switching the feature off
    codes = codes_from(data.onset_NTF, latent_of, 164) - codes_from(offsets, latent_of, 164)
    s = onset_scores(codes, data, latent_of[data.is_region_F])
    assert (s.precision, s.recall, s.firings_per_region) == (1.0, 1.0, 1.0)


def test_l0_at_matched_fvu_interpolates_log_l0_on_the_pareto_front():
    curve = [(1.0 - 0.2 * i, 2.0 * 2**i) for i in range(5)]  # log L0 exactly linear in FVU
    points = curve + [(0.7, 100.0)]  # dominated: ignored
    assert l0_at_matched_fvu(points, 0.6) == pytest.approx(8.0)
    assert l0_at_matched_fvu(points, 0.5) == pytest.approx(8.0 * math.sqrt(2))
    assert math.isnan(l0_at_matched_fvu(points, 0.1)) and math.isnan(l0_at_matched_fvu(points, 1.5))
    assert math.isnan(l0_at_matched_fvu([], 0.5))


class Oracle(SAE):
    """Reads the true activations: per-token (codes = acts) or contextual (codes = novel events only)."""

    unit_norm_decoder = True

    def __init__(self, data, contextual: bool):
        super().__init__(SAEConfig(d_in=data.features_FD.shape[1], d_sae=data.features_FD.shape[0]))
        self.W_dec.data.copy_(data.features_FD)
        self.data, self.contextual = data, contextual

    def forward(self, x_BTD, doc_start_BT):
        acts = self.data.acts_NTF
        codes = torch.where(self.data.is_region_F, self.data.onset_NTF * acts, acts) if self.contextual else acts
        return SAEOutput(codes, acts, self.decode(acts), pre_acts=acts, aux={})


def test_evaluate_scores_oracles(data):
    per_token, contextual = evaluate(Oracle(data, False), data, 10**6), evaluate(Oracle(data, True), data, 10**6)
    for fig in per_token, contextual:
        assert fig["recovery"] == pytest.approx(1.0) and fig["fvu"] < 0.05  # only the noise is left
        assert fig["l0_effective"] == pytest.approx(ground_truth_dense_l0(data))
    assert per_token["l0"] == pytest.approx(per_token["gt_dense_l0"]) and per_token["onset_decoder/precision"] < 0.3
    assert contextual["onset_decoder/precision"] == contextual["onset_activation/recall"] == 1.0
    # The oracle's codes are the ground-truth events minus the silences it gets for free by reading acts.
    assert contextual["gt_l0"] - 0.1 < contextual["l0"] < contextual["gt_l0"]
