"""The four from-scratch text classifiers: padding invariance, row independence, learning, loss, config errors."""

import pytest
import torch
import torch.nn.functional as F

from nanonlp.errors import ConfigError, NanoNLPError
from nanonlp.models.bag_of_ngrams import BagOfNgrams, BagOfNgramsConfig
from nanonlp.models.bilstm import BiLSTMClassifier, BiLSTMConfig
from nanonlp.models.text_cnn import TextCNN, TextCNNConfig
from nanonlp.models.transformer_classifier import TransformerClassifier, TransformerClassifierConfig

VOCAB, CLASSES, PAD = 12, 3, 1  # a padding id other than 0, so nothing may assume pad_id == 0


def build(family: str, dropout: float = 0.0, num_classes: int = CLASSES):
    derived = dict(vocab_size=VOCAB, num_classes=num_classes, pad_id=PAD)
    if family == "bag_of_ngrams":
        config = BagOfNgramsConfig(n_embd=16, dropout=dropout, **derived)
        model_cls = BagOfNgrams
    elif family == "text_cnn":
        config = TextCNNConfig(n_embd=16, kernel_sizes="2,3,5", num_filters=8, dropout=dropout, **derived)
        model_cls = TextCNN
    elif family.startswith("bilstm"):
        pooling = family.split("-")[1]
        config = BiLSTMConfig(n_embd=16, hidden_size=16, n_layer=2, pooling=pooling, attention_size=8,
                              dropout=dropout, **derived)
        model_cls = BiLSTMClassifier
    else:
        pooling = family.split("-")[1]
        config = TransformerClassifierConfig(max_length=16, n_layer=2, n_head=2, n_embd=16, dropout=dropout,
                                             pooling=pooling, **derived)
        model_cls = TransformerClassifier
    config.validate()
    return model_cls(config)


FAMILIES = ["bag_of_ngrams", "text_cnn", "bilstm-max", "bilstm-attention", "transformer-mean", "transformer-cls"]


def padded_batch(lengths: list[int], width: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random real tokens (ids 2..VOCAB-1) followed by PAD, and the matching 1/0 mask."""
    ids = torch.randint(2, VOCAB, (len(lengths), width), generator=generator)
    mask = (torch.arange(width) < torch.tensor(lengths).unsqueeze(1)).long()
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize("family", FAMILIES)
def test_appended_padding_leaves_logits_unchanged(family):
    torch.manual_seed(0)
    model = build(family, dropout=0.3).eval()
    # lengths 1 and 2 are shorter than TextCNN's widest kernel (5)
    ids, mask = padded_batch([7, 3, 1, 5, 2], width=7, generator=torch.Generator().manual_seed(1))
    more_ids = torch.cat([ids, torch.full((5, 6), PAD)], dim=1)
    more_mask = torch.cat([mask, torch.zeros(5, 6, dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits, _ = model(ids, mask)
        padded, _ = model(more_ids, more_mask)
        # the mask decides what is padding, not the id sitting there
        other_ids = more_ids.masked_fill(more_mask == 0, 7)
        garbage, _ = model(other_ids, more_mask)
    assert logits.shape == (5, CLASSES)
    torch.testing.assert_close(padded, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(garbage, logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_row_scores_as_if_alone(family):
    torch.manual_seed(0)
    model = build(family).eval()
    lengths = [6, 1, 4, 2]
    ids, mask = padded_batch(lengths, width=6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, _ = model(ids, mask)
        for row, length in enumerate(lengths):
            alone, _ = model(ids[row : row + 1, :length], mask[row : row + 1, :length])
            torch.testing.assert_close(alone[0], logits[row], atol=1e-5, rtol=0)


def toy_set(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """40 sequences of 2..9 tokens: class 1 if token 4 appears, class 0 if token 3 does; fillers are 5..11."""
    n, width = 40, 9
    lengths = torch.randint(2, width + 1, (n,), generator=generator)
    ids, mask = padded_batch(lengths.tolist(), width, generator)
    ids = torch.where(ids < 5, ids + 5, ids)  # fillers only, before the signal goes in
    ids = ids.masked_fill(mask == 0, PAD)
    labels = torch.arange(n) % 2
    where = (torch.rand(n, generator=generator) * lengths).long()  # one signal token at a random real position
    ids[torch.arange(n), where] = 3 + labels
    return ids, mask, labels


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_learns_a_separable_toy_set(family):
    torch.manual_seed(0)
    model = build(family, dropout=0.1, num_classes=2)
    ids, mask, labels = toy_set(torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    accuracy = 0.0
    for step in range(300):
        model.train()
        _, loss = model(ids, mask, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                accuracy = (model(ids, mask)[0].argmax(-1) == labels).float().mean().item()
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"{family} reached {accuracy:.0%} training accuracy after {step + 1} steps"


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_is_cross_entropy_of_the_logits(family):
    torch.manual_seed(0)
    model = build(family).eval()
    ids, mask = padded_batch([5, 2, 4], width=5, generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([2, 0, 1])
    logits, loss = model(ids, mask, targets)
    assert loss.shape == ()
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets))
    assert model(ids, mask)[1] is None


@pytest.mark.parametrize(
    "config, key",
    [
        (BagOfNgramsConfig(n_embd=0), "model.n_embd"),
        (TextCNNConfig(kernel_sizes="3,four,5"), "model.kernel_sizes"),
        (TextCNNConfig(kernel_sizes="0,3"), "model.kernel_sizes"),
        (BiLSTMConfig(pooling="mean"), "model.pooling"),
        (BiLSTMConfig(dropout=1.0), "model.dropout"),
        (TransformerClassifierConfig(n_embd=30, n_head=4), "model.n_embd"),
        (TransformerClassifierConfig(pooling="max"), "model.pooling"),
    ],
)
def test_bad_config_names_the_key(config, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.validate()


def test_default_configs_are_valid():
    for config in (BagOfNgramsConfig(), TextCNNConfig(), BiLSTMConfig(), TransformerClassifierConfig()):
        config.validate()
    assert TextCNNConfig().widths() == [3, 4, 5]


def test_model_needs_the_derived_fields():
    with pytest.raises(NanoNLPError, match="vocab_size"):
        TextCNN(TextCNNConfig())
    with pytest.raises(NanoNLPError, match="pad_id"):
        BiLSTMClassifier(BiLSTMConfig(vocab_size=5, num_classes=2, pad_id=5))


def test_transformer_rejects_input_longer_than_max_length():
    model = build("transformer-mean")
    ids = torch.full((2, 17), 3)
    with pytest.raises(NanoNLPError, match="max_length 16"):
        model(ids, torch.ones_like(ids))
