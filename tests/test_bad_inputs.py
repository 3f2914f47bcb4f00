"""Bad input to `python -m steerlib run`: one clear line naming the culprit, nothing written.

Each input of issue 15 is a case here: the command ends before any work with the documented
exit code (2 bad input, 3 damaged run, 130 interrupted), every line of its message starts with
``steerlib: `` and names the culprit, no traceback is printed, and nothing is written (or
nothing already written is lost).
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from steerlib import pipeline
from steerlib._io import atomic_write_bytes, atomic_write_parquet, atomic_write_text
from steerlib.apps import status
from steerlib.errors import EXIT_BAD_INPUT, EXIT_DAMAGED_RUN, EXIT_INTERRUPTED
from steerlib.experiment import chain, preflight
from steerlib.experiment.runs import RunPaths, run_lock
from steerlib.pipeline import Run


def _record(text: str | None = "A prompt", challenging: bool = True, i: int = 0) -> str:
    prompt = {"toxicity": None} if text is None else {"text": text, "toxicity": None}
    return json.dumps(
        {"filename": f"f{i}", "begin": 0, "end": 1, "challenging": challenging, "prompt": prompt}
    )


@pytest.fixture(autouse=True)
def _no_notebooks(monkeypatch):
    """A bad input that slipped through fails here at once instead of running the chain."""
    import papermill

    def refuse(*args, **kwargs):
        raise AssertionError("a bad input reached the notebooks")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)


def _run(capsys, *sets: str, runs_dir: str | None = None, run_name: str | None = "bad", **kw):
    argv = [] if run_name is None else ["--run-name", run_name]
    for item in sets:
        argv += ["--set", item]
    if runs_dir:
        argv += ["--runs-dir", runs_dir]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", value]
    code = pipeline.main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


def _fails(capsys, runs, *sets: str, code: int = EXIT_BAD_INPUT, **kw) -> str:
    """Run with bad input: the exit code, one ``steerlib:`` line per problem, nothing written."""
    got, message, _ = _run(capsys, *sets, **kw)
    assert got == code, message
    assert message and "Traceback" not in message
    assert all(line.startswith("steerlib: ") for line in message.splitlines()), message
    assert not runs.exists(), "nothing may be written for a run that cannot start"
    return message


def _tiny(folder: Path) -> tuple[str, ...]:
    return (f"model={folder}", "layers=[1]")


# -- the inputs, one case each ---------------------------------------------------------
PARAMETER_CASES = {
    # silently accepted before, with a wrong result
    "repeated alpha": (["alphas=[0, 1, 1]"], ["'alphas'", "listed twice"]),
    "repeated layer": (["layers=[1, 1]"], ["'layers'", "listed twice"]),
    "infinite temperature": (["temperature=.inf"], ["'temperature'", "finite"]),
    "infinite budget": (["max_perplexity_increase=.inf"], ["'max_perplexity_increase'", "finite"]),
    "n_prompts true": (["n_prompts=true"], ["'n_prompts'", "whole number"]),
    "layers [true]": (["layers=[true]"], ["'layers'", "whole number"]),
    "alphas booleans": (["alphas=[true, false]"], ["'alphas'", "number"]),
    "trust yes": (["trust_remote_code=yes"], ["'trust_remote_code'", "true or false"]),
    "trust on": (["trust_remote_code=on"], ["'trust_remote_code'", "true or false"]),
    "trust 1": (["trust_remote_code=1"], ["'trust_remote_code'", "true or false"]),
    "float n_prompts": (["n_prompts=2.5"], ["'n_prompts'", "whole number"]),
    # late failures before
    "no alpha 0": (["alphas=[1.0]"], ["'alphas'", "lacks 0"]),
    "alpha inf in float32": (["alphas=[0, 1e39]"], ["'alphas'", "float32"]),
    "tiny temperature": (["temperature=1e-40"], ["'temperature'", "floor 0.01"]),
    "huge seed": ([f"seed={2**70}"], ["'seed'", "2**63-1"]),
    "negative seed": (["seed=-1"], ["'seed'", "2**63-1"]),
    "device banana": (["device=banana"], ["'device'", "'banana'"]),
    "dtype banana": (["dtype=banana"], ["'dtype'", "'banana'"]),
    "compare_with missing": (["compare_with=[nowhere]"], ["'compare_with'", "'nowhere'"]),
    "scorer path": (["scorer=models/my-scorer"], ["'scorer'", "models/my-scorer"]),
    "scorer unknown": (["scorer=perspective"], ["perspective", "profanity-check"]),
    "second scorer unknown": (["second_scorer=perspective"], ["'second_scorer'", "perspective"]),
    "perplexity model": (["perplexity_model=banana"], ["'perplexity_model'", "banana"]),
    "unknown parameter": (["alpha=1"], ["unknown parameter 'alpha'", "'alphas'"]),
    # tracebacks before
    "unclosed list": (["alphas=[0,1"], ["--set alphas, line 1, column"]),
    "python tag": (["model=!!python/object/apply:os.system [ls]"], ["--set model", "constructor"]),
    "alias": (["alphas=&a [0, *a]"], ["--set alphas", "aliases"]),
}


@pytest.mark.parametrize(("sets", "culprit"), PARAMETER_CASES.values(), ids=list(PARAMETER_CASES))
def test_bad_parameter(capsys, runs, tiny_model, sets, culprit):
    message = _fails(capsys, runs, *_tiny(tiny_model), *sets)
    for part in culprit:
        assert part in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(capsys, runs, tiny_model):
    message = _fails(capsys, runs, *_tiny(tiny_model), "device=cuda")
    assert "'device'" in message and "CUDA GPU" in message


@pytest.mark.parametrize(
    "name",
    ["", " ", "a\nb", "a\x00b", "x" * 300, "../up", ".hidden"],
    ids=["empty", "space", "newline", "nul", "300 characters", "parent", "dot"],
)
def test_bad_run_name(capsys, runs, tiny_model, name):
    message = _fails(capsys, runs, *_tiny(tiny_model), run_name=name)
    assert "run name" in message and len(message) < 300


def test_alias_bomb_is_refused_quickly_and_not_printed(capsys, runs, tmp_path):
    rows = ["a0: &a0 [0, 0, 0, 0, 0, 0, 0, 0, 0]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(rows) + "\nalphas: *a8\n")
    started = time.perf_counter()
    message = _fails(capsys, runs, config=str(config))
    assert time.perf_counter() - started < 5
    assert "bomb.yaml, line 2" in message and "aliases" in message and len(message) < 300


CONFIG_CASES = {
    "syntax error": (b"seed: 1\nalphas: [0, 1\n", ["line 3", "column"]),
    "tab indentation": (b"seed: 1\n\tmodel: x\n", ["line 2, column 1", "spaces, not tabs"]),
    "non-UTF-8": (b"seed: 1\nmodel: caf\xe9\n", ["line 2, column 11", "UTF-8"]),
    "empty": (b"", ["holds no parameters"]),
    "null": (b"null\n", ["holds no parameters"]),
    "zero": (b"0\n", ["mapping"]),
    "duplicate key": (b"seed: 1\nn_prompts: 3\nseed: 2\n", ["line 3", "'seed' appears twice"]),
    "NUL byte": (b"seed: 1\x00\n", ["line 1, column 8", "U+0000"]),
    "number as name": (b"1: 2\n", ["parameter names are text"]),
}


@pytest.mark.parametrize(("text", "culprit"), CONFIG_CASES.values(), ids=list(CONFIG_CASES))
def test_bad_parameter_file(capsys, runs, tmp_path, text, culprit):
    config = tmp_path / "params.yaml"
    config.write_bytes(text)
    message = _fails(capsys, runs, config=str(config))
    assert "params.yaml" in message
    for part in culprit:
        assert part in message


# -- model folders, prompt files, the cache ----------------------------------------------------
def test_model_folder_without_weights(capsys, runs, tmp_path, tiny_model):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_model / name).read_bytes())
    message = _fails(capsys, runs, f"model={folder}", "layers=[1]")
    assert "'model'" in message and str(folder) in message and "no *.safetensors" in message


def test_pickle_named_safetensors(capsys, runs, tmp_path, tiny_model):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for path in tiny_model.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "model.safetensors").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    message = _fails(capsys, runs, f"model={folder}", "layers=[1]")
    assert str(folder / "model.safetensors") in message and "not a readable safetensors" in message
    assert len(message.splitlines()) == 1


def test_prompt_longer_than_the_context(capsys, runs, tmp_path, tiny_model):
    source = tmp_path / "long.jsonl"
    records = [_record("the cat " * 150, i=0)]  # 300 tokens; the test model has 256 positions
    records += [_record(f"the dog {i}", i=i) for i in range(1, 9)]
    records += [_record(f"the tree {i}", challenging=False, i=10 + i) for i in range(9)]
    source.write_text("\n".join(records) + "\n")
    sets = [f"challenging_source={source}", "n_prompts=9", "n_pairs=1", "kl_texts=0"]
    message = _fails(capsys, runs, *_tiny(tiny_model), *sets)
    assert "f0:0-1" in message and "long.jsonl" in message and "256-token context" in message


def test_max_new_tokens_beyond_the_context(capsys, runs, tiny_model):
    message = _fails(capsys, runs, *_tiny(tiny_model), "max_new_tokens=100000")
    assert "'max_new_tokens'" in message and "256-token context" in message


def test_kv_cache_larger_than_memory(capsys, runs, tiny_model, monkeypatch):
    monkeypatch.setattr(preflight, "_memory_available", lambda device: 1e5)
    message = _fails(capsys, runs, *_tiny(tiny_model), "max_new_tokens=200")
    assert "KV cache" in message and "GB available" in message


def test_symlink_loop_as_prompt_source(capsys, runs, tmp_path, tiny_model):
    (tmp_path / "a.jsonl").symlink_to(tmp_path / "b.jsonl")
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    message = _fails(capsys, runs, *_tiny(tiny_model), f"challenging_source={tmp_path}/a.jsonl")
    assert "a.jsonl" in message and "symbolic link" in message


def test_lone_surrogate_in_a_prompt(capsys, runs, tmp_path, tiny_model):
    source = tmp_path / "surrogate.jsonl"
    source.write_text(_record("fine", i=1) + "\n" + _record("bad \ud800 text", i=2) + "\n")
    message = _fails(capsys, runs, *_tiny(tiny_model), f"challenging_source={source}")
    assert "surrogate.jsonl, line 2" in message and "\\ud800" in message


def test_cache_under_a_file(capsys, runs, tmp_path, monkeypatch):
    occupied = tmp_path / "a-file"
    occupied.write_text("x")
    monkeypatch.setenv("STEERLIB_CACHE", str(occupied / "cache"))
    message = _fails(capsys, runs)
    assert "STEERLIB_CACHE" in message and str(occupied) in message
    assert occupied.read_text() == "x"


def test_every_problem_is_reported_in_one_pass(capsys, runs, tmp_path, tiny_model):
    sets = [
        f"model={tiny_model}",
        "layers=[1, 9]",
        "scorer=perspective",
        "compare_with=[nowhere]",
        f"benign_source={tmp_path / 'nowhere.jsonl'}",
    ]
    lines = _fails(capsys, runs, *sets).splitlines()
    assert len(lines) == 4, lines
    for culprit in ("layer 9", "perspective", "'nowhere'", "nowhere.jsonl"):
        assert sum(culprit in line for line in lines) == 1, culprit


# -- the checks that were there before ---------------------------------------------------------
def test_unknown_model_names_the_offline_default(capsys, runs):
    message = _fails(capsys, runs, "model=no-such-org/no-such-model")
    assert "no-such-org/no-such-model" in message and "smollm2-135m-instruct" in message


def test_layer_out_of_range_gives_the_valid_range(capsys, runs, tiny_model):
    message = _fails(capsys, runs, f"model={tiny_model}", "layers=[1, 40]")
    assert "layer 40 is out of range" in message and "0..3" in message


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_alpha(capsys, runs, value):
    message = _fails(capsys, runs, f"alphas=[0.0, {value}]")
    assert "parameter 'alphas'" in message and "finite" in message


def test_unknown_and_mistyped_parameters(capsys, runs):
    assert "unknown parameter 'alpha'" in _fails(capsys, runs, "alpha=1")
    assert "parameter 'n_prompts'" in _fails(capsys, runs, "n_prompts=lots")


def test_empty_prompt_file(capsys, runs, tmp_path, tiny_model):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    message = _fails(capsys, runs, *_tiny(tiny_model), f"challenging_source={empty}")
    assert "empty.jsonl" in message


def test_malformed_json_line_names_file_and_line(capsys, runs, tmp_path, tiny_model):
    bad = tmp_path / "broken.jsonl"
    bad.write_text(_record(i=1) + "\n" + _record(i=2) + "\n{not json\n")
    message = _fails(capsys, runs, *_tiny(tiny_model), f"challenging_source={bad}")
    assert "broken.jsonl" in message and "line 3" in message


def test_record_without_prompt_text(capsys, runs, tmp_path, tiny_model):
    bad = tmp_path / "notext.jsonl"
    bad.write_text(_record(i=1) + "\n" + _record(None, i=2) + "\n")
    message = _fails(capsys, runs, *_tiny(tiny_model), f"challenging_source={bad}")
    assert "notext.jsonl" in message and "line 2" in message and "prompt.text" in message


def test_more_prompts_or_pairs_than_data(capsys, runs, tiny_model):
    assert "n_prompts" in _fails(capsys, runs, *_tiny(tiny_model), "n_prompts=500")
    assert "n_pairs" in _fails(capsys, runs, *_tiny(tiny_model), "n_pairs=500")


def test_output_directory_that_cannot_be_written(capsys, runs, tmp_path, tiny_model):
    occupied = tmp_path / "a-file"
    occupied.write_text("x")
    message = _fails(capsys, runs, *_tiny(tiny_model), runs_dir=str(occupied))
    assert "cannot be written" in message and str(occupied) in message
    assert occupied.read_text() == "x"


def test_missing_prompt_file(capsys, runs, tmp_path, tiny_model):
    message = _fails(capsys, runs, *_tiny(tiny_model), f"benign_source={tmp_path / 'no.jsonl'}")
    assert "no.jsonl" in message


# -- damaged runs: exit 3, the file named with the fix, nothing lost ---------------------------
def _damaged(runs: Path, tiny_model: Path, damage) -> tuple[RunPaths, dict[str, bytes]]:
    run = Run.open("hurt", runs_dir=str(runs), model=str(tiny_model), layers=[1])
    run.paths.set_status("01_data", "done")
    damage(run.paths)
    files = {p.name: p.read_bytes() for p in run.paths.root.rglob("*") if p.is_file()}
    return run.paths, files


DAMAGE = {
    "truncated params.json": (
        lambda p: p.params.write_text(p.params.read_text()[:25]),
        ["params.json", "delete it"],
    ),
    "truncated status.json": (
        lambda p: p.status.write_text(p.status.read_text()[:10]),
        ["status.json", "--force"],
    ),
    "corrupt vectors": (
        lambda p: (
            p.set_status("04_vectors", "done"),
            atomic_write_bytes(p.vectors, pickle.dumps([1, 2])),
        ),
        ["vectors.safetensors", "delete it"],
    ),
    "corrupt sweep part": (
        lambda p: atomic_write_bytes(p.sweep_parts / "caa-L1-b000.parquet", b"PAR1 cut"),
        ["caa-L1-b000.parquet", "only that unit"],
    ),
}


@pytest.mark.parametrize(("damage", "culprit"), DAMAGE.values(), ids=list(DAMAGE))
def test_damaged_run_names_the_file_and_the_fix(capsys, runs, tiny_model, damage, culprit):
    paths, before = _damaged(runs, tiny_model, damage)
    code, message, _ = _run(capsys, *_tiny(tiny_model), run_name="hurt")
    assert code == EXIT_DAMAGED_RUN, message
    assert message.startswith("steerlib: run 'hurt'") and "Traceback" not in message
    for part in culprit:
        assert part in message
    after = {p.name: p.read_bytes() for p in paths.root.rglob("*") if p.is_file()}
    assert after == before, "a damaged run is reported, not changed"


def test_status_reports_a_damaged_run_and_goes_on(capsys, runs, tiny_model):
    _damaged(runs, tiny_model, DAMAGE["truncated status.json"][0])
    Run.open("fine", runs_dir=str(runs), model=str(tiny_model), layers=[1])
    assert status.main(["--runs-dir", str(runs)]) == EXIT_DAMAGED_RUN
    captured = capsys.readouterr()
    assert captured.out.startswith("fine (")
    assert captured.err.count("\n") == 1 and "status.json" in captured.err
    assert "Traceback" not in captured.err


def test_status_of_a_too_long_run_name(capsys, runs):
    assert status.main(["x" * 300]) == EXIT_BAD_INPUT
    assert "at most 100 characters" in capsys.readouterr().err


# -- recovery ----------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b'{"pid": ', b"\xff\xfe"], ids=["empty", "cut", "bytes"])
def test_an_old_empty_or_unreadable_lock_is_taken_over(tmp_path, content):
    paths = RunPaths.for_run("crashed", tmp_path)
    paths.root.mkdir()
    paths.lock.write_bytes(content)
    os.utime(paths.lock, (time.time() - 60, time.time() - 60))
    with run_lock(paths):
        assert json.loads(paths.lock.read_text())["pid"] == os.getpid()
    assert not paths.lock.exists()


def test_a_fresh_empty_lock_is_respected(tmp_path):
    from steerlib.experiment.runs import RunLockedError

    paths = RunPaths.for_run("starting", tmp_path)
    paths.root.mkdir()
    paths.lock.write_bytes(b"")
    with pytest.raises(RunLockedError, match="try again"):
        with run_lock(paths):
            pass
    assert paths.lock.exists()


def test_leftover_temporary_files_are_cleaned_when_the_lock_is_taken(tmp_path):
    paths = RunPaths.for_run("killed", tmp_path)
    atomic_write_parquet(paths.sweep_parts / "caa-L1-b000.parquet", pd.DataFrame({"a": [1]}))
    atomic_write_text(paths.root / "kept.txt", "x")
    old = paths.sweep_parts / ".caa-L1-b001.parquet.k1ll3d.tmp"
    fresh = paths.root / ".status.json.wr1t1ng.tmp"
    for path in (old, fresh):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    with run_lock(paths):
        pass
    assert not old.exists() and fresh.exists()
    assert (paths.sweep_parts / "caa-L1-b000.parquet").exists() and (
        paths.root / "kept.txt"
    ).exists()


def test_ctrl_c_is_one_line(capsys, runs, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(chain, "run_chain", interrupted)
    code, message, _ = _run(capsys)
    assert code == EXIT_INTERRUPTED
    assert message == "steerlib: interrupted; resume with the same command."


# -- the draw preflight checks is step 01's (review 6) ----------------------------------------
def _small_source(tmp_path: Path, n_benign: int) -> Path:
    """9 + 2 challenging prompts with toxic continuations, ``n_benign`` benign ones."""

    def record(text: str, i: int, toxicity: float) -> str:
        return json.dumps(
            {
                "filename": f"f{i}",
                "begin": 0,
                "end": 1,
                "challenging": toxicity > 0.5,
                "prompt": {"text": text, "toxicity": toxicity},
                "continuation": {"text": f"{text} goes on", "toxicity": toxicity},
            }
        )

    source = tmp_path / "small.jsonl"
    records = [record(f"the dog {i}", i, 0.9) for i in range(11)]
    records += [record(f"the tree {i}", 20 + i, 0.01) for i in range(n_benign)]
    source.write_text("\n".join(records) + "\n")
    return source


def test_kl_texts_all_leaving_under_two_held_out_texts_is_refused(
    capsys, runs, tmp_path, tiny_model
):
    source = _small_source(tmp_path, n_benign=10)  # 9 evaluation prompts: at most 1 left
    sets = [f"challenging_source={source}", f"benign_source={source}", "n_prompts=9", "n_pairs=1"]
    message = _fails(capsys, runs, *_tiny(tiny_model), *sets, "kl_texts=all", "alpha_search=true")
    assert "'kl_texts'" in message and "held-out benign text" in message
    assert "at least 2" in message


def test_preflight_draws_without_the_scorer_heads_training_records(
    capsys, runs, tmp_path, tiny_model, monkeypatch
):
    from steerlib.data import perspective

    source = _small_source(tmp_path, n_benign=9)
    trained = frozenset(perspective.id_hash(f"f{20 + i}:0-1") for i in range(9))
    monkeypatch.setattr(perspective, "scorer_manifest_hashes", lambda name="": trained)
    sets = [f"challenging_source={source}", f"benign_source={source}", "n_prompts=9"]
    message = _fails(
        capsys, runs, *_tiny(tiny_model), *sets, "n_pairs=1", "kl_texts=0", "alpha_search=false"
    )
    assert "benign" in message  # every benign record is the head's: step 01 would find none
