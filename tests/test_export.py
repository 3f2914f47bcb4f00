"""Export to llama.cpp control vectors and repeng, import back: values, header, conventions.

The convention tests do not trust steerlib.apps.export's reader: they read the file with
``gguf.GGUFReader`` and apply it the way llama.cpp does (``common_control_vector_load_one`` puts
``direction.N`` in ``tensors[N]``; the graph of block ``il`` ends with
``cur = build_cvec(cur, il)``, which adds ``tensors[il]``), i.e. ``strength * direction.N``
added to the output of 0-based block ``N``, and the way repeng does (``ControlModule.forward``:
``output + coeff * directions[N]`` on ``model_layer_list(model)[N]``), and compare the logits
with steerlib's own ``steering``.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from steerlib.apps.cli import main as cli_main
from steerlib.apps.export import (
    from_gguf,
    from_repeng,
    main,
    model_hint_for,
    to_gguf,
    to_repeng,
)
from steerlib.errors import ConfigError, DataError
from steerlib.models.layers import get_decoder_layers, num_layers
from steerlib.steer.hooks import active_hook_count, steering
from steerlib.steer.vectors import SteeringVector, model_provenance

PROMPT = "the dog said you are a stupid"


def _vector(model, layers: list[int], seed: int = 3, scale: float = 2.0) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    width = model.config.hidden_size if hasattr(model.config, "hidden_size") else 32
    directions = {k: torch.randn(width, generator=gen) * scale for k in layers}
    return SteeringVector(
        directions,
        model_provenance(model) | {"method": "test", "direction": "caa"},
        {k: 10.0 + k for k in layers},
    )


def _raw(path: Path) -> tuple[dict[str, object], dict[int, np.ndarray], dict[str, object]]:
    """Header values, direction tensors and header types, read with gguf alone."""
    reader = gguf.GGUFReader(path)
    values: dict[str, object] = {}
    types: dict[str, object] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        types[key] = field.types[0]
        part = field.parts[field.data[0]]
        if field.types[0] == gguf.GGUFValueType.STRING:
            values[key] = bytes(part).decode()
        else:
            values[key] = part.tolist()[0]
    tensors = {}
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert len(tensor.shape) == 1
        prefix, index = tensor.name.split(".")
        assert prefix == "direction"
        tensors[int(index)] = np.array(tensor.data, dtype=np.float32)
    return values, tensors, types


def _logits_with_additions(model, tokenizer, additions: dict[int, torch.Tensor]) -> torch.Tensor:
    """Logits with ``additions[N]`` added to the output of decoder block ``N`` (plain hooks)."""
    blocks = get_decoder_layers(model)
    handles = []

    def make(delta: torch.Tensor):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + delta, *output[1:])
            return output + delta

        return hook

    try:
        for index, delta in additions.items():
            handles.append(blocks[index].register_forward_hook(make(delta)))
        with torch.inference_mode():
            return model(**tokenizer([PROMPT], return_tensors="pt")).logits
    finally:
        for handle in handles:
            handle.remove()


def _steered_logits(model, tokenizer, vector, alpha: float) -> torch.Tensor:
    with torch.inference_mode(), steering(model, vector, alpha, layers=vector.layers):
        return model(**tokenizer([PROMPT], return_tensors="pt")).logits


# -- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("write", "read", "layers"),
    [(to_gguf, from_gguf, [1, 3]), (to_repeng, from_repeng, [0, 2, 3])],
)
def test_round_trip_is_exact(llama, tmp_path, write, read, layers):
    vector = _vector(llama, layers)
    # Values that float32 must keep exactly: tiny, huge, negative zero.
    vector.directions[layers[0]][:3] = torch.tensor([1e-38, -3.4e38, -0.0])
    path = write(vector, tmp_path / "v.gguf")
    back = read(path)
    assert back.layers == vector.layers
    for layer in layers:
        assert back[layer].dtype == torch.float32
        assert torch.equal(back[layer], vector[layer])
        assert torch.equal(torch.signbit(back[layer]), torch.signbit(vector[layer]))
    assert back.mean_norms == vector.mean_norms
    for key in ("model_id", "model_class", "num_layers", "hidden_size", "method"):
        assert back.provenance[key] == vector.provenance[key]
    assert back.provenance["model_hint"] == "llama"
    assert back.provenance["imported_from"]["path"] == str(path)


@pytest.mark.parametrize("scale", [2.0, 0.5, -4.0])
def test_power_of_two_scale_round_trips_exactly(llama, tmp_path, scale):
    vector = _vector(llama, [2])
    _, tensors, _ = _raw(to_gguf(vector, tmp_path / "v.gguf", scale=scale))
    assert np.array_equal(tensors[2], -scale * vector[2].numpy())
    assert torch.equal(from_gguf(tmp_path / "v.gguf")[2], vector[2])


def test_other_scale_round_trips_to_float32_rounding(llama, tmp_path):
    vector = _vector(llama, [1, 2])
    back = from_gguf(to_gguf(vector, tmp_path / "v.gguf", scale=0.3))
    for layer in vector.layers:
        torch.testing.assert_close(back[layer], vector[layer], rtol=2e-7, atol=0)


def test_reexport_keeps_values_and_hint(phi3, tmp_path):
    vector = _vector(phi3, [1, 2])
    once = from_gguf(to_gguf(vector, tmp_path / "a.gguf"))
    twice = from_gguf(to_gguf(once, tmp_path / "b.gguf"))
    assert twice.provenance["model_hint"] == "phi3"
    assert all(torch.equal(twice[k], vector[k]) for k in vector.layers)


# -- header ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("write", "count_type"),
    [(to_gguf, gguf.GGUFValueType.INT32), (to_repeng, gguf.GGUFValueType.UINT32)],
)
def test_header_fields_and_tensors(llama, tmp_path, write, count_type):
    vector = _vector(llama, [1, 3])
    values, tensors, types = _raw(write(vector, tmp_path / "v.gguf"))
    assert values["general.architecture"] == "controlvector"
    assert types["general.architecture"] == gguf.GGUFValueType.STRING
    assert values["controlvector.model_hint"] == "llama"
    assert types["controlvector.model_hint"] == gguf.GGUFValueType.STRING
    assert values["controlvector.layer_count"] == 2
    assert types["controlvector.layer_count"] == count_type
    assert types["steerlib.scale"] == gguf.GGUFValueType.FLOAT64
    assert json.loads(values["steerlib.provenance"])["model_id"] == vector.provenance["model_id"]
    assert sorted(tensors) == [1, 3]
    assert all(t.shape == (vector.hidden_size,) for t in tensors.values())
    # The sign: the file holds minus the vector.
    assert np.array_equal(tensors[3], -vector[3].numpy())


def test_model_hint_from_provenance_and_override(llama, gpt2, tmp_path):
    assert model_hint_for(_vector(llama, [1])) == "llama"
    assert model_hint_for(_vector(gpt2, [1])) == "gpt2"
    path = to_gguf(_vector(llama, [1]), tmp_path / "v.gguf", model_hint="mistral")
    assert _raw(path)[0]["controlvector.model_hint"] == "mistral"


# -- conventions, applied the way llama.cpp and repeng apply them ----------------------------
@pytest.mark.parametrize("name", ["llama", "phi3", "gpt2"])
@pytest.mark.parametrize("scale", [1.0, -0.5, 2.5])
def test_llama_cpp_rule_reproduces_steering(request, tokenizer, tmp_path, name, scale):
    model = request.getfixturevalue(name)
    # The fixture models are shared: hooks transformers keeps from earlier tests (hidden-state
    # recorders) may be there already. None may be added here.
    hooks_before = active_hook_count(model, steerlib_only=False)
    last = num_layers(model) - 1
    vector = _vector(model, sorted({1, last}))
    _, tensors, _ = _raw(to_gguf(vector, tmp_path / "v.gguf"))
    # llama.cpp: strength * direction.N added to the output of block N (0-based).
    llama_cpp = _logits_with_additions(
        model, tokenizer, {n: scale * torch.from_numpy(d) for n, d in tensors.items()}
    )
    ours = _steered_logits(model, tokenizer, vector, scale)
    torch.testing.assert_close(llama_cpp, ours)
    assert active_hook_count(model, steerlib_only=False) == hooks_before
    # The check can fail: an off-by-one block index, or the opposite sign, gives other logits.
    shifted = _logits_with_additions(
        model, tokenizer, {n - 1: scale * torch.from_numpy(d) for n, d in tensors.items()}
    )
    flipped = _logits_with_additions(
        model, tokenizer, {n: -scale * torch.from_numpy(d) for n, d in tensors.items()}
    )
    assert not torch.allclose(shifted, ours, atol=1e-4)
    assert not torch.allclose(flipped, ours, atol=1e-4)


def test_scale_folded_into_the_file_acts_as_alpha(llama, tokenizer, tmp_path):
    vector = _vector(llama, [2])
    _, tensors, _ = _raw(to_gguf(vector, tmp_path / "v.gguf", scale=1.5))
    # --control-vector FILE (strength 1) on a file written with scale 1.5.
    llama_cpp = _logits_with_additions(llama, tokenizer, {2: torch.from_numpy(tensors[2])})
    torch.testing.assert_close(llama_cpp, _steered_logits(llama, tokenizer, vector, 1.5))


def test_repeng_rule_reproduces_steering_at_layer_zero(llama, tokenizer, tmp_path):
    vector = _vector(llama, [0, 2])
    _, tensors, _ = _raw(to_repeng(vector, tmp_path / "v.gguf"))
    coeff = 0.75
    # repeng's ControlModule: output + coeff * directions[N] on model.model.layers[N].
    repeng = _logits_with_additions(
        llama, tokenizer, {n: coeff * torch.from_numpy(d) for n, d in tensors.items()}
    )
    torch.testing.assert_close(repeng, _steered_logits(llama, tokenizer, vector, coeff))


def _foreign_file(path: Path, directions: dict[int, np.ndarray], **kinds: str) -> Path:
    """A control vector as llama-cvector-generator writes it (no steerlib keys)."""
    writer = gguf.GGUFWriter(str(path), kinds.get("arch", "controlvector"))
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_int32("controlvector.layer_count", len(directions))
    for index, values in directions.items():
        writer.add_tensor(f"direction.{index}", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_foreign_file_imports_with_the_same_meaning(llama, tokenizer, tmp_path):
    gen = np.random.default_rng(0)
    raw = {n: gen.normal(size=32).astype(np.float32) for n in (1, 2)}
    vector = from_gguf(_foreign_file(tmp_path / "cvec.gguf", raw))
    assert vector.layers == [1, 2]
    assert np.array_equal(vector[1].numpy(), -raw[1])
    assert vector.provenance["model_hint"] == "llama"
    assert vector.provenance["imported_from"]["format"] == "llama.cpp control vector"
    llama_cpp = _logits_with_additions(
        llama, tokenizer, {n: 0.8 * torch.from_numpy(d) for n, d in raw.items()}
    )
    torch.testing.assert_close(llama_cpp, _steered_logits(llama, tokenizer, vector, 0.8))


# -- refusals --------------------------------------------------------------------------------
def test_export_refuses_layer_zero_for_llama_cpp(llama, tmp_path):
    with pytest.raises(ConfigError, match=r"block 0.*select.*to_repeng"):
        to_gguf(_vector(llama, [0, 1]), tmp_path / "v.gguf")
    assert not (tmp_path / "v.gguf").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_export_refuses_non_finite_directions(llama, tmp_path, bad):
    vector = _vector(llama, [1, 2])
    vector.directions[2][5] = bad
    for write in (to_gguf, to_repeng):
        with pytest.raises(ConfigError, match=r"layer 2 has 1 NaN or infinite"):
            write(vector, tmp_path / "v.gguf")


def test_export_refuses_layers_that_cannot_be_represented(llama, tmp_path):
    with pytest.raises(ConfigError, match=r"\[-1\].*count decoder layers from 0"):
        to_repeng(_vector(llama, [-1, 1]), tmp_path / "v.gguf")
    with pytest.raises(ConfigError, match=r"layers \[4\] do not exist in the 4-layer model"):
        to_gguf(_vector(llama, [1, 4]), tmp_path / "v.gguf")


@pytest.mark.parametrize("scale", [0.0, float("nan"), float("inf")])
def test_export_refuses_a_scale_that_cannot_be_undone(llama, tmp_path, scale):
    with pytest.raises(ConfigError, match="finite non-zero"):
        to_gguf(_vector(llama, [1]), tmp_path / "v.gguf", scale=scale)


def test_export_needs_a_model_hint(tmp_path):
    bare = SteeringVector({1: torch.ones(4)})
    with pytest.raises(ConfigError, match="model_hint='llama'"):
        to_gguf(bare, tmp_path / "v.gguf")
    assert from_gguf(to_gguf(bare, tmp_path / "v.gguf", model_hint="llama")).layers == [1]


def test_import_refuses_a_model_gguf(tmp_path):
    path = _foreign_file(tmp_path / "model.gguf", {1: np.ones(4, np.float32)}, arch="llama")
    for read in (from_gguf, from_repeng):
        with pytest.raises(DataError, match=r"architecture 'llama', not a control vector"):
            read(path)


def test_import_refuses_files_that_are_not_gguf(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(DataError, match="not a readable GGUF"):
        from_gguf(junk)
    with pytest.raises(DataError, match="No control-vector file"):
        from_gguf(tmp_path / "missing.gguf")


def test_direction_zero_is_llama_cpp_invalid_but_repeng_valid(tmp_path):
    path = _foreign_file(tmp_path / "v.gguf", {0: np.ones(4, np.float32)})
    with pytest.raises(DataError, match=r"direction\.0.*from_repeng"):
        from_gguf(path)
    assert torch.equal(from_repeng(path)[0], -torch.ones(4))


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"direction.1": np.ones(4, np.float16)}, "not F32"),
        ({"direction.1": np.ones((2, 4), np.float32)}, "not 1-D"),
        ({"bias.1": np.ones(4, np.float32)}, "only tensors named direction.N"),
        ({"direction.x": np.ones(4, np.float32)}, "only tensors named direction.N"),
        ({"direction.1": np.full(4, np.nan, np.float32)}, "NaN or infinite"),
        ({"direction.1": np.ones(4, np.float32), "direction.2": np.ones(5, np.float32)}, "same"),
        ({}, "no direction.N tensor"),
    ],
)
def test_import_refuses_malformed_directions(tmp_path, tensors, message):
    path = tmp_path / "v.gguf"
    writer = gguf.GGUFWriter(str(path), "controlvector")
    for name, values in tensors.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(DataError, match=message):
        from_gguf(path)


# -- command line ----------------------------------------------------------------------------
def _run_folder(tmp_path: Path, vector: SteeringVector, recommended: dict | None) -> Path:
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    vector.save(run / "vectors.safetensors")
    if recommended is not None:
        (run / "summary.json").write_text(json.dumps({"recommended": recommended}))
    return run


def test_cli_exports_the_recommended_layer(llama, tmp_path, capsys):
    vector = _vector(llama, [0, 1, 2, 3])
    run = _run_folder(tmp_path, vector, {"layer": 2, "alpha": 1.5})
    assert cli_main(["export", "r1", "--runs-dir", str(tmp_path / "runs")]) == 0
    back = from_gguf(run / "vectors.gguf")
    assert back.layers == [2]
    assert torch.equal(back[2], vector[2])
    assert f"--control-vector-scaled {run / 'vectors.gguf'}:1.5" in capsys.readouterr().out


def test_cli_all_layers_and_repeng(llama, tmp_path, capsys):
    vector = _vector(llama, [0, 1, 2, 3])
    run = _run_folder(tmp_path, vector, None)
    runs = str(tmp_path / "runs")
    assert main(["r1", "--runs-dir", runs, "--layers", "all"]) == 0
    assert "left out" in capsys.readouterr().out
    assert from_gguf(run / "vectors.gguf").layers == [1, 2, 3]
    assert main(["r1", "--runs-dir", runs, "--format", "repeng", "--layers", "all"]) == 0
    assert from_repeng(run / "vectors.repeng.gguf").layers == [0, 1, 2, 3]


def test_cli_without_a_recommendation_asks_for_layers(llama, tmp_path, capsys):
    _run_folder(tmp_path, _vector(llama, [1, 2]), {"layer": 1, "alpha": 0.0})
    assert main(["r1", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "--layers" in capsys.readouterr().err
