"""The alpha explorer widget, driven programmatically on the tiny Llama."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from steerlib.errors import ConfigError, DataError
from steerlib.pipeline import Run
from steerlib.runs import RunPaths
from steerlib.vectors import SteeringVector
from steerlib.widgets import AlphaExplorer

LAYER = 2


class VowelScorer:
    """Deterministic fake scorer: the fraction of characters that are vowels."""

    name = "vowel-fraction"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([sum(c in "aeiou" for c in t) / max(len(t), 1) for t in texts])


class FailingScorer(VowelScorer):
    def score(self, texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("scorer <exploded>")


@pytest.fixture
def vector() -> SteeringVector:
    generator = torch.Generator().manual_seed(1)
    return SteeringVector(
        {1: torch.randn(32, generator=generator) * 5, LAYER: torch.randn(32, generator=generator)}
    )


def make_explorer(llama, tokenizer, vector, scorer=None, **kwargs) -> AlphaExplorer:
    options = {"layer": LAYER, "alpha": 0.0, "prompt": "you are a stupid", "max_new_tokens": 8}
    return AlphaExplorer(
        llama, tokenizer, vector * 5.0, scorer or VowelScorer(), **options | kwargs
    )


def test_button_generates_unsteered_and_steered_side_by_side(llama, tokenizer, vector):
    scorer = VowelScorer()
    explorer = make_explorer(llama, tokenizer, vector, scorer)
    assert explorer.last is None
    explorer.button.click()
    first = dict(explorer.last)
    assert first["alpha"] == 0.0 and first["layer"] == LAYER
    assert first["steered"] == first["unsteered"]
    assert first["steered"].strip()

    explorer.slider.value = 3.0
    explorer.button.click()
    steered = dict(explorer.last)
    assert steered["alpha"] == 3.0
    assert steered["unsteered"] == first["unsteered"]
    assert steered["unsteered_score"] == first["unsteered_score"]
    assert steered["steered"] != first["steered"]
    assert steered["steered_score"] != first["steered_score"]
    # both completions were scored together, in order
    assert scorer.calls[-1] == [steered["unsteered"], steered["steered"]]
    assert explorer.runs == 2

    page = explorer.output.value
    assert f"{steered['unsteered_score']:.3f}" in page
    assert f"{steered['steered_score']:.3f}" in page
    assert 'class="steerlib-steered-score"' in page and 'class="steerlib-steered-text"' in page
    assert 'data-run="2"' in page
    assert "alpha = 3.00" in page
    assert "Done" in explorer.status.value and not explorer.button.disabled


def test_negative_alpha_and_layer_menu(llama, tokenizer, vector):
    explorer = make_explorer(llama, tokenizer, vector)
    assert list(explorer.layer_menu.options) == [1, LAYER]
    explorer.slider.value = -2.0
    explorer.layer_menu.value = 1
    result = explorer.generate()
    assert result["layer"] == 1 and result["alpha"] == -2.0
    assert result["steered"] != result["unsteered"]


def test_text_is_escaped(llama, tokenizer, vector):
    explorer = make_explorer(llama, tokenizer, vector, prompt="you <b>are</b> & a stupid")
    explorer.button.click()
    page = explorer.output.value
    assert "you &lt;b&gt;are&lt;/b&gt; &amp; a stupid" in page
    assert "<b>are</b>" not in page


def test_errors_show_in_the_output_not_raised(llama, tokenizer, vector):
    explorer = make_explorer(llama, tokenizer, vector, FailingScorer())
    explorer.button.click()  # must not raise
    assert "steerlib-error" in explorer.output.value
    assert "scorer &lt;exploded&gt;" in explorer.output.value
    assert explorer.last is None and not explorer.button.disabled
    explorer.prompt_box.value = "   "
    with pytest.raises(ConfigError, match="prompt is empty"):
        explorer.generate()


def test_widget_layout_and_display(llama, tokenizer, vector):
    explorer = make_explorer(llama, tokenizer, vector, alpha=5.0, alpha_range=(-1.0, 2.0, 0.5))
    box = explorer.widget
    assert "steerlib-explorer" in box._dom_classes
    classes = {
        c for w in (explorer.slider, explorer.button, explorer.output) for c in w._dom_classes
    }
    assert {"steerlib-alpha", "steerlib-generate", "steerlib-output"} <= classes
    assert explorer.slider.max == 5.0 and explorer.slider.value == 5.0  # range widened
    assert explorer.slider.min == -1.0 and explorer.slider.step == 0.5
    assert explorer.button.description == "Generate"
    bundle = explorer._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == box.model_id


def test_bad_layer_is_refused(llama, tokenizer, vector):
    with pytest.raises(ConfigError, match="no direction for layer"):
        make_explorer(llama, tokenizer, vector, layers=[0, LAYER])
    with pytest.raises(ConfigError, match="not among"):
        make_explorer(llama, tokenizer, vector, layers=[1], layer=LAYER)


def test_from_run_missing_names_notebook_04(tmp_path: Path):
    with pytest.raises(DataError, match=r"04_vectors\.ipynb"):
        AlphaExplorer.from_run("nothing-here", runs_dir=tmp_path)


def _write_run(root: Path, vector: SteeringVector, **params) -> RunPaths:
    """A run made through the run API (the real writer of params.json)."""
    values = {
        "model": "unused-tiny",
        "scorer": "profanity-check",
        "layers": [LAYER],
        "prompt_format": "raw",
        "device": "cpu",
    }
    return Run.open("tiny", runs_dir=str(root), **values | params).paths


def test_from_run_with_params_and_vectors(tmp_path: Path, llama, tokenizer, vector):
    paths = _write_run(tmp_path, vector, positions="generated", seed=7, top_p=0.8)
    with pytest.raises(DataError, match=r"vectors\.safetensors"):
        AlphaExplorer.from_run("tiny", runs_dir=tmp_path)
    (vector * 5.0).save(paths.vectors)
    scorer = VowelScorer()
    explorer = AlphaExplorer.from_run(
        "tiny",
        runs_dir=tmp_path,
        model=llama,
        tokenizer=tokenizer,
        scorer=scorer,
        alpha=3.0,
        max_new_tokens=6,
        prompt="you are a stupid",
    )
    assert explorer.layer == LAYER  # the run's first steered layer
    assert list(explorer.layer_menu.options) == [1, LAYER]
    assert explorer.positions == "generated" and explorer.seed == 7 and explorer.top_p == 0.8
    assert explorer.temperature == 0.0
    explorer.button.click()
    assert explorer.last is not None and explorer.last["alpha"] == 3.0
    assert explorer.last["steered"] != explorer.last["unsteered"]
    assert "steerlib-error" not in explorer.output.value


def test_from_run_env_runs_dir_and_explicit_layer(tmp_path, monkeypatch, llama, tokenizer, vector):
    paths = _write_run(tmp_path, vector)
    vector.save(paths.vectors)
    monkeypatch.setenv("STEERLIB_RUNS_DIR", str(tmp_path))
    explorer = AlphaExplorer.from_run(
        "tiny", model=llama, tokenizer=tokenizer, scorer=VowelScorer(), layer=1
    )
    assert explorer.layer == 1
    with pytest.raises(ConfigError, match="model and tokenizer"):
        AlphaExplorer.from_run("tiny", model=llama, scorer=VowelScorer())


def test_from_run_bad_params_name_the_parameter(tmp_path, llama, tokenizer, vector):
    paths = _write_run(tmp_path, vector)
    # A record this version refuses (written by hand-edit or another version), through the
    # run record's writer.
    paths.write_params({**paths.stored_params(), "layers": "every"})
    vector.save(paths.vectors)
    with pytest.raises(ConfigError, match="layers"):
        AlphaExplorer.from_run("tiny", runs_dir=tmp_path, model=llama, tokenizer=tokenizer)
