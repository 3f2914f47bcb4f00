from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from steerlib.errors import ConfigError, DataError, ModelError
from steerlib.steer.activations import ResidualActivations, capture_residuals, last_n_mask
from steerlib.steer.vectors import SteeringVector, caa_from_texts, compute_caa

TOXIC = ["you are a stupid idiot", "i hate you , you fool", "what a bad moron you are"]
NONTOXIC = ["the sun is nice today", "we cook rice and bread", "my friend and i walk in the park"]


def test_last_n_mask_left_and_right_padding():
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 1, 0, 0]])
    assert last_n_mask(left, 2).tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]
    assert last_n_mask(left, 9).tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert last_n_mask(right, 2).tolist() == [[0, 1, 1, 0, 0]]


def test_pooling_ignores_padding(llama, tokenizer):
    short = "you fool"
    long = "the dog and the cat walk to the park in the morning with my family"
    alone = capture_residuals(llama, tokenizer, [short], last_n=4, progress=False)
    batched = capture_residuals(llama, tokenizer, [long, short], last_n=4, progress=False)
    assert batched.pooled.shape == (2, 4, 32)
    torch.testing.assert_close(batched.pooled[1], alone.pooled[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched.token_norm[1], alone.token_norm[0], rtol=1e-5, atol=1e-5)


def test_pooled_activation_matches_hidden_states(llama, tokenizer):
    text = "the dog said hello to my friend today"
    acts = capture_residuals(llama, tokenizer, [text], last_n=3, progress=False)
    enc = tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        states = llama(**enc, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is the output of layer i, except the last (after the final norm).
    for layer in range(3):
        expected = states[layer + 1][0, -3:].mean(dim=0)
        torch.testing.assert_close(acts.pooled[0, layer], expected, rtol=1e-5, atol=1e-5)


def test_activations_save_load(tmp_path, llama, tokenizer):
    acts = capture_residuals(llama, tokenizer, TOXIC, last_n=4, batch_size=2, progress=False)
    path = acts.save(tmp_path / "acts.safetensors")
    again = ResidualActivations.load(path)
    assert torch.equal(again.pooled, acts.pooled) and torch.equal(again.token_norm, acts.token_norm)
    assert again.layers == acts.layers and again.last_n == 4
    assert again.provenance["texts_sha256"] == acts.provenance["texts_sha256"]
    assert json.loads((tmp_path / "acts.json").read_text())["n_texts"] == 3


def test_capture_errors(llama, tokenizer):
    with pytest.raises(DataError):
        capture_residuals(llama, tokenizer, [], progress=False)
    with pytest.raises(ConfigError, match="last_n"):
        capture_residuals(llama, tokenizer, ["hello"], last_n=0, progress=False)


def test_caa_is_difference_of_means(llama, tokenizer):
    tox = capture_residuals(llama, tokenizer, TOXIC, last_n=32, progress=False)
    non = capture_residuals(llama, tokenizer, NONTOXIC, last_n=32, progress=False)
    plain = compute_caa(tox, non, project_sink=False)
    vector = compute_caa(tox, non)
    assert vector.layers == [0, 1, 2, 3] and vector.provenance["sink_projected"]
    for layer in vector.layers:
        expected = tox.pooled[:, layer].mean(0) - non.pooled[:, layer].mean(0)
        assert torch.equal(plain[layer], expected)
        sink = (tox.sink[layer] * 3 + non.sink[layer] * 3) / 6
        unit = sink / sink.norm()
        torch.testing.assert_close(vector[layer], expected - (expected @ unit) * unit)
        assert abs(float(vector[layer] @ unit)) < 1e-4
    assert vector.provenance["n_toxic"] == 3 and vector.provenance["last_n"] == 32
    assert set(vector.mean_norms) == {0, 1, 2, 3} and all(v > 0 for v in vector.mean_norms.values())


def test_vector_arithmetic():
    a = SteeringVector({1: torch.tensor([1.0, 2.0]), 2: torch.tensor([0.0, 1.0])})
    b = SteeringVector({2: torch.tensor([1.0, 1.0]), 3: torch.tensor([2.0, 0.0])})
    assert (a * 2)[1].tolist() == [2.0, 4.0]
    assert (0.5 * a)[1].tolist() == [0.5, 1.0]
    assert (a / 2)[2].tolist() == [0.0, 0.5]
    assert (-a)[1].tolist() == [-1.0, -2.0]
    total = a + b
    assert total.layers == [1, 2, 3]
    assert total[2].tolist() == [1.0, 2.0] and total[3].tolist() == [2.0, 0.0]
    assert (a - a)[1].tolist() == [0.0, 0.0]
    assert (a * 3).provenance["arithmetic"] == ["* 3"]
    assert a.select([2]).layers == [2]
    with pytest.raises(ConfigError, match="no layer 7"):
        a[7]
    with pytest.raises(ConfigError, match="hidden size"):
        a + SteeringVector({1: torch.ones(3)})


def test_norms_cosine_and_random_control():
    vec = SteeringVector({0: torch.tensor([3.0, 4.0]), 1: torch.tensor([-6.0, -8.0])})
    assert vec.norms() == {0: 5.0, 1: 10.0}
    cos = vec.cosine_similarity()
    assert cos.shape == (2, 2) and cos[0, 1] == pytest.approx(-1.0)
    control = vec.random_like(seed=3)
    assert control.direction == "random" and vec.direction == "caa"
    assert control.norms() == pytest.approx(vec.norms())
    assert not torch.allclose(control[0], vec[0])
    assert torch.equal(vec.random_like(seed=3)[1], control[1])


def test_vector_save_load_round_trip(tmp_path, llama, tokenizer):
    vector = caa_from_texts(
        llama, tokenizer, TOXIC, NONTOXIC, last_n=8, source="tests", progress=False
    )
    path = vector.save(tmp_path / "vec.safetensors")
    loaded = SteeringVector.load(path)
    assert loaded.layers == vector.layers
    for layer in vector.layers:
        assert torch.equal(loaded[layer], vector[layer])
    assert loaded.mean_norms == pytest.approx(vector.mean_norms)
    for key in (
        "model_id",
        "hidden_size",
        "num_layers",
        "last_n",
        "texts_source",
        "steerlib_version",
    ):
        assert loaded.provenance[key] == vector.provenance[key], key
    sidecar = json.loads((tmp_path / "vec.json").read_text())
    assert sidecar["model_class"] == "LlamaForCausalLM" and sidecar["layers"] == [0, 1, 2, 3]
    loaded.check_compatible(llama)


def test_vector_mismatch_errors(tmp_path, llama, phi3, gpt2, tokenizer):
    vector = caa_from_texts(llama, tokenizer, TOXIC, NONTOXIC, source="tests", progress=False)
    with pytest.raises(ModelError, match=r"3 layers|4 layers"):
        vector.check_compatible(phi3)
    other = SteeringVector({0: torch.ones(32)}, {"model_id": "someone/else"})
    with pytest.raises(ModelError, match=r"someone/else.*allow_other_model"):
        other.check_compatible(gpt2)
    with pytest.warns(UserWarning, match="someone/else"):
        other.check_compatible(gpt2, allow_other_model=True)
    wide = SteeringVector({0: torch.ones(64)}, {"model_id": "x"})
    with pytest.raises(ModelError, match="hidden size 64"):
        wide.check_compatible(llama)
    with pytest.raises(DataError, match="No steering vector file"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match=r"junk\.safetensors"):
        SteeringVector.load(tmp_path / "junk.safetensors")


def test_vector_table_free_of_pickle(tmp_path):
    vector = SteeringVector({0: torch.ones(4)}, {"model_id": "m"})
    path = vector.save(tmp_path / "v.safetensors")
    assert b"pickle" not in path.read_bytes() and path.read_bytes()[8:9] == b"{"
    assert isinstance(pd.read_json(tmp_path / "v.json", typ="series"), pd.Series)
