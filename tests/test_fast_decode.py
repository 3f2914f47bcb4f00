"""The sync-free decode step, its sampler, its static cache and the CUDA-graph option, on CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import make_gemma3, make_llama
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

import steerlib.generate.sampling as sampling
from steerlib.errors import ConfigError
from steerlib.generate.engine import DecodeOptions, decode_batch, run_sweep
from steerlib.generate.generation import model_cache, stop_token_ids
from steerlib.generate.kvcache import StaticLayer, static_cache
from steerlib.generate.sampling import sample_static
from steerlib.steer.vectors import SteeringVector

TEXTS = [
    "the dog said you are a",
    "hello",
    "we walk in the park and the cat is very",
    "you idiot",
    "what a nice day , i love",
]
SYNCED = DecodeOptions(sync_free=False)
SYNC_FREE = DecodeOptions(sync_free=True, check_every=3)


def _vector() -> SteeringVector:
    gen = torch.Generator().manual_seed(5)
    return SteeringVector({k: torch.randn(32, generator=gen) * 3 for k in (1, 2)}, {})


def _decode(model, tokenizer, options, *, temperature=0.0, seed=None, positions="all", **kw):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    kwargs = dict(
        vector=_vector(),
        layer=1,
        alphas=[-1.0, 0.0, 1.5],
        samples_per_prompt=2,
        max_new_tokens=10,
        temperature=temperature,
        top_p=0.9 if temperature else 1.0,
        positions=positions,
        units="raw",
        stop_ids=stop_token_ids(model, tokenizer),
        pad_id=tokenizer.pad_token_id,
    )
    kwargs.update(kw)
    with torch.inference_mode():
        return decode_batch(
            model,
            [tokenizer(t)["input_ids"] for t in TEXTS],
            generator=generator,
            options=options,
            **kwargs,
        )


def _warped_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    scores = TopPLogitsWarper(top_p=top_p)(None, scores)
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("top_k", [3, 40, 5000])
def test_static_sampler_draws_from_the_warper_distribution(monkeypatch, top_k):
    # Rows from peaked to flat: with a small top-k most rows need the full-sort fallback.
    gen = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.2, 6.0, 24)[:, None]
    logits = torch.randn(24, 500, generator=gen) * scale
    temperature, top_p = 0.7, 0.9
    expected = _warped_probs(logits, temperature, top_p)
    draws: list[torch.Tensor] = []

    def record(weights, generator):
        draws.append(weights.clone())
        return weights.argmax(-1, keepdim=True)

    monkeypatch.setattr(sampling, "_draw", record)
    _, overflow = sample_static(
        logits.clone(),
        temperature=temperature,
        top_p=top_p,
        generator=gen,
        top_k=top_k,
        sort_rows=24,
    )
    assert not bool(overflow)
    # Rebuild what each row was drawn from: its top-k candidates, or its full sort.
    probs, top_ids, covered, weights, _ = sampling.nucleus_candidates(
        logits.clone(), temperature=temperature, top_p=top_p, top_k=top_k
    )
    candidates = torch.zeros_like(logits).scatter(1, top_ids, draws[0])
    rows_sorted = probs.sum(-1).topk(24, largest=False).indices
    order = weights[rows_sorted].sort(dim=-1, descending=True).indices
    fallback = torch.zeros_like(logits)
    fallback[rows_sorted] = torch.zeros_like(draws[1]).scatter(1, order, draws[1])
    got = torch.where(covered[:, None], candidates, fallback)
    got = got / got.sum(-1, keepdim=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if top_k == 3:
        assert (~covered).sum() > 5, "the fallback path was not exercised"


def test_static_sampler_flags_overflow_and_draws_like_multinomial():
    gen = torch.Generator().manual_seed(1)
    flat = torch.randn(16, 300, generator=gen) * 0.01
    _, overflow = sample_static(
        flat.clone(), temperature=1.0, top_p=0.9, generator=gen, top_k=4, sort_rows=3
    )
    assert bool(overflow)
    weights = torch.rand(32, 50, generator=gen)
    a = sampling._draw(weights, torch.Generator().manual_seed(9)).squeeze(1)
    b = torch.multinomial(weights, 1, generator=torch.Generator().manual_seed(9)).squeeze(1)
    assert torch.equal(a, b)


def test_static_layer_keeps_its_buffers_and_writes_at_the_device_position(llama):
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.inference_mode():
        cache = model_cache(llama(input_ids=ids, use_cache=True))
        prefill = cache.layers[0].keys.clone()
        write_at = torch.tensor([4])
        assert static_cache(cache, capacity=9, write_at=write_at, repeats=3)
        layer = cache.layers[0]
        assert isinstance(layer, StaticLayer)
        pointer, shape = layer.keys.data_ptr(), tuple(layer.keys.shape)
        assert shape == (6, prefill.shape[1], 9, prefill.shape[3])
        assert torch.equal(layer.keys[0::3, :, :4], prefill)
        assert not layer.keys[:, :, 4:].any()
        new = torch.ones(6, prefill.shape[1], 1, prefill.shape[3])
        keys, _ = layer.update(new, new)
        assert keys.data_ptr() == pointer and tuple(keys.shape) == shape
        assert torch.equal(keys[:, :, 4], new[:, :, 0]) and not keys[:, :, 5:].any()


@pytest.mark.parametrize("positions", ["all", "generated"])
@pytest.mark.parametrize("name", ["llama", "phi3", "gpt2"])
def test_sync_free_greedy_equals_the_synced_step(request, monkeypatch, tokenizer, name, positions):
    import steerlib.generate.loops as engine

    model = request.getfixturevalue(name)
    synced = _decode(model, tokenizer, SYNCED, positions=positions)

    def refuse(**kwargs):
        raise AssertionError("the sync-free path fell back to the synced loop")

    monkeypatch.setattr(engine, "_synced_loop", refuse)
    free = _decode(model, tokenizer, SYNC_FREE, positions=positions)
    assert torch.equal(synced, free)


@pytest.mark.parametrize("window", [6, 64])
def test_gemma3_sync_free_equals_the_synced_step(monkeypatch, tokenizer, window):
    """A window longer than the decode takes the static cache; a shorter one falls back."""
    import steerlib.generate.loops as engine

    model = make_gemma3(tokenizer, sliding_window=window)
    synced = _decode(model, tokenizer, SYNCED)
    calls = []
    original = engine._synced_loop

    def spy(**kwargs):
        calls.append(1)
        return original(**kwargs)

    monkeypatch.setattr(engine, "_synced_loop", spy)
    free = _decode(model, tokenizer, SYNC_FREE)
    assert torch.equal(synced, free)
    assert bool(calls) == (window < 10 + max(len(tokenizer(t)["input_ids"]) for t in TEXTS))


def test_sync_free_masks_rows_that_stop_like_the_synced_step_drops_them(tokenizer):
    model = make_llama(tokenizer, seed=3)
    plain = _decode(model, tokenizer, SYNCED)
    values, counts = plain[:, :6].flatten().unique(return_counts=True)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, int(values[counts.argmax()])]
    synced = _decode(model, tokenizer, SYNCED)
    free = _decode(model, tokenizer, SYNC_FREE)
    assert torch.equal(synced, free)
    assert (free == tokenizer.pad_token_id).any(), "no row stopped early"


def test_sync_free_sampling_overflow_redoes_the_batch_on_the_synced_path(llama, tokenizer):
    # No full sort allowed and a top-k of one token: every sampled step overflows, so the
    # batch is decoded again on the synced path from the same generator state.
    forced = DecodeOptions(sync_free=True, top_k=1, sort_rows=0)
    synced = _decode(llama, tokenizer, SYNCED, temperature=1.0, seed=4)
    free = _decode(llama, tokenizer, forced, temperature=1.0, seed=4)
    assert torch.equal(synced, free)


def test_sync_free_sampling_repeats_with_a_seed_and_cuda_graphs_are_a_cpu_no_op(llama, tokenizer):
    on = DecodeOptions(sync_free=True, cuda_graphs=True)
    off = DecodeOptions(sync_free=True, cuda_graphs=False)
    assert on.resolve(torch.device("cpu")) == (True, False)
    assert DecodeOptions().resolve(torch.device("cpu")) == (False, False)
    assert DecodeOptions().resolve(torch.device("cuda")) == (True, True)
    assert DecodeOptions(sync_free=False, cuda_graphs=True).resolve(torch.device("cuda")) == (
        False,
        False,
    )
    a = _decode(llama, tokenizer, on, temperature=1.0, seed=2)
    b = _decode(llama, tokenizer, off, temperature=1.0, seed=2)
    c = _decode(llama, tokenizer, off, temperature=1.0, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (len(TEXTS) * 3 * 2, 10)


def test_run_sweep_takes_decode_options(llama, tokenizer):
    import pandas as pd

    prompts = pd.DataFrame({"prompt_id": ["a", "b"], "prompt": TEXTS[:2]})
    kwargs = dict(layers=[1], alphas=[0.0, 1.0], max_new_tokens=5, temperature=0.0)
    synced = run_sweep(llama, tokenizer, prompts, {"caa": _vector()}, decode=SYNCED, **kwargs)
    free = run_sweep(llama, tokenizer, prompts, {"caa": _vector()}, decode=SYNC_FREE, **kwargs)
    pd.testing.assert_frame_equal(synced, free)
    with pytest.raises(ConfigError, match="sync_free"):
        DecodeOptions(sync_free="yes")  # type: ignore[arg-type]
