"""A unit's rows: its prompts in, its table of completions out (for the sweep engine).

:func:`encoded_unit` picks a :class:`~steerlib.generate.partition.WorkUnit`'s prompts from the
prompts table and encodes them; :func:`chunk_records` turns one decoded batch into records and
:func:`unit_table` orders them as the engine returns them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from steerlib.errors import ConfigError
from steerlib.generate.partition import WorkUnit, check_prompts
from steerlib.generate.settings import COMPLETION_COLUMNS, DecodingSettings
from steerlib.generate.steered import UNSTEERED_DIRECTION
from steerlib.generate.tokens import encode_prompts

__all__ = ["chunk_records", "encoded_unit", "unit_table"]


def _unit_prompts(unit: WorkUnit, prompts: pd.DataFrame) -> pd.DataFrame:
    by_id = prompts.assign(prompt_id=prompts["prompt_id"].astype(str)).set_index(
        "prompt_id", drop=False
    )
    missing = [pid for pid in unit.prompt_ids if pid not in by_id.index]
    if missing:
        raise ConfigError(
            f"unit {unit.key} names prompt ids {missing[:3]} that the prompts table lacks; "
            "build the units from the same prompts table."
        )
    return by_id.loc[list(unit.prompt_ids)].reset_index(drop=True)


def encoded_unit(
    tokenizer: PreTrainedTokenizerBase,
    unit: WorkUnit,
    prompts: pd.DataFrame,
    settings: DecodingSettings,
) -> tuple[pd.DataFrame, list[list[int]]]:
    """The unit's rows of the prompts table and their token ids."""
    check_prompts(prompts)
    table = _unit_prompts(unit, prompts)
    return table, encode_prompts(tokenizer, table["prompt"].tolist(), settings.prompt_format)


def chunk_records(
    table: pd.DataFrame,
    chunk: Sequence[int],
    unit: WorkUnit,
    alphas: Sequence[float],
    samples: int,
    direction: str,
    decoded: tuple[list[str], list[int]],
    gate_counts: Mapping[str, torch.Tensor] | None,
) -> list[dict[str, Any]]:
    """One record per output row of a batch (rows ordered prompt, alpha, sample)."""
    texts, counts = decoded
    records: list[dict[str, Any]] = []
    row = 0
    for index in chunk:
        record = table.iloc[index].to_dict()
        for alpha in alphas:
            for sample in range(samples):
                gate = (
                    {
                        "gate_fired": int(gate_counts["fired"][row]),
                        "gate_positions": int(gate_counts["gated"][row]),
                    }
                    if gate_counts
                    else {}
                )
                records.append(
                    {
                        **record,
                        "layer": int(unit.layer),
                        "alpha": float(alpha),
                        "direction": direction,
                        "steered": direction != UNSTEERED_DIRECTION,
                        "sample": sample,
                        "completion": texts[row],
                        "n_new_tokens": counts[row],
                        **gate,
                    }
                )
                row += 1
    return records


def unit_table(records: list[dict[str, Any]], prompts: pd.DataFrame) -> pd.DataFrame:
    """The unit's records as a table ordered by the prompts table, alpha, sample."""
    out = pd.DataFrame(records)
    extra = [c for c in prompts.columns if c not in COMPLETION_COLUMNS]
    rank = {pid: i for i, pid in enumerate(prompts["prompt_id"].astype(str))}
    out = out.sort_values(
        ["prompt_id", "alpha", "sample"],
        key=lambda s: s.map(rank) if s.name == "prompt_id" else s,
        kind="stable",
    )
    gate_columns = ["gate_fired", "gate_positions"] if "gate_fired" in out.columns else []
    return out[COMPLETION_COLUMNS + extra + gate_columns].reset_index(drop=True)
