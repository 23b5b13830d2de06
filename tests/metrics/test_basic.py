import torch

from ctxsae.metrics.basic import fired, l0


def test_masked_l0_and_fired_equal_those_of_the_kept_rows():
    """Weighting by the mask (no boolean indexing, no host sync) gives exactly the figures of the selected rows."""
    torch.manual_seed(0)
    codes_BTF = torch.randn(5, 11, 64).relu() * (torch.rand(5, 11, 64) < 0.2)
    mask_BT = torch.rand(5, 11) < 0.6
    kept_NF = codes_BTF[mask_BT]
    assert torch.equal(l0(codes_BTF, mask_BT), (kept_NF != 0).sum(-1).float().mean())
    assert torch.equal(fired(codes_BTF, mask_BT), (kept_NF != 0).any(0))
    assert not torch.equal(fired(codes_BTF, mask_BT), fired(codes_BTF))  # the mask matters here
    assert torch.equal(l0(codes_BTF), (codes_BTF != 0).sum(-1).float().mean())
