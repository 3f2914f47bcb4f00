"""Bad input to `python -m steerlib run`: one clear message naming the culprit, nothing written."""

from __future__ import annotations

import json

import pytest

from steerlib import pipeline


def _record(text: str | None = "A prompt", challenging: bool = True, i: int = 0) -> str:
    prompt = {"toxicity": None} if text is None else {"text": text, "toxicity": None}
    return json.dumps(
        {"filename": f"f{i}", "begin": 0, "end": 1, "challenging": challenging, "prompt": prompt}
    )


@pytest.fixture
def runs(tmp_path, monkeypatch):
    folder = tmp_path / "runs"
    monkeypatch.setenv("STEERLIB_RUNS_DIR", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


def _fails(capsys, runs, *sets: str, runs_dir: str | None = None) -> str:
    argv = ["--run-name", "bad"]
    for item in sets:
        argv += ["--set", item]
    if runs_dir:
        argv += ["--runs-dir", runs_dir]
    assert pipeline.main(argv) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("steerlib: ") and "Traceback" not in message
    assert not (runs / "bad").exists(), "nothing may be written for a run that cannot start"
    return message


def test_unknown_model_names_the_offline_default(capsys, runs):
    message = _fails(capsys, runs, "model=no-such-org/no-such-model")
    assert "no-such-org/no-such-model" in message and "smollm2-135m-instruct" in message


def test_layer_out_of_range_gives_the_valid_range(capsys, runs):
    message = _fails(capsys, runs, "layers=[12, 40]")
    assert "layer 40 is out of range" in message and "0..29" in message


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_alpha(capsys, runs, value):
    message = _fails(capsys, runs, f"alphas=[0.0, {value}]")
    assert "parameter 'alphas'" in message and "finite" in message


def test_unknown_and_mistyped_parameters(capsys, runs):
    assert "unknown parameter 'alpha'" in _fails(capsys, runs, "alpha=1")
    assert "parameter 'n_prompts'" in _fails(capsys, runs, "n_prompts=lots")


def test_empty_prompt_file(capsys, runs, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    message = _fails(capsys, runs, f"challenging_source={empty}")
    assert "empty.jsonl" in message


def test_malformed_json_line_names_file_and_line(capsys, runs, tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text(_record(i=1) + "\n" + _record(i=2) + "\n{not json\n")
    message = _fails(capsys, runs, f"challenging_source={bad}")
    assert "broken.jsonl" in message and "line 3" in message


def test_record_without_prompt_text(capsys, runs, tmp_path):
    bad = tmp_path / "notext.jsonl"
    bad.write_text(_record(i=1) + "\n" + _record(None, i=2) + "\n")
    message = _fails(capsys, runs, f"challenging_source={bad}")
    assert "notext.jsonl" in message and "line 2" in message and "prompt.text" in message


def test_more_prompts_or_pairs_than_data(capsys, runs):
    assert "n_prompts" in _fails(capsys, runs, "n_prompts=500")
    assert "n_pairs" in _fails(capsys, runs, "n_pairs=500")


def test_unknown_scorer(capsys, runs):
    message = _fails(capsys, runs, "scorer=perspective")
    assert "perspective" in message and "profanity-check" in message


def test_output_directory_that_cannot_be_written(capsys, runs, tmp_path):
    occupied = tmp_path / "a-file"
    occupied.write_text("x")
    message = _fails(capsys, runs, runs_dir=str(occupied))
    assert "cannot be written" in message and str(occupied) in message
    assert occupied.read_text() == "x"


def test_missing_prompt_file(capsys, runs, tmp_path):
    message = _fails(capsys, runs, f"benign_source={tmp_path / 'nowhere.jsonl'}")
    assert "nowhere.jsonl" in message
