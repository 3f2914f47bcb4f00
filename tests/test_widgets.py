"""The alpha explorer widget, driven programmatically on the tiny Llama."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from steerlib import pipeline
from steerlib.apps.widgets import AlphaExplorer, layer_label
from steerlib.errors import ConfigError, DataError, ModelError
from steerlib.evaluate.fluency import repetition
from steerlib.evaluate.operating_point import read_recommended
from steerlib.experiment.runs import RunPaths
from steerlib.generate.generation import encode_prompts
from steerlib.pipeline import Run
from steerlib.steer.hooks import active_hook_count, steering
from steerlib.steer.steering import Steering
from steerlib.steer.variants import variant
from steerlib.steer.vectors import SteeringVector

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
    explorer = AlphaExplorer(
        llama, tokenizer, vector * 5.0, scorer or VowelScorer(), **options | kwargs
    )
    assert explorer.wait_ready(timeout=120)  # no warm-up thread outlives its test
    return explorer


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
    # the kernel echoes the values the next press will use
    assert explorer.status.value == f"Set: caa, alpha = 3.00, layer {LAYER}. Press Generate."
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
    assert list(explorer.layer_menu.options) == [("1", 1), (str(LAYER), LAYER)]
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
    assert list(explorer.layer_menu.options) == [("1", 1), (f"{LAYER} (swept)", LAYER)]
    assert explorer.slider.value == 3.0 and explorer.status.value == "Press Generate."
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
    assert explorer.wait_ready(timeout=120)
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


# -- the recommended point, the fluency signal, the layer menu ---------------------------------
def _analysed_run(tmp_path: Path, vector: SteeringVector, budget: float):
    """A run whose summary.json is written by step 06 itself (the synthetic run of
    test_operating_point: layer 3 swept, alpha 1 recommended with a 10% budget, none with 0)."""
    from test_operating_point import CURSED, fake_run

    cells = {
        **CURSED,
        ("caa", 1.0): {"tox": 0.4, "human": 21.0},
        ("caa", 2.0): {"tox": CURSED["caa", 2.0]["tox"], "human": 22.0},
    }
    run = fake_run(tmp_path, cells, layers=[1, 3], max_perplexity_increase=budget, n_resamples=200)
    pipeline.analyze(run, save_figures=False)
    extended = SteeringVector({**{x: vector[x] for x in vector.layers}, 3: vector[LAYER] * 2})
    (extended * 5.0).save(run.paths.vectors)  # one that fits the tiny Llama, layers 1-3
    return run


def _from_run(run, llama, tokenizer, **kwargs) -> AlphaExplorer:
    explorer = AlphaExplorer.from_run(
        run.paths.name,
        runs_dir=run.paths.root.parent,
        model=llama,
        tokenizer=tokenizer,
        scorer=VowelScorer(),
        max_new_tokens=6,
        prompt="you are a stupid",
        **kwargs,
    )
    assert explorer.wait_ready(timeout=120)
    return explorer


def test_opens_at_the_recommended_point_of_the_summary(tmp_path, llama, tokenizer, vector):
    run = _analysed_run(tmp_path, vector, budget=0.10)
    recommended = json.loads(run.paths.summary.read_text())["recommended"]
    assert read_recommended(run.paths.summary) == recommended
    assert recommended["status"] == "recommended" and recommended["alpha"] != 0
    explorer = _from_run(run, llama, tokenizer)
    assert explorer.layer == recommended["layer"]
    assert explorer.alpha == pytest.approx(recommended["alpha"])
    assert f"layer {recommended['layer']}" in explorer.status.value
    assert "recommended point" in explorer.status.value
    labels = dict((value, label) for label, value in explorer.layer_menu.options)
    assert labels == {1: "1 (swept)", 2: "2", 3: "3 (swept, recommended)"}
    # Another layer asked for: alpha 0 there, and the hint names the recommended point.
    other = _from_run(run, llama, tokenizer, layer=1)
    assert other.layer == 1 and other.alpha == 0.0
    assert f"recommends layer {recommended['layer']}" in other.status.value


def test_without_a_recommendation_it_opens_at_alpha_0_with_a_hint(
    tmp_path, llama, tokenizer, vector
):
    run = _analysed_run(tmp_path, vector, budget=0.0)
    recommended = read_recommended(run.paths.summary)
    assert recommended is not None and "layer" not in recommended
    explorer = _from_run(run, llama, tokenizer)
    assert explorer.alpha == 0.0 and explorer.layer == 1  # the first swept layer
    assert explorer.status.value.startswith("No recommended point (no admissible")
    assert "\n" not in explorer.status.value and "alpha 0" in explorer.status.value
    assert "(recommended)" not in str(explorer.layer_menu.options)
    hint = explorer.status.value
    explorer.slider.value = 0.5  # the echo of the new value keeps the opening hint
    assert explorer.status.value.startswith("Set: caa, alpha = 0.50, layer 1. Press Generate.")
    assert explorer.status.value.endswith(hint)
    # No summary at all (step 06 has not run): the same start, its own reason.
    run.paths.summary.unlink()
    fresh = _from_run(run, llama, tokenizer)
    assert fresh.alpha == 0.0 and "step 06" in fresh.status.value


def _direct_perplexity(model, tokenizer, prompt: str, completion: str) -> float:
    """exp(mean NLL) of the completion's tokens in one plain forward pass over the whole text."""
    prompt_ids = encode_prompts(tokenizer, [prompt])[0]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    start = len(prompt_ids)
    targets = ids[0, start:]
    nll = -logp[start - 1 : -1].gather(-1, targets[:, None]).mean()
    return float(torch.exp(nll))


def test_fluency_is_the_unsteered_models_perplexity(monkeypatch, llama, tokenizer, vector):
    import steerlib.apps.explorer_session as widgets_module

    explorer = make_explorer(llama, tokenizer, vector, alpha=-1.0)  # a non-empty steered text
    seen: list[int] = []
    real = widgets_module.continuation_perplexity

    def spy(model, *args, **kwargs):
        def count(module, inputs):
            seen.append(active_hook_count(model))

        watcher = model.register_forward_pre_hook(count)  # not a steering hook
        try:
            return real(model, *args, **kwargs)
        finally:
            watcher.remove()

    monkeypatch.setattr(widgets_module, "continuation_perplexity", spy)
    result = explorer.generate()
    assert seen and all(n == 0 for n in seen)  # every forward of the perplexity pass
    assert result["steered"] != result["unsteered"]
    for kind in ("unsteered", "steered"):
        expected = _direct_perplexity(llama, tokenizer, result["prompt"], result[kind])
        assert result[f"{kind}_perplexity"] == pytest.approx(expected, rel=1e-4)
        assert result[f"{kind}_repetition"] == repetition(result[kind])
    page = explorer.output.value
    assert 'class="steerlib-steered-perplexity"' in page and "data-flagged=" in page
    ratio = result["steered_perplexity"] / result["unsteered_perplexity"]
    assert f"&times;{ratio:.1f}" in page
    assert ("steerlib-warning" in page) == result["degenerate"]
    perplexity, _ = explorer.fluency(result["prompt"], [""])
    assert math.isnan(perplexity[0])  # an empty completion has none
    # A hook left registered (a steering block still open) is refused, not measured.
    with steering(llama, vector, 1.0, LAYER), pytest.raises(ModelError, match="hook"):
        explorer.fluency("you are a stupid", ["idiot"])


def test_a_repetitive_steered_text_is_flagged_and_warned(monkeypatch, llama, tokenizer, vector):
    import steerlib.apps.explorer_session as widgets_module

    assert repetition("central central Winc Winc Winc").flagged
    assert repetition("the cat the cat the cat sat on the mat").flagged
    assert repetition("").flagged
    normal = repetition("we walked to the park this morning and talked about work")
    assert not normal.flagged and normal.describe() == "no repetition"
    assert not repetition("very very good").flagged  # two in a row is language, not a loop

    explorer = make_explorer(llama, tokenizer, vector, alpha=3.0)
    monkeypatch.setattr(
        widgets_module,
        "repetition",
        lambda text: repetition(text + " Winc Winc Winc"),  # every completion looks looped
    )
    result = explorer.generate()
    assert result["steered_repetition"].flagged and result["degenerate"]
    page = explorer.output.value
    assert "steerlib-warning" in page and "not detoxification" in page
    assert 'data-flagged="1"' in page and "&#x27;winc&#x27; ×3 in a row" in page


def test_layer_labels():
    assert layer_label(12, [12, 18], 12) == "12 (swept, recommended)"
    assert layer_label(12, [18], 12) == "12 (recommended)"
    assert layer_label(18, [12, 18], 12) == "18 (swept)"
    assert layer_label(5, [12, 18], 12) == "5"
    assert layer_label(5) == "5"


# -- steering variants --------------------------------------------------------------------------
TOXIC = ["you are a stupid idiot", "shut up you dumb fool", "what a stupid ugly idiot"] * 2
NONTOXIC = ["we walk in the park today", "the weather is nice", "thank you for the help"] * 2


@pytest.fixture(scope="module")
def caa_and_probe(llama, tokenizer):
    """The tiny Llama's CAA vector (every layer, non-toxic projections) and its probe, both
    made by the chain's own functions (step 04)."""
    from steerlib.steer.activations import capture_residuals
    from steerlib.steer.probe import fit_probe
    from steerlib.steer.vectors import compute_caa

    toxic = capture_residuals(llama, tokenizer, TOXIC, last_n=4, progress=False)
    nontoxic = capture_residuals(llama, tokenizer, NONTOXIC, last_n=4, progress=False)
    return compute_caa(toxic, nontoxic), fit_probe(toxic, nontoxic, folds=2)


def _direct(llama, tokenizer, vector, probe, name: str, alpha: float, prompt: str) -> str:
    """The greedy completion under ``steering(..., mode=...)`` around ``generate``, one row."""
    from steerlib.generate.generation import decode_new_tokens, stop_token_ids
    from steerlib.models.layers import num_layers
    from steerlib.steer.variants import variant

    chosen = variant(name, multilayer_span=3)
    kwargs = chosen.steering_kwargs(LAYER, num_layers(llama), "all", probe)
    layers = kwargs.pop("layers")
    ids = torch.tensor([encode_prompts(tokenizer, [prompt])[0]])
    stops = stop_token_ids(llama, tokenizer)
    with steering(llama, vector, alpha, layers, **kwargs), torch.no_grad():
        out = llama.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    assert active_hook_count(llama) == 0
    return decode_new_tokens(tokenizer, out[:, ids.shape[1] :], stops)[0][0]


def test_every_variant_steers_as_the_engine_and_the_hook_do(llama, tokenizer, caa_and_probe):
    from steerlib.steer.variants import VARIANTS

    vector, probe = caa_and_probe
    explorer = AlphaExplorer(
        llama,
        tokenizer,
        vector,
        VowelScorer(),
        layer=LAYER,
        alpha=0.0,
        prompt="you are a stupid",
        max_new_tokens=8,
        variants=list(VARIANTS),
        probe=probe,
        multilayer_span=3,
    )
    assert list(explorer.variant_menu.options) == list(VARIANTS)
    assert explorer.variant == "caa" and "steerlib-variant" in explorer.variant_menu._dom_classes
    steered: dict[str, str] = {}
    unsteered: set[str] = set()
    for name in VARIANTS:
        explorer.variant_menu.value = name
        alpha = 1.0 if variant(name).max_alpha else 3.0  # ablate and clamp: alpha in [0, 1]
        explorer.slider.value = alpha
        result = explorer.generate()
        assert active_hook_count(llama) == 0  # every hook removed after the press
        assert result["variant"] == name and result["alpha"] == alpha
        expected = _direct(llama, tokenizer, vector, probe, name, alpha, result["prompt"])
        assert result["steered"] == expected, name
        steered[name] = result["steered"]
        unsteered.add(result["unsteered"])
        page = explorer.output.value
        assert f'data-variant="{name}"' in page and f"Steered ({name}, alpha = {alpha:.2f}" in page
        assert ("gate_fired" in result) == (name == "gated") == ("steerlib-gate" in page)
        if name == "multilayer":
            assert result["layers"] == [1, 2, 3] and "layers 1-3" in page
    assert len(unsteered) == 1  # the unsteered side depends on no variant
    explorer.variant_menu.value = "ablate"
    explorer.slider.value = 3.0
    with pytest.raises(ConfigError, match=r"alpha in \[0, 1\]"):
        explorer.generate()  # beyond full removal: refused, not reflected
    assert active_hook_count(llama) == 0
    assert len(set(steered.values())) > 2  # the menu changes what is generated
    explorer.variant_menu.value = "gated"
    result = explorer.generate()
    assert 0 <= result["gate_fired"] <= result["gate_positions"] and result["gate_positions"] > 0


def test_variants_that_cannot_steer_are_refused(llama, tokenizer, caa_and_probe):
    vector, _ = caa_and_probe
    with pytest.raises(ConfigError, match="probe"):
        make_explorer(llama, tokenizer, vector, variants=["caa", "gated"])
    with pytest.raises(ConfigError, match="non-toxic projections"):
        make_explorer(llama, tokenizer, vector, variants=["caa", "clamp"])  # vector * 5 has none
    with pytest.raises(ConfigError, match="unknown steering variant"):
        make_explorer(llama, tokenizer, vector, variants=["caa", "sideways"])
    with pytest.raises(ConfigError, match="not among"):
        make_explorer(llama, tokenizer, vector, variants=["caa"], variant="ablate")


def _variants_run(tmp_path: Path):
    """A run whose step 06 recommends the gated variant (as in test_steering_modes)."""
    from test_operating_point import CURSED, fake_run, kl_of

    cells = {**CURSED, ("caa", 1.0): {"tox": 0.4, "human": 21.0}}
    run = fake_run(
        tmp_path,
        cells,
        n_resamples=200,
        variants=["caa", "gated", "clamp", "multilayer"],
        alphas=[0.0, 1.0],  # clamp takes alpha in [0, 1]
        multilayer_span=3,
    )
    sweep = pd.read_parquet(run.paths.sweep)
    gated = sweep[sweep["direction"] == "caa"].copy()
    steered = gated["alpha"] != 0
    gated.loc[steered, "toxicity"] = gated.loc[steered, "toxicity"] * 0.5
    gated = gated.assign(variant="gated", gate_fired=3, gate_positions=10)
    pd.concat([sweep, gated], ignore_index=True).to_parquet(run.paths.sweep)
    kl = kl_of(cells)
    pd.concat([kl, kl[kl["direction"] == "caa"].assign(variant="gated")]).to_parquet(run.paths.kl)
    pipeline.analyze(run, save_figures=False)
    return run


def test_from_run_opens_at_the_recommended_variant_with_the_runs_probe(
    tmp_path, llama, tokenizer, caa_and_probe
):
    vector, probe = caa_and_probe
    run = _variants_run(tmp_path)
    recommended = read_recommended(run.paths.summary)
    assert recommended["variant"] == "gated" and recommended["alpha"] != 0
    vector.save(run.paths.vectors)
    probe.save(run.paths.probe)
    explorer = _from_run(run, llama, tokenizer)
    assert list(explorer.variant_menu.options) == ["caa", "gated", "clamp", "multilayer"]
    assert explorer.variant == "gated" and explorer.multilayer_span == 3
    assert explorer.layer == recommended["layer"]
    assert explorer.alpha == pytest.approx(recommended["alpha"])
    assert "(gated)" in explorer.status.value
    assert explorer.probe is not None and explorer.probe.layers == probe.layers
    result = explorer.generate()
    assert result["variant"] == "gated" and "gate_fired" in result
    assert active_hook_count(llama) == 0
    # Another variant asked for: alpha 0 there (alphas mean different things per variant).
    other = _from_run(run, llama, tokenizer, variant="clamp")
    assert other.variant == "clamp" and other.alpha == 0.0
    assert "recommends layer" in other.status.value and "(gated)" in other.status.value


def test_from_run_without_probe_or_activations_leaves_gated_and_clamp_out(
    tmp_path, llama, tokenizer, caa_and_probe
):
    vector, _ = caa_and_probe
    run = _variants_run(tmp_path)
    (vector * 1.0).save(run.paths.vectors)  # no non-toxic projections, no probe, no step 03
    explorer = _from_run(run, llama, tokenizer)
    assert list(explorer.variant_menu.options) == ["caa", "multilayer"]
    assert explorer.variant == "caa" and explorer.alpha == 0.0
    assert "gated and clamp not offered" in explorer.status.value
    assert "activations" in explorer.status.value


# -- issue 25 item 6: an explorer that answers at once and does not mislead -------------------
class GatedScorer(VowelScorer):
    """A scorer that holds its first call until ``gate`` opens (the warm-up, seen from inside)."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.gate = threading.Event()

    def score(self, texts: Sequence[str]) -> np.ndarray:
        assert self.gate.wait(timeout=120), "the test never opened the gate"
        return super().score(texts)


def test_the_model_warms_up_in_the_background_and_generate_waits(
    monkeypatch, llama, tokenizer, vector
):
    import threading

    import steerlib.apps.explorer_session as session
    from steerlib.apps.explorer_session import WARM_UP_TOKENS

    seen: list[dict] = []
    real = session.generate_unit

    def spy(*args, **kwargs):
        seen.append(
            {
                "tokens": kwargs["settings"].max_new_tokens,
                "variant": kwargs["steering"].operator.name,
            }
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(session, "generate_unit", spy)
    scorer = GatedScorer()
    explorer = AlphaExplorer(
        llama, tokenizer, vector * 5.0, scorer, layer=LAYER, alpha=3.0, max_new_tokens=8
    )
    # While it warms up: the button says so and cannot be pressed; nothing is shown as a result.
    assert not explorer.ready
    assert explorer.button.disabled and explorer.button.description == "Warming up…"
    assert "Warming up" in explorer.output.value and 'data-run="0"' in explorer.output.value
    assert explorer.status.value == "Press Generate."  # the hint stays
    threading.Timer(0.3, scorer.gate.set).start()
    result = explorer.generate()  # waits for the warm-up, then generates
    assert explorer.ready and explorer.warm_up_error is None
    assert explorer.warm_up_seconds is not None and explorer.warm_up_seconds > 0
    assert [s["tokens"] for s in seen] == [WARM_UP_TOKENS, 8]  # the same path, shorter
    assert {s["variant"] for s in seen} == {"caa"}
    assert len(scorer.calls) == 2 and scorer.calls[-1] == [result["unsteered"], result["steered"]]
    assert explorer.runs == 1 and 'data-run="1"' in explorer.output.value
    assert not explorer.button.disabled and explorer.button.description == "Generate"


def test_without_warm_up_it_is_ready_at_once_and_a_failing_warm_up_is_kept(
    llama, tokenizer, vector
):
    scorer = VowelScorer()
    cold = AlphaExplorer(llama, tokenizer, vector, scorer, layer=LAYER, warm_up=False)
    assert cold.ready and not cold.button.disabled and scorer.calls == []
    assert "Warming up" not in cold.output.value and cold.warm_up_seconds is None
    failing = make_explorer(llama, tokenizer, vector, FailingScorer())
    assert failing.ready and "scorer <exploded>" in failing.warm_up_error
    assert not failing.button.disabled and failing.button.description == "Generate"
    assert failing.last is None and failing.runs == 0


def _fixed_fluency(monkeypatch, unsteered: float, steered: float) -> None:
    """Completions' perplexities fixed at these values, and neither text repetitive."""
    import steerlib.apps.explorer_session as session

    monkeypatch.setattr(
        session,
        "continuation_perplexity",
        lambda model, tokenizer, prompts, completions, **kw: np.array([unsteered, steered]),
    )
    fluent = repetition("we walked to the park this morning and talked about work")
    monkeypatch.setattr(session, "repetition", lambda text: fluent)


def test_a_text_over_the_fluency_budget_is_flagged_with_the_budget_named(
    monkeypatch, llama, tokenizer, vector
):
    _fixed_fluency(monkeypatch, 10.0, 78.0)  # x7.8, the off-topic text: under 10x
    explorer = make_explorer(llama, tokenizer, vector, alpha=3.0)
    assert explorer.max_perplexity_increase == pytest.approx(0.10)  # the chain's default
    result = explorer.generate()
    assert result["perplexity_ratio"] == pytest.approx(7.8)
    assert result["perplexity_limit"] == pytest.approx(1.10)
    assert result["over_budget"] and result["degenerate"]
    page = explorer.output.value
    assert 'class="steerlib-warning" data-over-budget="1"' in page
    assert "over the default fluency budget (&times;1.10: max_perplexity_increase = 0.1)" in page
    assert "&times;7.8 the unsteered completion" in page and "looks broken" not in page
    # A budget the text keeps: no flag, no warning, the budget still stated under the result.
    lenient = make_explorer(llama, tokenizer, vector, alpha=3.0, max_perplexity_increase=9.0)
    kept = lenient.generate()
    assert not kept["over_budget"] and not kept["degenerate"]
    assert "steerlib-warning" not in lenient.output.value
    assert "max_perplexity_increase = 9" in lenient.output.value
    # Orders of magnitude over: called broken.
    _fixed_fluency(monkeypatch, 10.0, 450.0)
    broken = explorer.generate()
    assert broken["over_budget"] and "looks broken (perplexity &times;45.0" in explorer.output.value
    with pytest.raises(ConfigError, match="max_perplexity_increase must be >= 0"):
        make_explorer(llama, tokenizer, vector, max_perplexity_increase=-0.5)


def test_the_budget_is_the_runs(tmp_path, llama, tokenizer, vector):
    from steerlib.apps.explorer_run import run_budget

    run = _analysed_run(tmp_path / "a", vector, budget=0.10)
    recommended = read_recommended(run.paths.summary)
    assert recommended["checks"]["max_perplexity_increase"] == pytest.approx(0.10)
    explorer = _from_run(run, llama, tokenizer)
    assert explorer.max_perplexity_increase == pytest.approx(0.10)
    assert explorer.budget_source == "the run's"
    # No summary yet: the run's parameter.
    paths = _write_run(tmp_path / "b", vector, max_perplexity_increase=0.25)
    vector.save(paths.vectors)
    fresh = AlphaExplorer.from_run(
        "tiny", runs_dir=paths.root.parent, model=llama, tokenizer=tokenizer, scorer=VowelScorer()
    )
    assert fresh.wait_ready(timeout=120)
    assert fresh.max_perplexity_increase == pytest.approx(0.25)
    # The summary's value (what step 06 judged with) wins over a parameter changed since.
    params = run.params.model_copy(update={"max_perplexity_increase": 0.5})
    assert run_budget(recommended, params) == pytest.approx(0.10)
    assert run_budget(None, params) == pytest.approx(0.5)


def test_the_recommended_alpha_is_on_the_slider_and_a_button_returns_to_it(
    llama, tokenizer, vector
):
    from steerlib.apps.widgets import alpha_step

    assert alpha_step(0.1, 0.9) == 0.1 and alpha_step(0.1, -2.0, 3.0) == 0.1
    assert alpha_step(0.1, 0.91) == 0.01 and alpha_step(0.5, 5.0, None) == 0.5
    explorer = make_explorer(
        llama,
        tokenizer,
        vector,
        alpha=0.91,
        layer=1,
        recommended_layer=LAYER,
        recommended_alpha=0.91,
        recommended_variant="caa",
    )
    slider = explorer.slider
    assert slider.step == 0.01  # 0.91 is a stop of the slider
    stops = (0.91 - slider.min) / slider.step
    assert stops == pytest.approx(round(stops))
    button = explorer.recommended_button
    assert "steerlib-recommended" in button._dom_classes
    assert not button.disabled and button.layout.display != "none"
    assert button.description == "Recommended (alpha 0.91)"
    slider.value = 0.0
    explorer.layer_menu.value = 1
    button.click()
    assert explorer.alpha == 0.91 and explorer.layer == LAYER and explorer.variant == "caa"
    assert "recommended point" in explorer.status.value
    # Without a recommended point the button is hidden and refuses.
    plain = make_explorer(llama, tokenizer, vector)
    assert plain.slider.step == 0.1
    assert plain.recommended_button.disabled and plain.recommended_button.layout.display == "none"
    with pytest.raises(ConfigError, match="no recommended point"):
        plain.go_to_recommended()


def test_from_run_offers_the_recommended_point_on_its_button(tmp_path, llama, tokenizer, vector):
    run = _analysed_run(tmp_path, vector, budget=0.10)
    recommended = read_recommended(run.paths.summary)
    explorer = _from_run(run, llama, tokenizer, layer=1)
    assert explorer.recommended_alpha == pytest.approx(recommended["alpha"])
    assert explorer.alpha == 0.0 and not explorer.recommended_button.disabled
    explorer.recommended_button.click()
    assert explorer.layer == recommended["layer"]
    assert explorer.alpha == pytest.approx(recommended["alpha"])


def test_the_score_is_labelled_as_the_completions_toxicity(llama, tokenizer, vector):
    explorer = make_explorer(llama, tokenizer, vector, alpha=3.0)
    explorer.generate()
    page = explorer.output.value
    assert page.count("completion toxicity (vowel-fraction)") == 2  # both sides, scorer named
    assert "the prompt is not scored" in page


def test_steering_is_built_in_one_place(llama, tokenizer, caa_and_probe):
    vector, probe = caa_and_probe
    explorer = AlphaExplorer(
        llama,
        tokenizer,
        vector,
        VowelScorer(),
        layer=LAYER,
        variants=["caa", "multilayer", "gated"],
        probe=probe,
        multilayer_span=3,
        warm_up=False,
    )
    multi = explorer.steering("multilayer", LAYER)
    assert isinstance(multi, Steering) and list(multi.layers) == [1, 2, 3]
    assert multi.vector is explorer.vector and multi.operator.name == "multilayer"
    assert list(explorer.steering("caa", LAYER).layers) == [LAYER]
    gated = explorer.steering("gated", LAYER)
    assert gated.gate is not None  # the probe bound into the value, not passed beside it
