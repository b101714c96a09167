import math

import pytest
import torch

from jobs.gpt.config import ModelConfig
from jobs.gpt.model import GPT

CFG = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.0, bias=False, vocab_size=50)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(CFG).eval()


def test_shapes_and_loss(model):
    idx = torch.randint(0, 50, (3, 16))
    logits, loss = model(idx, torch.randint(0, 50, (3, 16)))
    assert logits.shape == (3, 16, 50)
    # An untrained model predicts roughly uniformly.
    assert abs(loss.item() - math.log(50)) < 0.3
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 50) and loss is None


def test_attention_is_causal(model):
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 50
    a, _ = model(idx, idx)
    b, _ = model(changed, changed)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_weight_tying_and_param_count(model):
    assert model.head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    c, v, t, layers = 32, 50, 16, 2
    per_block = 2 * c + 3 * c * c + c * c + 4 * c * c + 4 * c * c  # 2 LNs, qkv, proj, mlp
    expected = v * c + t * c + layers * per_block + c
    assert model.num_params() == expected
    assert model.num_params(include_position=False) == expected - t * c


def test_residual_projections_are_scaled_down():
    torch.manual_seed(0)
    big = GPT(ModelConfig(n_layer=8, n_head=2, n_embd=64, block_size=8, vocab_size=50))
    resid = big.blocks[0].mlp.proj.weight.std().item()
    plain = big.blocks[0].mlp.fc.weight.std().item()
    assert plain == pytest.approx(0.02, rel=0.1)
    assert resid == pytest.approx(0.02 / math.sqrt(16), rel=0.15)


def test_weight_decay_only_on_matrices(model):
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["params"] and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_generate_extends_beyond_block_size(model):
    out = model.generate(torch.zeros((1, 1), dtype=torch.long), 20, top_k=5,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 21)


def test_too_long_input_is_rejected(model):
    with pytest.raises(ValueError, match="^idx:"):
        model(torch.zeros((1, 17), dtype=torch.long))
