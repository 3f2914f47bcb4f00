"""Batch sizes from device memory, and random models of real shapes (all on CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig

from steerlib.errors import ModelError
from steerlib.generate.sizing import (
    CPU_MAX_BATCH_ROWS,
    CPU_TOKENS_PER_UNIT,
    choose_sizes,
    kv_bytes_per_token,
    sizes_for_memory,
)
from steerlib.models.random_init import (
    calibrate_logit_scale,
    load_random_model,
    nucleus_sizes,
    random_config,
    scale_logits,
)


def test_kv_bytes_per_token(llama):
    config = llama.config
    head_dim = config.hidden_size // config.num_attention_heads
    expected = config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * 4
    assert kv_bytes_per_token(llama) == expected


def test_sizes_for_memory_fit_the_budget_and_grow_with_it():
    kwargs = dict(kv_bytes_per_token=131072, row_tokens=45, vocab_size=200064, max_new_tokens=20)
    small = sizes_for_memory(8 * 2**30, **kwargs)
    large = sizes_for_memory(120 * 2**30, **kwargs)
    for sizes, free in ((small, 8 * 2**30), (large, 120 * 2**30)):
        per_row = 131072 * 45 + 6 * 4 * 200064
        assert sizes.max_batch_rows * per_row <= 0.6 * free
        assert (sizes.max_batch_rows + 64) * per_row > 0.6 * free  # no more than a step short
        assert sizes.max_batch_rows % 64 == 0
        assert sizes.tokens_per_unit == sizes.max_batch_rows * 20
    assert large.max_batch_rows > 10 * small.max_batch_rows
    assert sizes_for_memory(2**40, **kwargs).max_batch_rows == 16384
    assert sizes_for_memory(2**20, **kwargs).max_batch_rows == 16


def test_choose_sizes_on_cpu_keeps_the_defaults_and_given_values_win(llama):
    cpu = choose_sizes(llama, row_tokens=40, max_new_tokens=20)
    assert (cpu.max_batch_rows, cpu.tokens_per_unit) == (CPU_MAX_BATCH_ROWS, CPU_TOKENS_PER_UNIT)
    fake = choose_sizes(llama, row_tokens=40, max_new_tokens=20, free_bytes=2**30)
    expected = sizes_for_memory(
        2**30,
        kv_bytes_per_token=kv_bytes_per_token(llama),
        row_tokens=40,
        vocab_size=llama.config.vocab_size,
        max_new_tokens=20,
    )
    assert fake == expected
    given = choose_sizes(llama, row_tokens=40, max_new_tokens=20, max_batch_rows=7)
    assert (given.max_batch_rows, given.tokens_per_unit) == (7, CPU_TOKENS_PER_UNIT)
    assert given.source.startswith("given")


def test_shipped_shapes_are_the_real_architectures():
    phi = random_config("random:phi-4-mini")
    assert type(phi).__name__ == "Phi3Config"
    assert (phi.hidden_size, phi.num_hidden_layers, phi.num_attention_heads) == (3072, 32, 24)
    assert (phi.num_key_value_heads, phi.intermediate_size, phi.vocab_size) == (8, 8192, 200064)
    assert phi.tie_word_embeddings and phi.rope_parameters["partial_rotary_factor"] == 0.75
    smol = random_config("random:smollm2-135m")
    assert type(smol).__name__ == "LlamaConfig"
    assert (smol.hidden_size, smol.num_hidden_layers, smol.num_attention_heads) == (576, 30, 9)
    assert (smol.num_key_value_heads, smol.intermediate_size, smol.vocab_size) == (3, 1536, 49152)
    with pytest.raises(ModelError, match="random:phi-4-mini"):
        random_config("random:nope")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-config")
    LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer) + 20,
        tie_word_embeddings=True,
    ).save_pretrained(folder)
    return folder / "config.json"


def test_random_model_is_seeded_tied_and_scales_its_logits(tiny_config, tokenizer):
    name = f"random:{tiny_config}"
    model, _ = load_random_model(name, torch.device("cpu"), torch.float32, tokenizer=tokenizer)
    again, _ = load_random_model(name, torch.device("cpu"), torch.float32, tokenizer=tokenizer)
    other, _ = load_random_model(
        name, torch.device("cpu"), torch.float32, seed=1, tokenizer=tokenizer
    )
    weight = model.model.layers[1].mlp.up_proj.weight
    assert torch.equal(weight, again.model.layers[1].mlp.up_proj.weight)
    assert not torch.equal(weight, other.model.layers[1].mlp.up_proj.weight)
    assert abs(float(weight.std()) - 0.02) < 0.005
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.model.norm.weight, torch.ones(32))
    head_dim = 32 // 4
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, inv_freq)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        scale_logits(model, 3.0)
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, 3.0 * before, rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelError, match="positive"):
        scale_logits(model, -1.0)


def test_calibrated_scale_gives_the_target_nucleus():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5000, generator=gen) * 0.5
    assert float(nucleus_sizes(logits, 0.7, 0.9).median()) > 1000
    scale = calibrate_logit_scale(logits, temperature=0.7, top_p=0.9, target=20)
    median = float(nucleus_sizes(logits * scale, 0.7, 0.9).median())
    assert 10 <= median <= 20 and math.isfinite(scale) and scale > 1


@pytest.mark.slow
def test_random_smollm2_with_the_embedded_tokenizer():
    from steerlib.models.loading import load_model

    model, tokenizer = load_model("random:smollm2-135m", "cpu")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert len(tokenizer) <= model.config.vocab_size
    ids = tokenizer(["hello there"], return_tensors="pt")
    with torch.inference_mode():
        assert model(**ids).logits.shape[-1] == 49152
