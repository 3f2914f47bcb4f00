"""A teacher-forced steered pass from the first steered layer on equals the whole pass."""

from __future__ import annotations

import pytest
import torch

from steerlib.errors import ConfigError, ModelError
from steerlib.evaluate.benign_pass import (
    base_log_probs,
    judge,
    kept_residual,
    steered_log_probs,
    text_batches,
    unsteered_nll,
)
from steerlib.models.layers import get_decoder_layers
from steerlib.models.partial import keeping, layer_output, replayed_below
from steerlib.steer.gate import Gate
from steerlib.steer.operators import OPERATORS
from steerlib.steer.steering import Steering

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "you are",
    "a longer text about the weather, the sea and the mountains far away",
]
ALPHAS = [-1.0, 0.5, 2.0]


def _batch(model, tokenizer, teacher_forced=False):
    device = next(model.parameters()).device
    (batch,) = text_batches(
        tokenizer,
        TEXTS,
        device=device,
        prefixes=["the quick", None, "a longer text"] if teacher_forced else None,
        teacher_forced=teacher_forced,
        batch_size=len(TEXTS),
    )
    return batch


def _vector(model, seed=1):
    hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else 32
    return torch.randn(hidden, generator=torch.Generator().manual_seed(seed))


def _tuple_model(name: str, tokenizer):
    """A tiny model whose decoder layers return tuples (Bloom, Falcon)."""
    from transformers import BloomConfig, BloomForCausalLM, FalconConfig, FalconForCausalLM

    torch.manual_seed(0)
    common = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    if name == "bloom":
        config = BloomConfig(hidden_size=32, n_layer=3, n_head=4, initializer_range=0.2, **common)
        return BloomForCausalLM(config).eval()
    config = FalconConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        new_decoder_architecture=False,
        initializer_range=0.2,
        **common,
    )
    return FalconForCausalLM(config).eval()


@pytest.mark.parametrize("name", ["llama", "phi3", "gemma3", "gpt2", "bloom", "falcon"])
def test_replayed_pass_equals_the_whole_pass(name, request, tokenizer):
    if name in ("bloom", "falcon"):
        model = _tuple_model(name, tokenizer)
        layer = get_decoder_layers(model)[0]
        assert layer.__class__.__name__.startswith(("Bloom", "Falcon"))
    else:
        model = request.getfixturevalue(name)
    n_layers = len(get_decoder_layers(model))
    for teacher_forced in (False, True):
        batch = _batch(model, tokenizer, teacher_forced)
        for start in range(1, n_layers):
            steering = Steering.plain(_vector(model), start)
            whole = steered_log_probs(model, steering, batch.ids, batch.mask, ALPHAS, batch.first)
            kept = layer_output(model, start, input_ids=batch.ids, attention_mask=batch.mask)
            part = steered_log_probs(
                model, steering, batch.ids, batch.mask, ALPHAS, batch.first, kept
            )
            real = batch.mask.bool()[None, :, :, None].expand_as(whole)
            gap = (whole - part)[real].abs().max().item()
            assert gap < 1e-5, (name, start, teacher_forced, gap)
            # the steering is not lost: the alphas still differ from one another
            assert (part[0] - part[2])[real[0]].abs().max() > 1e-3


@pytest.mark.parametrize("name", ["llama", "phi3", "gemma3", "gpt2", "bloom", "falcon"])
def test_residual_kept_during_the_unsteered_pass_equals_its_own_pass(name, request, tokenizer):
    if name in ("bloom", "falcon"):
        model = _tuple_model(name, tokenizer)
    else:
        model = request.getfixturevalue(name)
    n_layers = len(get_decoder_layers(model))
    hooks_before = [len(layer._forward_hooks) for layer in get_decoder_layers(model)]
    batch = _batch(model, tokenizer)
    starts = list(range(1, n_layers))
    with torch.inference_mode():
        with keeping(model, starts) as kept:
            logits = model(input_ids=batch.ids, attention_mask=batch.mask).logits
        alone = model(input_ids=batch.ids, attention_mask=batch.mask).logits
    assert torch.equal(logits, alone)  # keeping changes nothing in the pass
    assert sorted(kept) == starts
    for start in starts:
        own = layer_output(model, start, input_ids=batch.ids, attention_mask=batch.mask)
        assert torch.equal(kept[start].hidden, own.hidden), (name, start)
        assert kept[start].as_tuple == own.as_tuple and kept[start].made_by(model)
    # keeping's hooks are gone (the session's model may carry others' hooks)
    assert [len(layer._forward_hooks) for layer in get_decoder_layers(model)] == hooks_before


def test_judge_after_the_unsteered_pass_runs_no_layer_below_again(llama, tokenizer):
    batch = _batch(llama, tokenizer)
    layers = get_decoder_layers(llama)
    steering = Steering.plain(_vector(llama), 2)
    calls = [0] * len(layers)
    handles = [
        layer.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
        for k, layer in enumerate(layers)
    ]
    try:
        with torch.inference_mode():
            base = base_log_probs(llama, batch, keep_for=[steering])
            assert calls == [1, 1, 1, 1] and list(batch.residuals) == [2]
            kl, _ = judge(llama, batch, base, steering, ALPHAS, unsteered_nll(batch, base))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [1, 1, 2, 2]  # the steered pass: layers 2 and 3 only, nothing below again
    with torch.inference_mode():
        whole = steered_log_probs(llama, steering, batch.ids, batch.mask, ALPHAS, None)
    expected = ((base.exp() * (base - whole)).sum(-1) * batch.real).sum(-1).numpy()
    assert abs(kl - expected).max() < 1e-4


def test_layers_below_do_not_run_and_come_back(llama, tokenizer):
    batch = _batch(llama, tokenizer)
    layers = get_decoder_layers(llama)
    originals = list(layers)
    calls = [0] * len(layers)
    handles = [
        layer.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1))
        for k, layer in enumerate(layers)
    ]
    try:
        kept = layer_output(llama, 2, input_ids=batch.ids, attention_mask=batch.mask)
        assert calls == [1, 1, 0, 0]  # the residual entering layer 2: layers 0 and 1 only
        steering = Steering.plain(_vector(llama), 2)
        steered_log_probs(llama, steering, batch.ids, batch.mask, ALPHAS, None, kept)
        assert calls == [1, 1, 1, 1]  # the steered pass ran layers 2 and 3 only
        with pytest.raises(RuntimeError, match="inside"), replayed_below(llama, kept):
            assert layers[0] is not originals[0]
            raise RuntimeError("inside")
    finally:
        for handle in handles:
            handle.remove()
    assert list(layers) == originals  # the real layers are back, after an error too


def test_layer_zero_has_no_kept_residual(llama, tokenizer):
    batch = _batch(llama, tokenizer)
    with pytest.raises(ConfigError, match="layer 0 takes the embeddings"):
        layer_output(llama, 0, input_ids=batch.ids, attention_mask=batch.mask)
    assert kept_residual(llama, batch, Steering.plain(_vector(llama), 0)) is None
    assert not batch.residuals


@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_judge_keeps_one_residual_and_matches_the_whole_pass(operator, llama, tokenizer):
    """Every operator, through ``judge`` (the search's and the KL pass's path)."""
    batch = _batch(llama, tokenizer)
    op = OPERATORS[operator]
    vector = _vector(llama)
    steering = Steering(
        vector / vector.norm(),
        (1, 2) if op.multilayer else (2,),
        op,
        clamp_offsets={1: 0.1, 2: 0.1} if op.needs_clamp_levels else None,
        gate=Gate(weight=vector, bias=0.0) if op.needs_probe else None,
    )
    alphas = [0.0, 0.3, 0.9] if op.alpha_range is not None else [0.0, -1.0, 2.0]
    with torch.inference_mode():
        logits = llama(input_ids=batch.ids, attention_mask=batch.mask).logits
        base = torch.log_softmax(logits.float(), -1)
        kl, nll = judge(llama, batch, base, steering, alphas, unsteered_nll(batch, base))
        assert list(batch.residuals) == [min(steering.layers)]
        whole = steered_log_probs(llama, steering, batch.ids, batch.mask, alphas[1:], batch.first)
    token_kl = (base.exp() * (base - whole)).sum(-1)
    expected = (token_kl * batch.real).sum(-1).numpy()
    assert kl[0].tolist() == [0.0] * len(TEXTS)
    assert abs(kl[1:] - expected).max() < 1e-4
    assert (kl[1:] > 0).all()
    assert nll.shape == (len(alphas), len(TEXTS))


def test_a_residual_over_the_cap_is_used_but_not_kept(llama, tokenizer, monkeypatch):
    from steerlib.evaluate import benign_pass

    batch = _batch(llama, tokenizer)
    steering = Steering.plain(_vector(llama), 2)
    monkeypatch.setattr(benign_pass, "RESIDUAL_KEEP_BYTES", 0)
    kept = kept_residual(llama, batch, steering)
    assert kept is not None and kept.layer == 2 and not batch.residuals
    monkeypatch.setattr(benign_pass, "RESIDUAL_KEEP_BYTES", kept.nbytes)
    again = kept_residual(llama, batch, steering)
    assert again is not None and torch.equal(again.hidden, kept.hidden)
    assert batch.residuals == {2: again}


def test_a_residual_from_another_model_or_batch_is_not_used(llama, tokenizer):
    from conftest import make_llama

    batch = _batch(llama, tokenizer)
    steering = Steering.plain(_vector(llama), 2)
    kept = kept_residual(llama, batch, steering)
    assert kept is not None and kept.made_by(llama)
    other = make_llama(tokenizer, seed=1)
    assert not kept.made_by(other)
    remade = kept_residual(other, batch, steering)
    assert remade is not None and remade.made_by(other)
    assert not torch.equal(remade.hidden, kept.hidden)
    # the batch now holds the other model's residual; a pass of another batch refuses it
    short = _batch(llama, tokenizer)
    short_ids, short_mask = short.ids[:2], short.mask[:2]
    with pytest.raises(ModelError, match="replay a residual only with copies"):
        steered_log_probs(other, steering, short_ids, short_mask, ALPHAS, None, remade)
