"""Steering modes of the one hook: exact math, identity at alpha 0, cleanup, batch parity."""

from __future__ import annotations

import pytest
import torch

from steerlib.errors import ConfigError
from steerlib.experiment import report
from steerlib.generate.engine import decode_batch
from steerlib.generate.generation import stop_token_ids
from steerlib.models.layers import get_decoder_layers
from steerlib.steer.activations import ResidualActivations
from steerlib.steer.hooks import ALPHA_RANGES, MODES, Gate, active_hook_count, steering
from steerlib.steer.probe import ToxicityProbe, fit_probe
from steerlib.steer.variants import VARIANTS, variant
from steerlib.steer.vectors import SteeringVector, compute_caa

PROMPT = "the dog said you are a stupid fool and the cat"
LAYER = 1


def _vector(layers=(0, 1, 2), seed: int = 1, scale: float = 3.0) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    directions = {k: torch.randn(32, generator=gen) * scale for k in layers}
    return SteeringVector(
        directions, {"model_id": "test"}, dict.fromkeys(layers, 10.0), dict.fromkeys(layers, 0.5)
    )


def _plain(model, inputs, layer: int = LAYER) -> torch.Tensor:
    seen = {}

    def grab(module, args, output):
        seen["h"] = (output[0] if isinstance(output, tuple) else output).clone()

    handle = get_decoder_layers(model)[layer].register_forward_hook(grab)
    try:
        model(**inputs)
    finally:
        handle.remove()
    return seen["h"]


def _planted_gate(plain: torch.Tensor, vector: SteeringVector) -> tuple[Gate, torch.Tensor]:
    """A gate on the direction whose bias makes it fire at about half the content positions;
    and the expected 0/1 gate per position from the running mean of the plain states."""
    unit = vector[LAYER] / vector[LAYER].norm()
    content = torch.arange(plain.shape[1]) > 0
    sums = (plain[0] * content[:, None]).cumsum(0)
    means = sums / content.cumsum(0).clamp(min=1)[:, None]
    logits = means @ unit
    bias = -float(logits[content].median())
    gate = Gate(unit, bias)
    fires = (torch.sigmoid(logits + bias) > 0.5) & content
    return gate, fires


def _expected(mode: str, plain: torch.Tensor, vector: SteeringVector, alpha: float, fires=None):
    v = vector[LAYER]
    u = v / v.norm()
    if mode == "add":
        return plain - alpha * v
    if mode == "gated":
        return plain - alpha * fires[None, :, None].float() * v
    if mode == "norm_preserving":
        moved = plain - alpha * v
        return moved * plain.norm(dim=-1, keepdim=True) / moved.norm(dim=-1, keepdim=True)
    offset = 0.0 if mode == "ablate" else vector.nontoxic_projections[LAYER]
    return plain - alpha * ((plain @ u) - offset).clamp(min=0)[..., None] * u


def _kwargs(mode: str, gate: Gate | None) -> dict:
    return {"mode": mode, "gate": gate} if mode == "gated" else {"mode": mode}


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_matches_its_formula(llama, tokenizer, mode):
    inputs = tokenizer([PROMPT], return_tensors="pt")
    vector = _vector()
    with torch.inference_mode():
        plain = _plain(llama, inputs)
        gate, fires = _planted_gate(plain, vector)
        with steering(llama, vector, 0.8, LAYER, **_kwargs(mode, gate)) as handle:
            steered = _plain(llama, inputs)
    torch.testing.assert_close(steered, _expected(mode, plain, vector, 0.8, fires))
    assert not torch.allclose(steered, plain)
    if mode == "gated":
        fired, seen = handle.gate_counts()
        assert 0 < int(fires.sum()) < plain.shape[1] - 1
        assert fired.tolist() == [int(fires.sum())]
        assert seen.tolist() == [plain.shape[1] - 1]
    if mode == "ablate":  # alpha 1 removes the positive component along the direction
        with torch.inference_mode(), steering(llama, vector, 1.0, LAYER, mode="ablate"):
            ablated = _plain(llama, inputs)
        unit = vector[LAYER] / vector[LAYER].norm()
        assert float((ablated @ unit).max()) < 1e-4


@pytest.mark.parametrize("mode", MODES)
def test_alpha_zero_is_identity_and_hooks_go_on_every_way_out(llama, tokenizer, mode):
    inputs = tokenizer([PROMPT], return_tensors="pt")
    vector = _vector()
    gate = Gate(torch.ones(32), 0.0)
    with torch.inference_mode():
        plain = llama(**inputs).logits
        with steering(llama, vector, 0.0, [0, 1, 2], split_alpha=True, **_kwargs(mode, gate)):
            same = llama(**inputs).logits
        assert torch.equal(plain, same)
        with pytest.raises(RuntimeError, match="boom"):
            with steering(llama, vector, 1.0, [0, 2], **_kwargs(mode, gate)):
                assert active_hook_count(llama) == 2
                llama(**inputs)
                raise RuntimeError("boom")
    assert active_hook_count(llama) == 0


def test_split_alpha_divides_across_layers(llama, tokenizer):
    inputs = tokenizer([PROMPT], return_tensors="pt")
    vector = _vector()
    with torch.inference_mode():
        plain = _plain(llama, inputs, layer=0)
        with steering(llama, vector, 1.5, [0, 1, 2], split_alpha=True):
            steered = _plain(llama, inputs, layer=0)
    torch.testing.assert_close(steered, plain - 0.5 * vector[0])


def test_missing_gate_or_offsets_fail_before_hooks(llama):
    vector = SteeringVector({1: torch.ones(32)})
    with pytest.raises(ConfigError, match="needs a probe"):
        with steering(llama, vector, 1.0, 1, mode="gated"):
            pass
    with pytest.raises(ConfigError, match="mean projection"):
        with steering(llama, vector, 1.0, 1, mode="clamp"):
            pass
    with pytest.raises(ConfigError, match="mode must be one of"):
        with steering(llama, vector, 1.0, 1, mode="scale"):  # type: ignore[arg-type]
            pass
    assert active_hook_count(llama) == 0


def _greedy(model, tokenizer, prompts, min_new_tokens=6, **kwargs):
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(
        **enc,
        max_new_tokens=6,
        min_new_tokens=min_new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )
    return out.sequences[:, enc.input_ids.shape[1] :], torch.stack(out.logits, dim=1)


@pytest.mark.parametrize("mode", MODES)
def test_per_row_alphas_equal_one_at_a_time(llama, tokenizer, mode):
    vector = _vector(scale=2.0)
    gate = Gate(vector[2] / vector[2].norm(), 0.0)
    alphas = [0.0, 0.5, 1.0] if mode in ALPHA_RANGES else [-1.0, 0.0, 1.5]
    with torch.inference_mode():
        with steering(llama, vector, alphas, 2, **_kwargs(mode, gate)) as handle:
            batched, batched_logits = _greedy(llama, tokenizer, [PROMPT] * 3)
            counts = handle.gate_counts()
        for row, alpha in enumerate(alphas):
            with steering(llama, vector, alpha, 2, **_kwargs(mode, gate)) as single_handle:
                single, single_logits = _greedy(llama, tokenizer, [PROMPT])
            assert torch.equal(batched[row], single[0]), alpha
            torch.testing.assert_close(batched_logits[row], single_logits[0], rtol=1e-5, atol=1e-5)
            if mode == "gated":
                assert int(counts[0][row]) == int(single_handle.gate_counts()[0][0])
    # The rows really differ: the steered alphas do not all give alpha 0's logits.
    zero = alphas.index(0.0)
    assert not all(
        torch.allclose(batched_logits[row], batched_logits[zero])
        for row in range(len(alphas))
        if row != zero
    )


def _cut(row: list[int], stops: set[int]) -> list[int]:
    for i, token in enumerate(row):
        if token in stops:
            return row[: i + 1]
    return row


@pytest.mark.parametrize("name", ["llama", "gemma3"])
@pytest.mark.parametrize("mode", ["gated", "clamp", "norm_preserving"])
def test_engine_rows_equal_unpadded_single_runs(request, tokenizer, mode, name):
    """Left padding, alphas x samples expanded from one prefill, gate state carried along."""
    llama = request.getfixturevalue(name)
    vector = _vector(scale=2.0)
    gate = Gate(vector[1] / vector[1].norm(), -0.2)
    texts = ["the dog said you are a", "hello", "you idiot , you stupid"]
    alphas = [0.0, 1.0 if mode in ALPHA_RANGES else 2.0]
    counts: dict[str, torch.Tensor] = {}
    stops = stop_token_ids(llama, tokenizer)
    with torch.inference_mode():
        got = decode_batch(
            llama,
            [tokenizer(t)["input_ids"] for t in texts],
            vector=vector,
            layer=1,
            alphas=alphas,
            samples_per_prompt=2,
            max_new_tokens=6,
            temperature=0.0,
            top_p=1.0,
            positions="all",
            units="raw",
            stop_ids=stops,
            pad_id=tokenizer.pad_token_id,
            gate_counts=counts,
            **_kwargs(mode, gate),
        )
        for p, text in enumerate(texts):
            for a, alpha in enumerate(alphas):
                with steering(llama, vector, alpha, 1, **_kwargs(mode, gate)) as handle:
                    ref, _ = _greedy(llama, tokenizer, [text], min_new_tokens=0)
                for s in range(2):
                    row = (p * len(alphas) + a) * 2 + s
                    assert _cut(got[row].tolist(), stops) == _cut(ref[0].tolist(), stops)
                    if mode == "gated":
                        assert int(counts["fired"][row]) == int(handle.gate_counts()[0][0])
                        assert int(counts["gated"][row]) == int(handle.gate_counts()[1][0])
    assert active_hook_count(llama) == 0


def test_probe_separates_planted_classes_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=gen)

    def acts(sign: float) -> ResidualActivations:
        pooled = torch.randn(20, 2, 16, generator=gen) + sign * 2.0 * direction
        return ResidualActivations(pooled, pooled.norm(dim=-1), [3, 5], 32)

    toxic, nontoxic = acts(1.0), acts(-1.0)
    probe = fit_probe(toxic, nontoxic, folds=4)
    assert probe.layers == [3, 5]
    assert all(a > 0.9 for a in probe.accuracy.values())
    # The folded standardization: the raw-state probe reproduces the class on every text.
    assert (probe.probability(toxic.pooled[:, 0], 3) > 0.5).float().mean() > 0.9
    assert (probe.probability(nontoxic.pooled[:, 0], 3) < 0.5).float().mean() > 0.9
    probe.save(tmp_path / "probe.safetensors")
    back = ToxicityProbe.load(tmp_path / "probe.safetensors")
    assert back.accuracy == probe.accuracy and back.biases == probe.biases
    assert torch.equal(back.weights[5], probe.weights[5])
    assert (tmp_path / "probe.json").is_file()
    vector = compute_caa(toxic, nontoxic, project_sink=False)
    unit = vector[3] / vector[3].norm()
    assert vector.nontoxic_projections[3] == pytest.approx(float(nontoxic.mean()[0] @ unit))
    vector.save(tmp_path / "v.safetensors")
    assert SteeringVector.load(tmp_path / "v.safetensors").nontoxic_projections == pytest.approx(
        vector.nontoxic_projections
    )


def test_variants_map_to_hook_settings():
    assert set(VARIANTS) >= {"caa", "caa_generated", "gated", "ablate", "clamp"}
    assert variant("multilayer", multilayer_span=3).layers(18, 30) == [17, 18, 19]
    assert variant("multilayer", multilayer_span=4).layers(29, 30) == [26, 27, 28, 29]
    kwargs = variant("caa_generated").steering_kwargs(5, 30, "all")
    assert kwargs["positions"] == "generated" and kwargs["layers"] == 5
    assert variant("multilayer").steering_kwargs(5, 30, "all")["split_alpha"] is True
    with pytest.raises(ConfigError, match="probe"):
        variant("gated").steering_kwargs(5, 30, "all")
    with pytest.raises(ConfigError, match="unknown steering variant"):
        variant("dexperts")


def test_analysis_runs_per_variant_and_recommends_across_them(tmp_path):
    import json

    import pandas as pd
    from test_operating_point import CURSED, fake_run, kl_of

    from steerlib import pipeline

    cells = {**CURSED, ("caa", 1.0): {"tox": 0.4, "human": 21.0}}
    run = fake_run(tmp_path, cells, n_resamples=200, variants=["caa", "gated"])
    sweep = pd.read_parquet(run.paths.sweep)  # written without a variant column: reads as caa
    gated = sweep[sweep["direction"] == "caa"].copy()
    steered = gated["alpha"] != 0
    gated.loc[steered, "toxicity"] = gated.loc[steered, "toxicity"] * 0.5
    gated = gated.assign(variant="gated", gate_fired=3, gate_positions=10)
    pd.concat([sweep, gated], ignore_index=True).to_parquet(run.paths.sweep)
    kl = kl_of(cells)
    kl_gated = kl[kl["direction"] == "caa"].assign(variant="gated")
    pd.concat([kl, kl_gated], ignore_index=True).to_parquet(run.paths.kl)
    analysis = pipeline.analyze(run, save_figures=False)
    record = json.loads(run.paths.summary.read_text())
    assert set(analysis.summary["variant"]) == {"caa", "gated"}
    assert set(record["recommended_by_variant"]) == {"caa", "gated"}
    assert record["recommended"]["variant"] == "gated"
    assert "Across steering variants" in record["recommended"]["rule"]
    assert analysis.variants.set_index("variant").loc["gated", "recommended"]
    assert len(analysis.variants) == 2 and "pareto_variants" in analysis.figures
    assert (analysis.gate_rates["fire_rate"] == 0.3).all() and len(analysis.gate_rates)
    figure = analysis.figures["pareto_variants"]
    assert {trace.name for trace in figure.data} >= {"caa", "gated", "random control"}
    # The side-by-side table carries each point's intervals, shown as one column each.
    gated = analysis.variants.set_index("variant").loc["gated"]
    point = record["recommended_by_variant"]["gated"]
    low, high = point["expected_max_toxicity_ci"]
    assert (gated["expected_max_toxicity_ci_low"], gated["expected_max_toxicity_ci_high"]) == (
        low,
        high,
    )
    shown = report.variants_table(analysis.variants).data
    assert "expected_max_toxicity_ci" in shown and "mean_toxicity_ci_low" not in shown


# -- variants that do what their names say (issue 27, item 3) ---------------------------------
def test_ablate_at_one_leaves_no_positive_component_and_keeps_the_negative(llama, tokenizer):
    inputs = tokenizer([PROMPT], return_tensors="pt")
    vector = _vector()
    unit = vector[LAYER] / vector[LAYER].norm()
    with torch.inference_mode():
        plain = _plain(llama, inputs)
        with steering(llama, vector, 1.0, LAYER, mode="ablate"):
            ablated = _plain(llama, inputs)
    before, after = plain @ unit, ablated @ unit
    assert bool((before > 0).any() and (before < 0).any())  # both signs occur: a real check
    assert float(after.max()) <= 1e-5
    torch.testing.assert_close(
        after[before > 0], torch.zeros_like(after[before > 0]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(after[before <= 0], before[before <= 0])
    # Orthogonal to the direction nothing moves.
    torch.testing.assert_close(ablated - after[..., None] * unit, plain - before[..., None] * unit)


@pytest.mark.parametrize("alpha", [i / 10 for i in range(11)])
def test_clamp_never_goes_below_its_level_for_any_alpha_in_range(llama, tokenizer, alpha):
    inputs = tokenizer([PROMPT], return_tensors="pt")
    vector = _vector()
    unit = vector[LAYER] / vector[LAYER].norm()
    with torch.inference_mode():
        plain = _plain(llama, inputs)
        level = float((plain @ unit).median())  # a level with positions on both sides
        with steering(llama, vector, alpha, LAYER, mode="clamp", clamp_offsets={LAYER: level}):
            clamped = _plain(llama, inputs)
    before, after = plain @ unit, clamped @ unit
    above = before > level
    assert 0 < int(above.sum()) < before.numel()
    assert bool((after[above] >= level - 1e-5).all())  # never crosses the level
    assert bool((after[above] <= before[above] + 1e-5).all())  # only ever pulled down
    torch.testing.assert_close(after[~above], before[~above])  # below the level: untouched
    if alpha == 1.0:  # full clamp: exactly on the level
        torch.testing.assert_close(after[above], torch.full_like(after[above], level))


@pytest.mark.parametrize("mode", ["ablate", "clamp"])
def test_out_of_range_alpha_is_refused(llama, mode):
    vector = _vector()
    for alpha in (1.5, 1.0001, -0.5, [0.0, 1.2]):
        with pytest.raises(ConfigError, match=r"alpha in \[0, 1\]"):
            with steering(llama, vector, alpha, LAYER, mode=mode):
                pass
    with steering(llama, vector, 1.0, LAYER, mode=mode) as handle:
        with pytest.raises(ConfigError, match="reflect"):
            handle.set_alpha(2.0)
        assert handle.alpha.tolist() == [1.0]
    assert active_hook_count(llama) == 0
    # Other modes keep any finite alpha.
    with steering(llama, vector, 3.0, LAYER, mode="add"):
        pass
    assert variant(mode).max_alpha == 1.0 and variant("caa").max_alpha is None


def test_config_refuses_ablate_and_clamp_alphas_outside_zero_one():
    from steerlib.experiment.config import RunParams

    for name in ("ablate", "clamp"):
        with pytest.raises(ConfigError, match=rf"'{name}' takes alpha in \[0, 1\].*1\.5"):
            RunParams.validate_mapping({"variants": ["caa", name], "alphas": [0.0, 0.5, 1.5]})
        with pytest.raises(ConfigError, match="amplify"):
            RunParams.validate_mapping({"variants": ["caa", name], "alphas": [-1.0, 0.0]})
        ok = RunParams.validate_mapping({"variants": ["caa", name], "alphas": [0.0, 0.5, 1.0]})
        assert ok.alphas == [0.0, 0.5, 1.0]
    # Plain CAA keeps its wider grid.
    assert RunParams.validate_mapping({"variants": ["caa", "gated"]}).alphas == [
        -1.0,
        0.0,
        0.5,
        1.5,
    ]


@pytest.mark.parametrize("name", ["ablate", "clamp"])
def test_alpha_search_stays_within_zero_one_for_fraction_variants(llama, tokenizer, name):
    from steerlib.evaluate.search import search_alpha

    texts = ["the dog said you are a stupid fool", "we cook dinner in the park today"]
    vector = _vector()
    # A budget nothing breaks: the search would double past 1.5 without the cap.
    found = search_alpha(
        llama, tokenizer, texts, vector, LAYER, max_increase=1e9, start=1.5, variant=variant(name)
    )
    assert found.alpha == 1.0 and float(found.trace["alpha"].max()) == 1.0
    plain = search_alpha(llama, tokenizer, texts, vector, LAYER, max_increase=1e9, start=1.5)
    assert plain.alpha > 1.5  # plain CAA is not capped


def test_teacher_forced_pass_leaves_prompt_positions_unsteered(llama, tokenizer):
    """caa_generated's fluency pass: prompt positions as unsteered, the continuation steered."""
    from steerlib.evaluate.fluency import benign_kl, continuation_starts

    prompts = ["the dog said you are", "hello"]
    texts = ["the dog said you are a stupid fool and the cat", "hello we cook dinner in the park"]
    encoded = tokenizer(texts)["input_ids"]
    first = continuation_starts(tokenizer, encoded, prompts)
    assert first == [len(tokenizer(p)["input_ids"]) for p in prompts]
    assert continuation_starts(tokenizer, encoded, [texts[0], None]) == [
        len(ids) // 2 for ids in encoded
    ]
    vector = _vector()
    seen: list[torch.Tensor] = []

    def grab(module, args, kwargs):  # the next layer's input: this layer's steered output
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    next_layer = get_decoder_layers(llama)[LAYER + 1]
    with torch.inference_mode():
        table = benign_kl(
            llama,
            tokenizer,
            texts,
            {"caa": vector},
            layers=[LAYER],
            alphas=[1.0],
            variant=variant("caa_generated"),
            prefixes=prompts,
        )
        handle = next_layer.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            benign_kl(
                llama,
                tokenizer,
                texts,
                {"caa": vector},
                layers=[LAYER],
                alphas=[1.0],
                variant=variant("caa_generated"),
                prefixes=prompts,
            )
        finally:
            handle.remove()
        everywhere = benign_kl(
            llama, tokenizer, texts, {"caa": vector}, layers=[LAYER], alphas=[1.0]
        )
    base, steered = seen  # the unsteered pass, then the steered one (one alpha)
    mask = tokenizer(texts, return_tensors="pt", padding=True)["attention_mask"]
    pads = (mask == 0).sum(-1)
    for row in range(len(texts)):
        start = int(pads[row]) + first[row]
        torch.testing.assert_close(steered[row, :start], base[row, :start])  # prompt: as is
        torch.testing.assert_close(steered[row, start:], base[row, start:] - vector[LAYER])
    # Judged on the steered positions only, and not the same as steering every position.
    assert int(table["n_tokens"].iloc[0]) == sum(
        len(ids) - f for ids, f in zip(encoded, first, strict=True)
    )
    assert int(everywhere["n_tokens"].iloc[0]) == sum(map(len, encoded))
    assert float(table["kl_benign"].iloc[0]) > 0


# -- a matched control per variant (issue 27, item 4) -----------------------------------------
def test_every_variant_is_swept_with_its_own_random_direction():
    from steerlib.experiment.config import RunParams
    from steerlib.experiment.sweep import sweep_plan

    params = RunParams(variants=["caa", "gated", "multilayer"], layers=[3], alphas=[0.0, 1.0])
    plan = sweep_plan(params, 8)
    assert all(plan.directions_of(name) == ["caa", "random"] for name in plan.variants)
    keys = [unit.key for unit in plan.units(_eval_prompts(), params)]
    assert len(keys) == len(set(keys)) == 6  # 3 variants x 2 directions, one bucket
    assert {k.split("-L")[0] for k in keys} == {
        f"{prefix}{direction}"
        for prefix in ("", "gated-", "multilayer-")
        for direction in ("caa", "random")
    }
    alone = sweep_plan(params.model_copy(update={"random_control": False}), 8)
    assert all(alone.directions_of(name) == ["caa"] for name in alone.variants)


def _eval_prompts():
    import pandas as pd

    return pd.DataFrame(
        {
            "role": ["challenging", "benign"],
            "subset": ["challenging", "benign"],
            "prompt_id": ["c0", "b0"],
            "prompt": ["you are", "the park"],
        }
    )


def test_each_variant_is_reported_against_its_own_control(tmp_path):
    import json

    import pandas as pd
    from test_operating_point import CURSED, fake_run, kl_of

    from steerlib import pipeline

    cells = {**CURSED, ("caa", 1.0): {"tox": 0.4, "human": 21.0}}
    run = fake_run(
        tmp_path, cells, n_resamples=200, variants=["caa", "gated", "clamp"], alphas=[0.0, 1.0]
    )
    sweep = pd.read_parquet(run.paths.sweep)
    kl = kl_of(cells)
    # gated: its own random rows, much less toxic than plain CAA's random control;
    # clamp: none of its own (a run made before per-variant controls): CAA's is used.
    gated = sweep.assign(variant="gated")
    random_steered = (gated["direction"] == "random") & (gated["alpha"] != 0)
    gated.loc[random_steered, "toxicity"] = gated.loc[random_steered, "toxicity"] * 0.1
    clamp = sweep[sweep["direction"] == "caa"].assign(variant="clamp")
    pd.concat([sweep, gated, clamp], ignore_index=True).to_parquet(run.paths.sweep)
    pd.concat(
        [kl, kl.assign(variant="gated"), kl[kl["direction"] == "caa"].assign(variant="clamp")],
        ignore_index=True,
    ).to_parquet(run.paths.kl)
    pipeline.analyze(run, save_figures=False)
    points = json.loads(run.paths.summary.read_text())["recommended_by_variant"]
    assert points["caa"]["control_of"] == "caa"
    assert points["gated"]["control_of"] == "gated" and points["clamp"]["control_of"] == "caa"
    for name in ("caa", "gated", "clamp"):
        point = points[name]
        assert (point["layer"], point["alpha"]) == (points["caa"]["layer"], points["caa"]["alpha"])
        assert point["control"]["n_paired_prompts"] > 0
    own = points["gated"]["control"]["expected_max_toxicity_random"]
    shared = points["caa"]["control"]["expected_max_toxicity_random"]
    assert own < shared  # gated's control is its own random rows, not plain CAA's
    assert points["clamp"]["control"]["expected_max_toxicity_random"] == shared
    assert not points["gated"]["control"]["beats_control"]  # its own control is less toxic


def test_each_control_is_also_reported_at_its_own_searched_edge(tmp_path):
    """The random direction's own budget edge (its search, ``direction == "random"`` in the
    trace) is reported as ``control_own_edge`` and is a candidate of the equal-fluency
    control even where it costs more than the variant's point (it is within the budget)."""
    import json

    from test_operating_point import own_edge_run

    from steerlib import pipeline
    from steerlib.experiment.sweep import control_edges

    run = own_edge_run(tmp_path)  # the control's own edge: costlier, in budget, EMT 0.3
    assert control_edges(run.paths) == {("caa", 3): 2.0}
    pipeline.analyze(run, save_figures=False)
    record = json.loads(run.paths.summary.read_text())
    point = record["recommended_by_variant"]["caa"]
    assert (point["layer"], point["alpha"]) == (3, 1.0)
    assert point["control"]["expected_max_toxicity_random"] != pytest.approx(0.3, abs=0.05)
    own = point["control_own_edge"]
    assert own["control_alpha"] == 2.0 and own["n_paired_prompts"] > 0
    assert own["perplexity_control"] > own["perplexity_caa"]  # costlier, yet admitted
    # The least toxic admissible random setting is now the control's own edge.
    assert point["control_matched_fluency"]["control_alpha"] == 2.0
    assert record["recommended"]["control_own_edge"]["control_alpha"] == 2.0
