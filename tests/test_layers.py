import torch

from nanonlp.models.layers import Dropout


def test_dropout_keeps_one_minus_p_and_preserves_the_mean():
    torch.manual_seed(0)
    layer = Dropout(0.2).train()
    x = torch.ones(200_000)
    y = layer(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.8) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.8))
    assert abs(y.mean().item() - 1.0) < 0.01


def test_dropout_is_identity_in_eval_and_at_zero():
    x = torch.randn(4, 5)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_dropout_gradient_is_the_mask():
    torch.manual_seed(1)
    x = torch.randn(1000, requires_grad=True)
    y = Dropout(0.3).train()(x)
    y.sum().backward()
    expected = (y.detach() != 0).float() / 0.7
    assert torch.allclose(x.grad, expected)
