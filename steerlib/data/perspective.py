"""Perspective attributes of RTP records, and the scorer partition that no experiment draws from.

The prompt table (:mod:`steerlib.data.prompts`) keeps only toxicity; strata and per-stratum validity
need profanity, insult, threat and identity attack too. :func:`perspective_attributes` reads
them from an RTP-schema file keyed by the same ``prompt_id``.

The **scorer partition**: a fixed ~25% of the records of each RTP file, chosen by a stable hash
of the record id ``"<filename>:<begin>-<end>"`` (:func:`in_scorer_partition`), trains the
``minilm-toxicity`` head. The head's manifest lists the SHA-256 of those ids (never texts);
:func:`drop_scorer_records` removes them from every experiment draw.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from steerlib.errors import DataError
from steerlib.resources import SCORERS_DIR

__all__ = [
    "ATTRIBUTES",
    "PARTITION_RULE",
    "drop_scorer_records",
    "id_hash",
    "in_scorer_partition",
    "perspective_attributes",
    "scorer_manifest_hashes",
]

ATTRIBUTES = ("toxicity", "profanity", "insult", "threat", "identity_attack")
"""Perspective attributes kept per text (prompt and continuation)."""
PARTITION_BUCKETS = 4
PARTITION_RULE = (
    "record id = '<filename>:<begin>-<end>'; in the scorer partition when "
    f"int(sha256(id)[:8], 16) % {PARTITION_BUCKETS} == 0 (~25% of each file)"
)


def id_hash(prompt_id: str) -> str:
    """SHA-256 (hex) of a record id, as listed in the scorer manifest."""
    return hashlib.sha256(prompt_id.encode("utf-8")).hexdigest()


def in_scorer_partition(prompt_id: str) -> bool:
    """Whether the record with this id belongs to the scorer partition (:data:`PARTITION_RULE`)."""
    return int(id_hash(prompt_id)[:8], 16) % PARTITION_BUCKETS == 0


def perspective_attributes(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Texts and Perspective attributes of an RTP-schema file, one row per record.

    Args:
        path: The JSON-lines file.

    Returns:
        Columns ``prompt_id`` (as :func:`steerlib.data.prompts.load_prompt_file` makes it), ``file``
        (the file name), ``prompt``, ``continuation`` and ``prompt_<a>`` / ``continuation_<a>``
        for every attribute in :data:`ATTRIBUTES` (NaN where missing).

    Raises:
        DataError: The file cannot be read (see :func:`steerlib.data.prompts.load_prompt_file`).
    """
    from steerlib.data.prompts import load_prompt_file

    file = Path(path)
    table = load_prompt_file(file)
    rows = []
    with file.open(encoding="utf-8") as handle:
        raw = [json.loads(line) for line in handle if line.strip()]
    if len(raw) != len(table):
        raise DataError(f"{file}: {len(raw)} JSON lines but {len(table)} records were read.")
    for record in raw:
        row = {}
        for kind in ("prompt", "continuation"):
            part = record.get(kind) or {}
            for attribute in ATTRIBUTES:
                value = part.get(attribute)
                row[f"{kind}_{attribute}"] = float("nan") if value is None else float(value)
        rows.append(row)
    attributes = pd.DataFrame(rows, index=table.index)
    out = table[["prompt_id", "prompt", "continuation"]].join(attributes)
    out.insert(1, "file", file.name)
    return out


def scorer_manifest_hashes(name: str = "minilm-toxicity") -> frozenset[str]:
    """The hashed record ids the shipped head ``name`` was trained on (empty when none ships)."""

    path = SCORERS_DIR / f"{name}.json"
    if not path.is_file():
        return frozenset()
    meta = json.loads(path.read_text(encoding="utf-8"))
    return frozenset(str(h) for h in meta.get("training_record_hashes", []))


def drop_scorer_records(
    frame: pd.DataFrame, hashes: Iterable[str] | None = None
) -> tuple[pd.DataFrame, int]:
    """Remove the records a shipped scorer head was trained on.

    Args:
        frame: A prompt table (``prompt_id`` column).
        hashes: Hashed ids to drop; the shipped ``minilm-toxicity`` manifest when None.

    Returns:
        ``(kept rows, number dropped)``; rows not in the manifest (e.g. the hub's other
        records, the bundled prompts) are kept unchanged.
    """
    drop = frozenset(hashes) if hashes is not None else scorer_manifest_hashes()
    if not drop or frame.empty:
        return frame, 0
    hit = frame["prompt_id"].astype(str).map(lambda pid: id_hash(pid) in drop)
    return frame.loc[~hit].copy(), int(hit.sum())


def drop_scorer_partition(
    challenging: pd.DataFrame, benign: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop the records the ``minilm-toxicity`` head was trained on from both source tables.

    Every draw (evaluation prompts, contrastive pairs, held-out benign texts) comes from these
    tables, so no experiment text is one the head saw; one line says how many were dropped.
    """
    hashes = scorer_manifest_hashes()
    kept_challenging, n_challenging = drop_scorer_records(challenging, hashes)
    kept_benign, n_benign = (
        (kept_challenging, 0) if benign is challenging else drop_scorer_records(benign, hashes)
    )
    if n_challenging or n_benign:
        print(
            f"scorer partition: dropped {n_challenging} challenging-source and {n_benign} "
            "benign-source records (the minilm-toxicity head's training records)"
        )
    return kept_challenging, kept_benign
