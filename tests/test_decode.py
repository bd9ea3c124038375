import math

import torch

from nanonlp.decode import choose, filter_logits, generate_ids
from nanonlp.models import GPT, GPTConfig


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=16, dropout=0.0, vocab_size=13)).eval()


def test_top_k_filter_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    out = filter_logits(logits, top_k=2)
    assert torch.isinf(out[0, [0, 3]]).all()
    assert torch.equal(out[0, [1, 2]], logits[0, [1, 2]])


def test_top_p_filter_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    # sorted: 0.5, 0.3, 0.15, 0.05; cumulative before each: 0, 0.5, 0.8, 0.95
    kept = lambda p: (~torch.isinf(filter_logits(logits, top_p=p))).nonzero()[:, 1].tolist()  # noqa: E731
    assert kept(0.7) == [1, 3]  # 0.5 + 0.3 reaches 0.7
    assert kept(0.5) == [1]  # the top token alone reaches 0.5
    assert kept(0.81) == [1, 2, 3]
    assert kept(0.01) == [1]  # the most likely token always stays


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
    assert choose(logits, 0.0, 0, 1.0, None).view(-1).tolist() == [1, 0]


def test_top_k_one_equals_greedy():
    model = tiny_gpt()
    prompt = torch.tensor([[1, 2, 3]])
    greedy = torch.cat(list(generate_ids(model, prompt, 40, temperature=0.0)), dim=1)
    generator = torch.Generator().manual_seed(123)
    top1 = torch.cat(list(generate_ids(model, prompt, 40, temperature=1.3, top_k=1, generator=generator)), dim=1)
    assert torch.equal(greedy, top1)


def test_fixed_seed_reproduces_and_other_seed_differs():
    model = tiny_gpt()
    prompt = torch.tensor([[4]])

    def sample(seed):
        generator = torch.Generator().manual_seed(seed)
        return torch.cat(list(generate_ids(model, prompt, 60, temperature=1.0, generator=generator)), dim=1)

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))


def test_sampling_follows_the_distribution():
    # With two tokens at probabilities 0.8/0.2, the sample frequency is close to 0.8.
    logits = torch.tensor([[math.log(0.8), math.log(0.2)]]).repeat(4000, 1)
    generator = torch.Generator().manual_seed(0)
    frequency = (choose(logits, 1.0, 0, 1.0, generator) == 0).float().mean().item()
    assert abs(frequency - 0.8) < 0.03


def test_generation_restores_training_mode():
    model = tiny_gpt().train()
    list(generate_ids(model, torch.tensor([[1]]), 3, temperature=0))
    assert model.training
