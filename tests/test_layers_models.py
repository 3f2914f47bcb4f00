from __future__ import annotations

import pytest
import torch
from torch import nn

from steerlib.errors import ConfigError, ModelError
from steerlib.models.layers import get_decoder_layers, hidden_size, num_layers, resolve_layers
from steerlib.models.loading import default_dtype, load_model, model_id, resolve_device


def test_layers_found_for_each_layout(llama, phi3, gpt2):
    assert get_decoder_layers(llama) is llama.model.layers
    assert get_decoder_layers(phi3) is phi3.model.layers
    assert get_decoder_layers(gpt2) is gpt2.transformer.h
    assert (num_layers(llama), num_layers(phi3), num_layers(gpt2)) == (4, 3, 2)
    assert hidden_size(llama) == hidden_size(gpt2) == 32


def test_unknown_layout_error_names_the_class():
    class Strange(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ModelError, match=r"Strange.*model\.layers.*attribute="):
        get_decoder_layers(Strange())
    assert len(get_decoder_layers(Strange(), "blocks")) == 1


def test_resolve_layers():
    assert resolve_layers(30, [-1, 18, 3, 18]) == [3, 18, 29]
    assert resolve_layers(4, "all") == [0, 1, 2, 3]
    assert resolve_layers(4, 2) == [2]
    with pytest.raises(ConfigError, match=r"layer 30 is out of range.*0\.\.29"):
        resolve_layers(30, 30)
    with pytest.raises(ConfigError, match="empty"):
        resolve_layers(30, [])
    with pytest.raises(ConfigError, match="integers"):
        resolve_layers(30, [1.5])
    with pytest.raises(ConfigError, match="'all'"):
        resolve_layers(30, "some")


def test_device_and_dtype_defaults():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device().type in {"cuda", "mps", "cpu"}
    assert default_dtype(torch.device("cpu")) == torch.float32
    assert default_dtype(torch.device("cuda")) == torch.bfloat16
    assert default_dtype(torch.device("mps")) == torch.float16


def test_load_model_from_local_phi3_folder(phi3_folder, phi3):
    model, tok = load_model(phi3_folder, device="cpu")
    assert type(model).__name__ == "Phi3ForCausalLM"
    assert model.config.partial_rotary_factor == 0.75
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert not model.training
    assert model_id(model) == str(phi3_folder)
    for name, tensor in phi3.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    half, _ = load_model(phi3_folder, device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16


def test_load_model_unknown_id_names_offline_default(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"no-such-org/no-such-model.*smollm2-135m-instruct"):
        load_model("no-such-org/no-such-model", device="cpu")
