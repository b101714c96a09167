from dataclasses import replace

import pytest
import torch

from jobs.gpt.config import load_config
from jobs.gpt.model import GPT
from jobs.gpt.precision import (
    DeviceError,
    activation_bytes_per_sample,
    choose_micro_batch,
    choose_precision,
    resolve_device,
)

GB = 2**30


@pytest.mark.parametrize(
    "device, cc, dtype, scaler, compiled",
    [
        ("cpu", None, "float32", False, False),
        ("cuda", (5, 2), "float32", False, False),  # Maxwell
        ("cuda", (6, 1), "float32", False, False),  # GTX 1060
        ("cuda", (7, 0), "float16", True, True),  # V100
        ("cuda", (7, 5), "float16", True, True),  # T4 / RTX 20xx
        ("cuda", (8, 6), "bfloat16", False, True),  # RTX 30xx
        ("cuda", (9, 0), "bfloat16", False, True),  # H100
    ],
)
def test_precision_table(device, cc, dtype, scaler, compiled):
    p = choose_precision(device, cc)
    assert (p.dtype, p.grad_scaler, p.compile) == (dtype, scaler, compiled)


def test_precision_explicit_requests():
    assert choose_precision("cuda", (8, 6), dtype="float32").dtype == "float32"
    assert choose_precision("cuda", (8, 6), compile=False).compile is False
    assert choose_precision("cpu", None, compile=True).compile is True
    with pytest.raises(DeviceError, match="^dtype:"):
        choose_precision("cuda", (7, 5), dtype="bfloat16")
    with pytest.raises(DeviceError, match="^compile:"):
        choose_precision("cuda", (6, 1), compile=True)
    with pytest.raises(DeviceError, match="^dtype:"):
        choose_precision("cpu", None, dtype="float16")


def _gpu_preset():
    cfg = load_config("shakespeare-char")
    model_cfg = replace(cfg.model, vocab_size=65)
    return cfg, model_cfg, GPT(model_cfg).num_params()


def test_small_card_trains_gpu_preset_by_accumulating():
    cfg, model_cfg, n_params = _gpu_preset()
    p = choose_precision("cuda", (6, 1))  # GTX 1060 3 GB: fp32
    micro, accum = choose_micro_batch(model_cfg, cfg.train, p, int(2.6 * GB), n_params)
    assert micro * accum == cfg.train.batch_size
    assert 1 <= micro < cfg.train.batch_size
    used = 16 * n_params + micro * activation_bytes_per_sample(model_cfg, p)
    assert used < 2.6 * GB


def test_big_card_and_cpu_use_whole_batch():
    cfg, model_cfg, n_params = _gpu_preset()
    assert choose_micro_batch(model_cfg, cfg.train, choose_precision("cuda", (8, 6)), 70 * GB, n_params) == (64, 1)
    assert choose_micro_batch(model_cfg, cfg.train, choose_precision("cpu", None), None, n_params) == (64, 1)
    # Nearly no memory: still a valid (if slow) split rather than a crash here.
    assert choose_micro_batch(model_cfg, cfg.train, choose_precision("cuda", (6, 1)), 300 * 2**20, n_params) == (1, 64)


def test_configured_micro_batch_wins():
    cfg = load_config("shakespeare-char", overrides={"micro_batch_size": 8})
    model_cfg = replace(cfg.model, vocab_size=65)
    assert choose_micro_batch(model_cfg, cfg.train, choose_precision("cuda", (8, 6)), 70 * GB, 1) == (8, 8)


def test_resolve_device_errors():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(DeviceError, match="^device:"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="^device: cuda requested"):
            resolve_device("cuda")
