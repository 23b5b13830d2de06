"""The shared SAE base: the folded-bias encoder is the textbook one, gradients included."""

import torch

from ctxsae.models.topk import TopKConfig, TopKSAE


def test_pre_acts_and_their_gradients_equal_the_textbook_form():
    torch.manual_seed(0)
    sae = TopKSAE(TopKConfig(d_in=16, d_sae=48, k=4)).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    g = torch.randn(3, 5, 48, dtype=torch.float64)
    params = (sae.W_enc, sae.b_enc, sae.b_dec)
    folded = torch.autograd.grad((sae.pre_acts(x) * g).sum(), params)
    textbook_pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    textbook = torch.autograd.grad((textbook_pre * g).sum(), params)
    torch.testing.assert_close(sae.pre_acts(x), textbook_pre)
    for a, b in zip(folded, textbook):
        torch.testing.assert_close(a, b)
