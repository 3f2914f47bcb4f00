from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from steerlib._io import (
    atomic_write,
    atomic_write_json,
    atomic_write_parquet,
    load_tensors,
    save_tensors,
)
from steerlib.errors import DataError


def test_a_crashing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "table.parquet"
    atomic_write_parquet(dest, pd.DataFrame({"a": [1, 2]}))

    def crash(tmp):
        tmp.write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(dest, crash)
    assert pd.read_parquet(dest)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_json_is_standard_and_files_are_readable_by_others(tmp_path):
    path = atomic_write_json(tmp_path / "x.json", {"a": math.nan, "b": [1.0, math.inf], "c": "é"})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": "é"}
    assert path.stat().st_mode & 0o044  # not the 0600 of a temporary file


def test_tensors_round_trip_with_provenance(tmp_path):
    path = save_tensors(tmp_path / "t.safetensors", {"w": torch.arange(3.0)}, {"model_id": "m"})
    tensors, meta = load_tensors(path, "test")
    assert torch.equal(tensors["w"], torch.arange(3.0)) and meta == {"model_id": "m"}
    assert json.loads((tmp_path / "t.json").read_text()) == {"model_id": "m"}
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(DataError, match=r"bad\.safetensors"):
        load_tensors(tmp_path / "bad.safetensors", "test")
