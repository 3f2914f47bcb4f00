from __future__ import annotations

import re

import pytest

from steerlib.apps.bench import flops_per_token, main


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory, tokenizer, llama):
    folder = tmp_path_factory.mktemp("tiny-llama")
    llama.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_bench_report_format(tiny_llama_folder, capsys):
    code = main(
        [
            "--model",
            str(tiny_llama_folder),
            "--device",
            "cpu",
            "--n-prompts",
            "5",
            "--alphas",
            "-1",
            "0",
            "1.5",
            "--samples",
            "3",
            "--max-new-tokens",
            "5",
            "--repeats",
            "2",
            "--capture-texts",
            "4",
            "--parity-prompts",
            "3",
            "--scorers",
            "profanity-check",
            "--matmul-size",
            "128",
            "--no-progress",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    text = "\n".join(lines)
    assert re.fullmatch(r"speedup: \d+\.\d\d", lines[-1])
    for tag in ("[load] cold", "[load] cached", "[matmul] peak", "[capture]", "[score]"):
        assert tag in text, tag
    assert "[logits] trained model" in text
    assert re.search(r"\[sizes\] engine: 640 rows per batch, 16384 tokens per unit \(cpu", text)
    assert "decode step: synced, finished rows dropped, CUDA graphs off" in text
    assert re.search(r"summary on cpu \(.*\), float32", text)
    assert re.search(r"in float32 .*: 18/18 identical$", text, re.MULTILINE)
    parity = re.search(r"\[parity\].*: (\d+)/(\d+) identical", text)
    assert parity and parity.group(1) == parity.group(2) == str(3 * 3 * 2)
    rounds = re.findall(r"\[sweep\] round (\d) (straightforward|engine)\s+(\d+) completions", text)
    assert [(r, m) for r, m, _ in rounds] == [
        ("1", "straightforward"),
        ("1", "engine"),
        ("2", "straightforward"),
        ("2", "engine"),
    ]
    assert {int(n) for _, _, n in rounds} == {5 * 3 * 3}
    assert re.search(r"ratio engine / straightforward: tok/s \d+\.\d\d", text)
    assert re.search(r"engine useful work: .*% of the measured matmul peak", text)
    assert re.search(r"\[score\] profanity-check: 45 completions in .* texts/s", text)


def test_bench_rejects_bad_flags(tiny_llama_folder):
    from steerlib.errors import ConfigError

    with pytest.raises(ConfigError, match="--samples"):
        main(["--model", str(tiny_llama_folder), "--samples", "0"])
    with pytest.raises(ConfigError, match="--logit-scale"):
        main(["--model", str(tiny_llama_folder), "--logit-scale", "big"])


def test_flops_per_token_counts_linear_weights(llama):
    config = llama.config
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * hidden // config.num_attention_heads
    per_layer = hidden * (2 * hidden + 2 * kv) + 3 * hidden * inter
    expected = 2 * (layers * per_layer + config.vocab_size * hidden)
    assert flops_per_token(llama) == expected


def test_bench_skips_roberta_without_cache_or_hub(monkeypatch, capsys):
    import steerlib.apps.doctor as doctor
    import steerlib.evaluate.scoring as scoring
    from steerlib.apps.bench import _score_section

    monkeypatch.setattr(
        doctor, "check_hub", lambda: doctor.Check("hub", "WARN", "hub unreachable", "")
    )
    monkeypatch.setattr(
        doctor, "check_toxic_roberta", lambda: doctor.Check("r", "WARN", "not cached", "")
    )

    def refuse(*args, **kwargs):
        raise AssertionError("load_scorer must not be called")

    monkeypatch.setattr(scoring, "load_scorer", refuse)
    _score_section(["a text"], ["unbiased-toxic-roberta"], "cpu")
    out = capsys.readouterr().out
    assert "[score] unbiased-toxic-roberta: unavailable (not cached; hub unreachable)" in out


def test_bench_variant_flag_steers_both_loops_with_the_variant(tiny_llama_folder, capsys):
    code = main(
        [
            "--model",
            str(tiny_llama_folder),
            "--device",
            "cpu",
            "--n-prompts",
            "3",
            "--alphas",
            "0",
            "4",
            "--samples",
            "2",
            "--max-new-tokens",
            "4",
            "--repeats",
            "1",
            "--capture-texts",
            "4",
            "--parity-prompts",
            "2",
            "--scorers",
            "",
            "--matmul-size",
            "64",
            "--variant",
            "gated",
            "--layer",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "layer 2, variant gated," in text
    parity = re.search(r"\[parity\] .*variant gated .*: (\d+)/(\d+) identical", text)
    assert parity and parity.group(1) == parity.group(2) == str(2 * 2 * 2)
    gate = re.search(r"\[gate\] .*fired at (\d+) of (\d+) steered positions", text)
    # 3 prompts x 2 samples at alpha 4, each with at least its 4 generated positions gated
    assert gate and 0 <= int(gate.group(1)) <= int(gate.group(2)) and int(gate.group(2)) >= 24
    assert re.search(r"speedup: \d+\.\d\d", text)


def test_bench_without_variant_reports_no_gate(tiny_llama_folder):
    from steerlib.apps.bench import _parser

    args = _parser().parse_args(["--model", str(tiny_llama_folder)])
    assert args.variant == "caa" and args.multilayer_span == 5
    with pytest.raises(SystemExit):
        _parser().parse_args(["--variant", "sideways"])


def test_bench_refuses_ablate_and_clamp_alphas_outside_zero_one():
    from steerlib.errors import ConfigError

    for name in ("ablate", "clamp"):
        with pytest.raises(ConfigError, match=rf"--variant {name} takes alphas in \[0, 1\]"):
            main(["--model", "unused", "--variant", name, "--alphas", "0", "1.5"])
