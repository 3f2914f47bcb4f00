from __future__ import annotations

import pandas as pd
import pytest
import torch

from steerlib.errors import ConfigError
from steerlib.generate.generation import (
    COMPLETION_COLUMNS,
    derive_seed,
    format_prompts,
    generate_completions,
    left_pad,
)
from steerlib.steer.hooks import active_hook_count, steering
from steerlib.steer.vectors import SteeringVector

PROMPTS = pd.DataFrame(
    {
        "prompt_id": ["p1", "p2", "p3"],
        "prompt": ["the dog said you are a", "hello", "we walk in the park and"],
        "subset": ["challenging", "benign", "benign"],
    }
)


def _vector(scale: float = 3.0) -> SteeringVector:
    gen = torch.Generator().manual_seed(5)
    return SteeringVector({2: torch.randn(32, generator=gen) * scale}, {})


def test_table_shape_and_columns(llama, tokenizer):
    df = generate_completions(
        llama,
        tokenizer,
        PROMPTS,
        vector=_vector(),
        layer=2,
        alphas=[-1.0, 0.0, 1.5],
        samples_per_prompt=2,
        max_new_tokens=5,
        progress=False,
        batch_size=4,
    )
    assert list(df.columns) == [*COMPLETION_COLUMNS, "subset"]
    assert len(df) == 3 * 3 * 2
    assert df.groupby(["prompt_id", "alpha"]).size().eq(2).all()
    assert df["prompt_id"].drop_duplicates().tolist() == ["p1", "p2", "p3"]
    assert set(df["layer"]) == {2} and set(df["direction"]) == {"caa"}
    assert df["n_new_tokens"].between(0, 5).all()
    assert active_hook_count(llama) == 0


def test_seeded_runs_repeat_and_seeds_differ(llama, tokenizer):
    kwargs = dict(
        samples_per_prompt=3, max_new_tokens=6, temperature=1.0, top_p=1.0, progress=False
    )
    a = generate_completions(llama, tokenizer, PROMPTS, seed=1, **kwargs)
    b = generate_completions(llama, tokenizer, PROMPTS, seed=1, **kwargs)
    c = generate_completions(llama, tokenizer, PROMPTS, seed=2, **kwargs)
    pd.testing.assert_frame_equal(a, b)
    assert a["completion"].tolist() != c["completion"].tolist()
    assert set(a["layer"]) == {-1} and set(a["direction"]) == {"none"}


def test_greedy_sweep_matches_single_alpha_steering(llama, tokenizer):
    vector = _vector()
    df = generate_completions(
        llama,
        tokenizer,
        PROMPTS.iloc[:1],
        vector=vector,
        layer=2,
        alphas=[-1.0, 0.0, 1.5],
        temperature=0.0,
        max_new_tokens=6,
        progress=False,
    )
    enc = tokenizer(PROMPTS.prompt.iloc[:1].tolist(), return_tensors="pt")
    for alpha in (-1.0, 0.0, 1.5):
        with torch.inference_mode(), steering(llama, vector, alpha, layers=2):
            out = llama.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0)
        text = tokenizer.decode(
            [t for t in out[0, enc.input_ids.shape[1] :].tolist() if t != tokenizer.eos_token_id],
            skip_special_tokens=True,
        )
        row = df[df.alpha == alpha].iloc[0]
        assert row.completion == text.split(tokenizer.eos_token)[0].strip() or text.startswith(
            row.completion
        )


def test_chat_format_uses_template(tokenizer):
    [text] = format_prompts(tokenizer, ["hello"], "chat")
    assert text == "<s> hello </s> <s>"
    with pytest.raises(ConfigError, match="prompt_format"):
        format_prompts(tokenizer, ["hello"], "markdown")


def test_argument_errors(llama, tokenizer):
    with pytest.raises(ConfigError, match="need a steering vector"):
        generate_completions(llama, tokenizer, PROMPTS, alphas=[1.0], progress=False)
    with pytest.raises(ConfigError, match="layer is required"):
        generate_completions(llama, tokenizer, PROMPTS, vector=_vector(), progress=False)
    with pytest.raises(ConfigError, match="top_p"):
        generate_completions(llama, tokenizer, PROMPTS, top_p=0.0, progress=False)
    with pytest.raises(ConfigError, match="'prompt'"):
        generate_completions(llama, tokenizer, PROMPTS[["prompt_id"]], progress=False)


def test_helpers():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert derive_seed(0, "a", 1) == derive_seed(0, "a", 1) != derive_seed(0, "a", 2)
    assert 0 <= derive_seed(123, "x") < 2**63


def test_decoding_settings_are_one_checked_value():
    from steerlib.errors import ConfigError
    from steerlib.experiment.config import RunParams
    from steerlib.generate.generation import DecodingSettings

    settings = DecodingSettings.of(RunParams(max_new_tokens=7, top_p=0.5, positions="generated"))
    assert settings.as_kwargs() == {
        "samples_per_prompt": 1,
        "max_new_tokens": 7,
        "temperature": 0.7,
        "top_p": 0.5,
        "prompt_format": "raw",
        "positions": "generated",
        "units": "raw",
        "seed": 0,
    }
    with pytest.raises(ConfigError, match="top_p"):
        DecodingSettings(top_p=1.5)
