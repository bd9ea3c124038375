import pytest
import torch

from nanonlp.models import CharRNN, CharRNNConfig


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stateful_generation_matches_full_recompute(cell):
    torch.manual_seed(0)
    model = CharRNN(CharRNNConfig(cell=cell, n_layer=2, n_embd=8, hidden_size=16, dropout=0.0, vocab_size=7)).eval()
    history = torch.randint(7, (2, 4))
    state, step_input = model.init_state(2), history
    with torch.no_grad():
        for _ in range(10):
            logits, state = model.next_logits(step_input, state, history)
            full, _ = model(history)
            assert torch.allclose(logits, full[:, -1], atol=1e-5)
            step_input = logits.argmax(-1, keepdim=True)
            history = torch.cat([history, step_input], dim=1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_tiny_rnn_overfits_one_batch(cell):
    torch.manual_seed(0)
    model = CharRNN(CharRNNConfig(cell=cell, n_layer=1, n_embd=16, hidden_size=64, dropout=0.0, vocab_size=10))
    x = torch.randint(10, (4, 12))
    y = torch.roll(x, -1, dims=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_future_token_does_not_change_earlier_logits():
    torch.manual_seed(0)
    model = CharRNN(CharRNNConfig(n_embd=8, hidden_size=16, vocab_size=7, dropout=0.0)).eval()
    idx = torch.randint(7, (1, 10))
    changed = idx.clone()
    changed[0, 6] = (changed[0, 6] + 1) % 7
    with torch.no_grad():
        assert torch.allclose(model(idx)[0][:, :6], model(changed)[0][:, :6])
