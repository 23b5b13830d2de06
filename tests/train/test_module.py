import torch

from ctxsae.train.module import adam


def test_fused_adam_follows_plain_adam():
    """The training optimizer (fused Adam) takes the steps of plain Adam, to float rounding."""
    torch.manual_seed(0)
    start = [torch.randn(64, 16), torch.randn(16)]
    fused = [torch.nn.Parameter(p.clone()) for p in start]
    plain = [torch.nn.Parameter(p.clone()) for p in start]
    opts = adam(fused, 1e-2, (0.9, 0.99)), torch.optim.Adam(plain, lr=1e-2, betas=(0.9, 0.99), foreach=False)
    for _ in range(20):
        grads = [torch.randn_like(p) for p in start]
        for params, opt in zip((fused, plain), opts):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b, s in zip(fused, plain, start):
        assert not torch.equal(b, s)  # the parameters moved
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
