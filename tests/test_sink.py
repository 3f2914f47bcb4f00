"""The content rule: pooling leaves out special tokens, the attention sink and norm outliers."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from steerlib.models.layers import get_decoder_layers
from steerlib.steer.activations import ResidualActivations, capture_residuals, content_mask
from steerlib.steer.diagnostics import dominated_layers, vector_diagnostics
from steerlib.steer.vectors import caa_from_texts, compute_caa

TOXIC = [
    "you are a stupid idiot and i hate you",
    "i hate you , you fool and moron",
    "what a bad moron you are , idiot",
    "you stupid fool , i hate your car",
]
NONTOXIC = [
    "the sun is nice today in the park",
    "we cook rice and bread with tea",
    "my friend and i walk in the park",
    "the cat and the dog eat food today",
]
PLANT_LAYER = 1


@contextmanager
def planted(model: torch.nn.Module, position: str, scale: float = 1e4) -> Iterator[None]:
    """Add a huge fixed vector to one position of the output of layer ``PLANT_LAYER``.

    ``position="first"``: each row's first real position (an attention sink, as real models
    make one); ``"third"``: the third real position (a sink elsewhere than the start).
    """
    layer = get_decoder_layers(model)[PLANT_LAYER]
    width = model.config.hidden_size
    direction = torch.linspace(-1.0, 1.0, width)
    state: dict[str, torch.Tensor] = {}

    def hook(module: torch.nn.Module, args: tuple, output: object) -> object:
        hidden = output[0] if isinstance(output, tuple) else output
        mask = state["real"]
        order = mask.long().cumsum(dim=1)
        target = (order == (1 if position == "first" else 3)) & mask
        hidden = hidden + target.unsqueeze(-1).to(hidden.dtype) * direction * scale
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def outer(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        state["real"] = kwargs["attention_mask"].bool()

    handles = [
        model.register_forward_pre_hook(outer, with_kwargs=True),
        layer.register_forward_hook(hook),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def test_content_mask_leaves_out_padding_first_position_and_specials():
    ids = torch.tensor([[0, 0, 7, 8, 2, 9], [7, 8, 9, 10, 11, 12]])
    attention = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    mask = content_mask(ids, attention, special_ids=[2])
    assert mask.tolist() == [
        [False, False, False, True, False, True],
        [False, True, True, True, True, True],
    ]


def test_first_position_sink_does_not_move_the_vector(llama, tokenizer):
    clean = caa_from_texts(llama, tokenizer, TOXIC, NONTOXIC, progress=False, project_sink=False)
    with planted(llama, "first"):
        sunk_acts = capture_residuals(llama, tokenizer, TOXIC, progress=False)
        sunk = caa_from_texts(llama, tokenizer, TOXIC, NONTOXIC, progress=False, project_sink=False)
    # At the planted layer, every content position is untouched: the vector is the same.
    torch.testing.assert_close(sunk[PLANT_LAYER], clean[PLANT_LAYER], rtol=1e-5, atol=1e-5)
    # The sink itself was seen (its mean state is recorded) but never pooled.
    assert float(sunk_acts.sink[PLANT_LAYER].norm()) > 1e3
    assert float(sunk_acts.token_norm[:, PLANT_LAYER].max()) < 1e3


def test_a_sink_elsewhere_is_left_out_by_the_outlier_rule(llama, tokenizer):
    with planted(llama, "third"):
        acts = capture_residuals(llama, tokenizer, TOXIC, progress=False)
        loose = capture_residuals(llama, tokenizer, TOXIC, progress=False, outlier_factor=math.inf)
    enc = tokenizer(TOXIC, return_tensors="pt", padding=True)
    with torch.inference_mode():
        states = llama(**enc, output_hidden_states=True).hidden_states[PLANT_LAYER + 1]
    real = enc["attention_mask"].bool()
    order = real.long().cumsum(dim=1)
    keep = real & (order > 1) & (order != 3)
    for row in range(len(TOXIC)):
        expected = states[row][keep[row]].mean(dim=0)
        torch.testing.assert_close(acts.pooled[row, PLANT_LAYER], expected, rtol=1e-4, atol=1e-4)
    # Without the rule the planted token takes over the window, and the diagnostics see it.
    assert float(loose.max_share[:, PLANT_LAYER].min()) > 0.9
    assert float(acts.max_share[:, PLANT_LAYER].max()) < 0.5


def test_a_dominated_vector_is_flagged_and_warned(llama, tokenizer):
    with planted(llama, "third"):
        toxic = capture_residuals(llama, tokenizer, TOXIC, progress=False, outlier_factor=math.inf)
        nontoxic = capture_residuals(
            llama, tokenizer, NONTOXIC, progress=False, outlier_factor=math.inf
        )
        with pytest.warns(UserWarning, match=r"layer\(s\) \[1"):
            vector = compute_caa(toxic, nontoxic)
    assert PLANT_LAYER in dominated_layers(vector.diagnostics())
    clean = caa_from_texts(llama, tokenizer, TOXIC, NONTOXIC, progress=False)
    assert dominated_layers(clean.diagnostics()) == []


def test_diagnostics_by_hand():
    torch.manual_seed(0)
    sink = torch.zeros(2, 4)
    sink[:, 0] = 100.0

    def acts(pooled: torch.Tensor, tokens: float) -> ResidualActivations:
        n = pooled.shape[0]
        return ResidualActivations(
            pooled=pooled,
            token_norm=pooled.norm(dim=-1),
            layers=[0, 1],
            last_n=32,
            sink=sink,
            median_norm=torch.full((n, 2), 10.0),
            n_tokens=torch.full((n,), tokens),
            max_share=torch.full((n, 2), 0.05),
        )

    base = torch.randn(6, 2, 4) * 0.01
    shift = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 4.0]])
    records = vector_diagnostics(acts(base + shift, 20.0), acts(base, 18.0), seed=1)
    first, second = records
    assert first["sink_cosine"] == pytest.approx(1 / math.sqrt(5), abs=1e-2)
    assert second["sink_cosine"] == pytest.approx(0.0, abs=1e-2)
    assert second["norm"] == pytest.approx(5.0, abs=1e-2)
    assert second["norm_ratio"] == pytest.approx(0.5, abs=1e-2)
    assert first["split_half_cosine"] > 0.99  # the same shift in both halves
    assert first["toxic_tokens"] == 20.0 and first["nontoxic_tokens"] == 18.0
    assert not any(r["dominated"] for r in records)
    projected = vector_diagnostics(acts(base + shift, 20.0), acts(base, 18.0), project_sink=True)
    assert projected[0]["sink_cosine"] == pytest.approx(0.0, abs=1e-5)
    assert projected[0]["sink_cosine_raw"] == pytest.approx(first["sink_cosine"], abs=1e-6)
    assert projected[0]["sink_share"] == pytest.approx(1 - 2 / math.sqrt(5), abs=1e-2)


def test_activations_saved_before_the_rule_still_build_a_vector(llama, tokenizer, tmp_path):
    acts = capture_residuals(llama, tokenizer, TOXIC, progress=False)
    old = ResidualActivations(acts.pooled, acts.token_norm, acts.layers, acts.last_n)
    old.save(tmp_path / "old.safetensors")
    again = ResidualActivations.load(tmp_path / "old.safetensors")
    assert again.sink is None and again.max_share is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vector = compute_caa(again, again)
    assert not vector.provenance["sink_projected"]
    assert math.isnan(vector.diagnostics()[0]["sink_cosine"])


def test_a_text_of_one_token_is_refused(llama, tokenizer):
    from steerlib.errors import DataError

    with pytest.raises(DataError, match="no content token"):
        capture_residuals(llama, tokenizer, ["idiot", "you are a fool"], progress=False)
