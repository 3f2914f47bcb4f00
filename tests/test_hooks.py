from __future__ import annotations

import pytest
import torch

from steerlib.errors import ConfigError
from steerlib.models.layers import get_decoder_layers
from steerlib.steer.hooks import active_hook_count, steering
from steerlib.steer.vectors import SteeringVector

PROMPT = "the dog said you are a"


def _vector(hidden: int, layers: list[int], seed: int = 1, scale: float = 3.0) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return SteeringVector(
        {k: torch.randn(hidden, generator=gen) * scale for k in layers},
        {"model_id": "test"},
        dict.fromkeys(layers, 10.0),
    )


def _capture(model, layer: int, inputs) -> torch.Tensor:
    seen = {}

    def grab(module, args, output):
        seen["h"] = (output[0] if isinstance(output, tuple) else output).clone()

    handle = get_decoder_layers(model)[layer].register_forward_hook(grab)
    try:
        model(**inputs)
    finally:
        handle.remove()
    return seen["h"]


@pytest.mark.parametrize("name", ["llama", "phi3", "gpt2"])
def test_alpha_zero_is_identical_to_no_hook(request, tokenizer, name):
    model = request.getfixturevalue(name)
    inputs = tokenizer([PROMPT], return_tensors="pt")
    vector = _vector(32, [0, 1])
    with torch.inference_mode():
        plain = model(**inputs).logits
        with steering(model, vector, 0.0, layers=[0, 1]):
            steered = model(**inputs).logits
    assert torch.equal(plain, steered)
    assert active_hook_count(model) == 0


@pytest.mark.parametrize("name", ["llama", "phi3", "gpt2"])
def test_layer_output_is_shifted_by_minus_alpha_vector(request, tokenizer, name):
    model = request.getfixturevalue(name)
    inputs = tokenizer([PROMPT], return_tensors="pt")
    vector = _vector(32, [1])
    with torch.inference_mode():
        plain = _capture(model, 1, inputs)
        with steering(model, vector, 1.5, layers=1):
            steered = _capture(model, 1, inputs)
            logits = model(**inputs).logits
        unsteered_logits = model(**inputs).logits
    expected = plain - torch.tensor([1.5]).view(-1, 1, 1) * vector[1]
    assert torch.equal(steered, expected)
    assert not torch.allclose(logits, unsteered_logits)


def test_hooks_removed_after_exception(llama, tokenizer):
    inputs = tokenizer([PROMPT], return_tensors="pt")
    with pytest.raises(RuntimeError, match="boom"):
        with steering(llama, _vector(32, [0, 2]), 1.0, layers=[0, 2]):
            assert active_hook_count(llama) == 2
            llama(**inputs)
            raise RuntimeError("boom")
    assert active_hook_count(llama) == 0


def test_hooks_removed_when_a_hook_raises(llama, tokenizer):
    inputs = tokenizer([PROMPT, PROMPT], return_tensors="pt")
    with pytest.raises(ConfigError, match="alpha has 3 values but the batch has 2 rows"):
        with steering(llama, _vector(32, [1]), [0.0, 1.0, 2.0], layers=1):
            llama(**inputs)
    assert active_hook_count(llama) == 0


def _greedy(model, tokenizer, prompts, **kwargs):
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(
        **enc,
        max_new_tokens=8,
        min_new_tokens=8,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )
    return out.sequences[:, enc.input_ids.shape[1] :], torch.stack(out.logits, dim=1)


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_per_row_alphas_equal_single_alpha_runs(llama, tokenizer, positions):
    vector = _vector(32, [2], scale=2.0)
    alphas = [-1.0, 0.0, 1.5]
    with torch.inference_mode():
        with steering(llama, vector, alphas, layers=2, positions=positions):
            batched, batched_logits = _greedy(llama, tokenizer, [PROMPT] * 3)
        for row, alpha in enumerate(alphas):
            with steering(llama, vector, alpha, layers=2, positions=positions):
                single, single_logits = _greedy(llama, tokenizer, [PROMPT])
            assert torch.equal(batched[row], single[0]), alpha
            torch.testing.assert_close(batched_logits[row], single_logits[0], rtol=1e-5, atol=1e-5)
    # The sweep really changes the output: alpha -1 and 1.5 do not both match alpha 0.
    assert not (torch.equal(batched[0], batched[1]) and torch.equal(batched[2], batched[1]))


def test_generated_positions_with_cache_equal_no_cache(llama, tokenizer):
    vector = _vector(32, [1], scale=2.0)
    prompts = ["the dog said you are a", "hello world"]
    with torch.inference_mode():
        with steering(llama, vector, [1.0, -1.0], layers=1, positions="generated"):
            cached, cached_logits = _greedy(llama, tokenizer, prompts, use_cache=True)
        with steering(llama, vector, [1.0, -1.0], layers=1, positions="generated"):
            uncached, uncached_logits = _greedy(llama, tokenizer, prompts, use_cache=False)
        with steering(llama, vector, [1.0, -1.0], layers=1, positions="all"):
            _, all_logits = _greedy(llama, tokenizer, prompts)
        _, plain_logits = _greedy(llama, tokenizer, prompts)
    assert torch.equal(cached, uncached)
    torch.testing.assert_close(cached_logits, uncached_logits, rtol=1e-4, atol=1e-4)
    # The first new token comes from the prompt pass: unsteered in "generated" mode only.
    torch.testing.assert_close(cached_logits[:, 0], plain_logits[:, 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(all_logits[:, 0], plain_logits[:, 0])
    assert not torch.allclose(cached_logits[:, 1:], plain_logits[:, 1:])


def test_norm_units_scale_to_mean_norm(llama, tokenizer):
    inputs = tokenizer([PROMPT], return_tensors="pt")
    vector = _vector(32, [1])
    with torch.inference_mode():
        plain = _capture(llama, 1, inputs)
        with steering(llama, vector, 0.5, layers=1, units="norm"):
            steered = _capture(llama, 1, inputs)
    shift = (plain - steered)[0, 0]
    torch.testing.assert_close(shift.norm(), torch.tensor(0.5 * 10.0))
    cosine = torch.nn.functional.cosine_similarity(shift, vector[1], dim=0)
    assert cosine > 0.9999
    with pytest.raises(ConfigError, match="units='norm'"):
        with steering(llama, {1: vector[1]}, 0.5, layers=1, units="norm"):
            pass


def test_bad_arguments_are_rejected_before_hooks(llama):
    vector = _vector(32, [1])
    with pytest.raises(ConfigError, match="finite"):
        with steering(llama, vector, float("nan"), layers=1):
            pass
    with pytest.raises(ConfigError, match="no direction for layer"):
        with steering(llama, vector, 1.0, layers=2):
            pass
    with pytest.raises(ConfigError, match="positions"):
        with steering(llama, vector, 1.0, layers=1, positions="prompt"):
            pass
    with pytest.raises(ConfigError, match="out of range"):
        with steering(llama, torch.ones(32), 1.0, layers=9):
            pass
    assert active_hook_count(llama) == 0


def test_set_alpha_changes_the_shift(llama, tokenizer):
    inputs = tokenizer([PROMPT], return_tensors="pt")
    vector = _vector(32, [1])
    with torch.inference_mode():
        plain = _capture(llama, 1, inputs)
        with steering(llama, vector, 0.0, layers=1) as handle:
            same = _capture(llama, 1, inputs)
            handle.set_alpha(2.0)
            moved = _capture(llama, 1, inputs)
    assert torch.equal(plain, same)
    torch.testing.assert_close(moved, plain - 2.0 * vector[1])
