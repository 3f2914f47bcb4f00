from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import make_llama
from scipy.stats import binomtest
from transformers import TopPLogitsWarper
from transformers.cache_utils import DynamicCache, DynamicLayer

from steerlib.errors import ConfigError
from steerlib.generate.engine import (
    PreallocatedLayer,
    WorkUnit,
    decode_batch,
    generate_unit,
    model_cache,
    preallocate_cache,
    run_sweep,
    sample_next,
    sweep_units,
)
from steerlib.generate.generation import COMPLETION_COLUMNS, left_pad, stop_token_ids
from steerlib.generate.sampling import _nucleus
from steerlib.steer.hooks import active_hook_count, steering
from steerlib.steer.vectors import SteeringVector

PROMPTS = pd.DataFrame(
    {
        "prompt_id": ["p1", "p2", "p3", "p4", "p5"],
        "prompt": [
            "the dog said you are a",
            "hello",
            "we walk in the park and the cat is very",
            "you idiot",
            "what a nice day , i love",
        ],
        "subset": ["challenging", "benign", "benign", "challenging", "benign"],
    }
)
ALPHAS = [-1.0, 0.0, 1.5]


def _vector(layers: tuple[int, ...] = (1, 2), scale: float = 3.0) -> SteeringVector:
    gen = torch.Generator().manual_seed(5)
    return SteeringVector({k: torch.randn(32, generator=gen) * scale for k in layers}, {})


def _reference(model, tokenizer, prompts, vector, layer, alpha, positions, max_new_tokens):
    """Plain per-alpha generate (all prompts in one left-padded batch), new tokens per row."""
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    input_ids, mask = left_pad(ids, tokenizer.pad_token_id)
    with steering(model, vector, alpha, layer, positions=positions):
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[:, input_ids.shape[1] :]


def _cut(row: list[int], stops: set[int]) -> list[int]:
    """Tokens up to and including the first stop token."""
    for i, tok in enumerate(row):
        if tok in stops:
            return row[: i + 1]
    return row


@pytest.mark.parametrize("positions", ["all", "generated"])
@pytest.mark.parametrize("name", ["llama", "phi3", "gpt2", "gemma3"])
def test_greedy_tokens_equal_per_alpha_generate(request, tokenizer, name, positions):
    model = request.getfixturevalue(name)
    layer = 1
    vector = _vector()
    texts = PROMPTS["prompt"].tolist()
    stops = stop_token_ids(model, tokenizer)
    with torch.inference_mode():
        got = decode_batch(
            model,
            [tokenizer(p)["input_ids"] for p in texts],
            vector=vector,
            layer=layer,
            alphas=ALPHAS,
            samples_per_prompt=2,
            max_new_tokens=12,
            temperature=0.0,
            top_p=1.0,
            positions=positions,
            units="raw",
            stop_ids=stops,
            pad_id=tokenizer.pad_token_id,
        )
        assert got.shape == (len(texts) * len(ALPHAS) * 2, 12)
        for a, alpha in enumerate(ALPHAS):
            ref = _reference(model, tokenizer, texts, vector, layer, alpha, positions, 12)
            for p in range(len(texts)):
                for s in range(2):
                    row = got[(p * len(ALPHAS) + a) * 2 + s].tolist()
                    assert _cut(row, stops) == _cut(ref[p].tolist(), stops), (p, alpha, s)
    assert active_hook_count(model) == 0


def test_generated_mode_shares_first_token_and_steers_later(llama, tokenizer):
    kwargs = dict(
        vector=_vector(scale=6.0),
        layer=1,
        alphas=[-2.0, 2.0],
        samples_per_prompt=1,
        max_new_tokens=8,
        temperature=0.0,
        top_p=1.0,
        units="raw",
        stop_ids=set(),
        pad_id=tokenizer.pad_token_id,
    )
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS["prompt"]]
    with torch.inference_mode():
        generated = decode_batch(llama, ids, positions="generated", **kwargs)
        steered_all = decode_batch(llama, ids, positions="all", **kwargs)
    first = generated[:, 0].view(len(ids), 2)
    assert torch.equal(first[:, 0], first[:, 1])
    assert not torch.equal(generated, steered_all)
    assert not torch.equal(generated[0::2], generated[1::2])


def test_rows_that_stop_are_dropped_and_match_generate(tokenizer):
    model = make_llama(tokenizer, seed=3)
    texts = PROMPTS["prompt"].tolist()
    vector = _vector()
    with torch.inference_mode():
        plain = _reference(model, tokenizer, texts, vector, 1, 0.5, "all", 12)
    # Make a frequent token a stop token, so that rows stop at different steps.
    values, counts = plain.flatten().unique(return_counts=True)
    frequent = int(values[counts.argmax()])
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, frequent]
    stops = stop_token_ids(model, tokenizer)
    with torch.inference_mode():
        got = decode_batch(
            model,
            [tokenizer(p)["input_ids"] for p in texts],
            vector=vector,
            layer=1,
            alphas=[0.5, -1.0],
            samples_per_prompt=1,
            max_new_tokens=12,
            temperature=0.0,
            top_p=1.0,
            positions="all",
            units="raw",
            stop_ids=stops,
            pad_id=tokenizer.pad_token_id,
        )
        ref = _reference(model, tokenizer, texts, vector, 1, 0.5, "all", 12)
    lengths = []
    for p in range(len(texts)):
        row = got[2 * p].tolist()
        assert _cut(row, stops) == _cut(ref[p].tolist(), stops)
        cut = _cut(row, stops)
        lengths.append(len(cut))
        assert all(tok == tokenizer.pad_token_id for tok in row[len(cut) :])
    assert min(lengths) < 12, "no row stopped early; the test needs a stop"


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_generate_unit_table_matches_generate_and_samples_agree(llama, tokenizer, positions):
    vector = _vector()
    units = sweep_units(
        PROMPTS,
        layers=[2],
        directions=["caa"],
        alphas=ALPHAS,
        samples_per_prompt=3,
        max_new_tokens=8,
        tokens_per_unit=150,
        tokenizer=tokenizer,
    )
    assert len(units) > 1
    tables = [
        generate_unit(
            llama,
            tokenizer,
            unit,
            PROMPTS,
            vector=vector,
            alphas=ALPHAS,
            samples_per_prompt=3,
            max_new_tokens=8,
            temperature=0.0,
            positions=positions,
            max_batch_rows=7,
        )
        for unit in units
    ]
    table = pd.concat(tables, ignore_index=True)
    assert list(table.columns) == [*COMPLETION_COLUMNS, "subset"]
    assert len(table) == len(PROMPTS) * len(ALPHAS) * 3
    assert table.groupby(["prompt_id", "alpha"])["completion"].nunique().eq(1).all()
    subsets = table.drop_duplicates("prompt_id").set_index("prompt_id")["subset"]
    assert subsets.to_dict() == PROMPTS.set_index("prompt_id")["subset"].to_dict()
    for alpha in ALPHAS:
        ref = _reference(
            llama, tokenizer, PROMPTS["prompt"].tolist(), vector, 2, alpha, positions, 8
        )
        expected = tokenizer.batch_decode(ref, skip_special_tokens=True)
        got = table[(table["alpha"] == alpha) & (table["sample"] == 0)].set_index("prompt_id")
        for pid, text in zip(PROMPTS["prompt_id"], expected, strict=True):
            assert got.loc[pid, "completion"] == text


def test_sweep_units_partition(tokenizer):
    kwargs = dict(
        layers=[1, 2],
        directions=["caa", "random"],
        alphas=ALPHAS,
        samples_per_prompt=2,
        max_new_tokens=5,
        tokenizer=tokenizer,
    )
    units = sweep_units(PROMPTS, tokens_per_unit=60, **kwargs)
    assert units == sweep_units(PROMPTS, tokens_per_unit=60, **kwargs)
    keys = [u.key for u in units]
    assert len(set(keys)) == len(keys)
    assert keys[0] == "caa-L1-b000"
    # layer-major: each layer's CAA units, then its control's, then the next layer
    assert [(u.layer, u.direction) for u in units] == sorted(
        ((u.layer, u.direction) for u in units), key=lambda k: (k[0], k[1] != "caa")
    )
    pairs = zip(PROMPTS["prompt_id"], PROMPTS["prompt"], strict=True)
    lengths = {pid: len(tokenizer(text)["input_ids"]) for pid, text in pairs}
    for direction in ("caa", "random"):
        for layer in (1, 2):
            mine = [u for u in units if u.direction == direction and u.layer == layer]
            ids = [pid for u in mine for pid in u.prompt_ids]
            assert sorted(ids) == sorted(PROMPTS.prompt_id)
            assert [lengths[i] for i in ids] == sorted(lengths[i] for i in ids)
            for u in mine:  # 60 tokens per unit = 2 prompts of 3 alphas x 2 samples x 5 tokens
                assert 1 <= len(u.prompt_ids) <= 2
    one = sweep_units(PROMPTS, tokens_per_unit=10**6, **kwargs)
    assert len(one) == 4 and all(len(u.prompt_ids) == len(PROMPTS) for u in one)
    with pytest.raises(ConfigError, match="tokens_per_unit"):
        sweep_units(PROMPTS, tokens_per_unit=0, **kwargs)


def test_nucleus_matches_top_p_warper():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 300, generator=gen) * 3
    for top_p in (0.3, 0.9, 0.99):
        warped = TopPLogitsWarper(top_p=top_p)(None, logits.clone())
        expected = torch.isfinite(warped)
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep_sorted = _nucleus(sorted_probs, top_p)
        keep = torch.zeros_like(expected).scatter(1, order, keep_sorted)
        assert torch.equal(keep, expected)
        draws = torch.stack(
            [sample_next(logits, temperature=1.0, top_p=top_p, generator=gen) for _ in range(20)]
        )
        assert expected.gather(1, draws.T).all()


@pytest.mark.parametrize("others", [400, 4000, 15000])
def test_tiered_top_p_sampling_follows_the_nucleus_distribution(others):
    # One token holds about 20% of the mass and `others` tokens share the rest nearly equally
    # (no exact ties), so the nucleus (p = 0.9) has about 0.875 * others tokens: past the first
    # top-k tier (400), the second (4000) or every tier (15000, a full sort). Renormalizing over
    # a truncated candidate set would draw the top token far more often than the nucleus does.
    vocab, rows = 20000, 300
    logits = torch.full((vocab,), -40.0)
    logits[1 : others + 1] = torch.linspace(-0.05, 0.05, others)
    logits[0] = float(torch.log(torch.tensor(others / 4.0)))
    warped = TopPLogitsWarper(top_p=0.9)(None, logits[None].clone())[0]
    keep = torch.isfinite(warped)
    probs = torch.softmax(logits, -1)
    expected = float(probs[0] / probs[keep].sum())
    gen = torch.Generator().manual_seed(11)
    draws = sample_next(
        logits.repeat(rows, 1), temperature=1.0, top_p=0.9, generator=gen, overwrite=True
    )
    assert keep[draws].all()
    top = int((draws == 0).sum())
    assert binomtest(top, rows, expected).pvalue > 1e-3, (top, rows, expected)
    assert draws[draws != 0].unique().numel() > 0.3 * min(rows, others)


def test_preallocated_layer_matches_dynamic_layer():
    gen = torch.Generator().manual_seed(0)
    k0, v0 = torch.randn(2, 3, 4, 5, generator=gen), torch.randn(2, 3, 4, 5, generator=gen)
    dynamic = DynamicLayer()
    dynamic.update(k0, v0)
    dynamic.batch_repeat_interleave(2)
    layer = PreallocatedLayer(k0, v0, capacity=6, repeats=2)
    assert layer.get_seq_length() == 4 and layer.capacity == 6
    for step in range(4):  # the last two steps outgrow the capacity
        k, v = torch.randn(4, 3, 1, 5, generator=gen), torch.randn(4, 3, 1, 5, generator=gen)
        expected = dynamic.update(k, v)
        got = layer.update(k, v)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert layer.get_seq_length() == 5 + step
    assert layer.capacity >= 8
    keep = torch.tensor([3, 0])
    dynamic.batch_select_indices(keep)
    layer.batch_select_indices(keep)
    assert torch.equal(layer.keys, dynamic.keys) and torch.equal(layer.values, dynamic.values)
    layer.crop(-3)
    assert layer.get_seq_length() == 5 and torch.equal(layer.keys, dynamic.keys[:, :, :5])
    with pytest.raises(ValueError):
        layer.crop(2)


def test_preallocated_cache_decodes_like_a_dynamic_cache(llama):
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.inference_mode():
        reference = model_cache(llama(input_ids=ids, use_cache=True))
        cache = model_cache(llama(input_ids=ids, use_cache=True))
        assert isinstance(cache, DynamicCache)
        reference.batch_repeat_interleave(3)
        preallocate_cache(cache, capacity=6, repeats=3)
        assert all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)
        step = torch.tensor([[1], [2], [3], [4], [5], [6]])
        for _ in range(3):  # the third step outgrows the capacity
            a = llama(input_ids=step, cache=reference, use_cache=True)
            b = llama(input_ids=step, cache=cache, use_cache=True)
            assert torch.equal(a.logits, b.logits)
            step = a.logits[:, -1].argmax(-1, keepdim=True)
        assert cache.get_seq_length() == 7


def test_sampled_runs_repeat_with_a_seed(llama, tokenizer):
    vectors = {"caa": _vector()}
    kwargs = dict(
        layers=[1],
        alphas=[0.0, 1.0],
        samples_per_prompt=3,
        max_new_tokens=6,
        temperature=1.0,
        top_p=0.9,
        progress=False,
    )
    a = run_sweep(llama, tokenizer, PROMPTS, vectors, seed=1, **kwargs)
    b = run_sweep(llama, tokenizer, PROMPTS, vectors, seed=1, **kwargs)
    c = run_sweep(llama, tokenizer, PROMPTS, vectors, seed=2, **kwargs)
    pd.testing.assert_frame_equal(a, b)
    assert a["completion"].tolist() != c["completion"].tolist()
    assert a.groupby(["prompt_id", "alpha"])["completion"].nunique().gt(1).any()
    assert set(a["direction"]) == {"caa"} and set(a["layer"]) == {1}


def test_resume_reproduces_an_uninterrupted_run(llama, tokenizer):
    vectors = {"caa": _vector(), "random": _vector().random_like(3)}
    kwargs = dict(
        layers=[1, 2],
        alphas=ALPHAS,
        samples_per_prompt=2,
        max_new_tokens=5,
        temperature=0.8,
        seed=7,
        tokens_per_unit=70,
        progress=False,
    )
    seen: dict[str, pd.DataFrame] = {}
    calls: list[str] = []

    def record(unit: WorkUnit, table: pd.DataFrame) -> None:
        calls.append(unit.key)
        seen[unit.key] = table

    full = run_sweep(llama, tokenizer, PROMPTS, vectors, on_unit=record, **kwargs)
    assert len(calls) == len(set(calls)) >= 8
    assert pd.concat(seen.values(), ignore_index=True).equals(full)
    done = calls[: len(calls) // 2]
    resumed_calls: list[str] = []
    resumed = run_sweep(
        llama,
        tokenizer,
        PROMPTS,
        vectors,
        done=set(done),
        on_unit=lambda unit, table: resumed_calls.append(unit.key),
        **kwargs,
    )
    assert resumed_calls == calls[len(done) :]
    combined = pd.concat([*(seen[k] for k in done), resumed], ignore_index=True)
    pd.testing.assert_frame_equal(combined, full)
    assert active_hook_count(llama) == 0


def test_hooks_removed_when_on_unit_raises(llama, tokenizer):
    def boom(unit: WorkUnit, table: pd.DataFrame) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        run_sweep(
            llama,
            tokenizer,
            PROMPTS,
            {"caa": _vector()},
            layers=[1],
            alphas=[1.0],
            max_new_tokens=3,
            on_unit=boom,
            progress=False,
        )
    assert active_hook_count(llama) == 0


def test_bad_arguments_raise(llama, tokenizer):
    unit = WorkUnit("caa-L1-b000", "caa", 1, 0, ("nope",))
    with pytest.raises(ConfigError, match="lacks"):
        generate_unit(
            llama, tokenizer, unit, PROMPTS, vector=_vector(), alphas=[1.0], max_new_tokens=2
        )
    good = WorkUnit("caa-L1-b000", "caa", 1, 0, ("p1",))
    with pytest.raises(ConfigError, match="need a steering vector"):
        generate_unit(llama, tokenizer, good, PROMPTS, vector=None, alphas=[1.0])
    with pytest.raises(ConfigError, match="empty"):
        run_sweep(llama, tokenizer, PROMPTS, {}, layers=[1], alphas=[1.0])


@pytest.mark.slow
def test_smollm2_greedy_parity():
    from steerlib.data.prompts import load_prompts
    from steerlib.models.loading import load_model

    model, tokenizer = load_model("smollm2-135m-instruct", device="cpu")
    prompts = load_prompts("bundled").iloc[[0, 4, 10]].reset_index(drop=True)
    gen = torch.Generator().manual_seed(0)
    vector = SteeringVector({18: torch.randn(576, generator=gen) * 0.3}, {})
    stops = stop_token_ids(model, tokenizer)
    texts = prompts["prompt"].tolist()
    assert len({len(tokenizer(t)["input_ids"]) for t in texts}) == 3
    for positions in ("all", "generated"):
        with torch.inference_mode():
            got = decode_batch(
                model,
                [tokenizer(t)["input_ids"] for t in texts],
                vector=vector,
                layer=18,
                alphas=[-1.0, 1.5],
                samples_per_prompt=2,
                max_new_tokens=10,
                temperature=0.0,
                top_p=1.0,
                positions=positions,
                units="raw",
                stop_ids=stops,
                pad_id=tokenizer.pad_token_id,
            )
            for a, alpha in enumerate([-1.0, 1.5]):
                ref = _reference(model, tokenizer, texts, vector, 18, alpha, positions, 10)
                for p in range(len(texts)):
                    for s in range(2):
                        row = got[(p * 2 + a) * 2 + s].tolist()
                        assert _cut(row, stops) == _cut(ref[p].tolist(), stops)
    assert active_hook_count(model) == 0
