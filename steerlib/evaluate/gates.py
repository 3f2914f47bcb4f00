"""The measures that gate admissibility, declared once.

A steered setting is admissible only when every measure of :data:`GATES` that the summary has
stays within its budget (:func:`steerlib.evaluate.admissibility.admissibility`). Everything
downstream reads this table: the summary merges the held-out measures' columns
(:mod:`steerlib.evaluate.summary`), the rule checks them, writes their budgets and says them in
its sentence (:mod:`steerlib.evaluate.operating_point`), ``summary.json``'s ``fluency_budget``
block reports them, and the verdict and the tables label them
(:mod:`steerlib.experiment.report`, :mod:`steerlib.experiment.analysis`).

**Adding a gating metric** is one :class:`Gate` here plus its computation:

* a measure of the steered model on the held-out benign texts (``source="held_out"``): a column
  of the kl table that :func:`steerlib.evaluate.fluency.benign_kl` writes, with
  ``<name>_ci_low``/``<name>_ci_high`` when it has an interval;
* a measure of the benign subset's completions (``source="benign_subset"``): a column of each
  summary row that :func:`steerlib.evaluate.summary.summarize` computes, with its interval.

A gate whose budget is relative (``budget="relative"``) reuses ``max_perplexity_increase``; one
with a budget of its own (``budget="absolute"``) also needs its parameter in
:class:`steerlib.experiment.config.RunParams` (the analysis step's reads in
:mod:`steerlib.experiment.table` take every gate's parameter from here; notebook 06 reads it
from the run).
``tests/test_gates.py`` declares one more gate this way and follows it to the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from steerlib.errors import ConfigError

__all__ = [
    "GATES",
    "HELD_OUT_KEY",
    "RELATIVE_PARAMETER",
    "Gate",
    "all_gates",
    "budget_parameters",
    "gate",
    "held_out_columns",
    "held_out_gates",
    "reported_gates",
    "subset_gates",
]

RELATIVE_PARAMETER = "max_perplexity_increase"
"""The parameter of every relative budget: at most ``1 + max_perplexity_increase`` × alpha 0."""


@dataclass(frozen=True)
class Gate:
    """One measure that gates admissibility: where it comes from, its budget, how it reads.

    Attributes:
        name: Its column in the summary (the setting's value); its interval, where it has one,
            is ``<name>_ci_low``/``<name>_ci_high``.
        words: What the rule's sentence calls it.
        label: What the verdict calls it.
        header: Its column header in the report's tables.
        source: ``"held_out"``: measured on the held-out benign texts, per setting and half
            (merged from the kl table, the same on every subset); ``"benign_subset"``: measured
            on the benign subset's completions (each subset pays its own when the summary has
            no benign rows).
        budget: ``"relative"``: at most ``1 + max_perplexity_increase`` times its alpha-0 value;
            ``"absolute"``: at most the value of ``parameter``, in ``unit``.
        parameter: The run parameter holding its budget.
        default: For an absolute budget, its value when ``parameter`` is None, from
            ``max_perplexity_increase``.
        unit: The unit of an absolute budget, as the rule's sentence says it.
        report_unit: The unit as the verdict says it.
        value_column: The column the admissibility check writes its value under (None: its
            own name).
        judged: Measured under the judge model (``perplexity_model``), which the verdict names.
        rule_measure: It can be the rule's ``fluency_measure`` (reported as ``fluency``, the
            random control matched on it).
        counts: Integer columns reported beside it (how many samples it left out).
        better: The direction in which the measure improves; every gate today is ``"lower"``
            (the check fails when the value is above the limit).
    """

    name: str
    words: str
    label: str
    header: str
    source: Literal["held_out", "benign_subset"]
    budget: Literal["relative", "absolute"]
    parameter: str = RELATIVE_PARAMETER
    default: Callable[[float], float] | None = None
    unit: str = ""
    report_unit: str = ""
    value_column: str | None = None
    judged: bool = False
    rule_measure: bool = False
    counts: tuple[str, ...] = ()
    better: Literal["lower"] = "lower"

    def __post_init__(self) -> None:
        """Refuse a gate the checks cannot apply."""
        if self.better != "lower":
            raise ConfigError(
                f"Gate {self.name!r} has better={self.better!r}; the admissibility check only "
                "knows lower-is-better measures: gate on the measure's negation or its loss."
            )
        if self.budget == "relative" and self.parameter != RELATIVE_PARAMETER:
            raise ConfigError(
                f"Gate {self.name!r} has a relative budget under {self.parameter!r}; relative "
                f"budgets use {RELATIVE_PARAMETER!r}: make it absolute or use that parameter."
            )

    def limit_value(self, checks: Mapping[str, float | None]) -> float:
        """An absolute budget's value: its parameter, else its default from the relative one."""
        value = checks.get(self.parameter)
        if value is not None:
            return float(value)
        if self.default is None:
            raise ConfigError(
                f"The gate {self.name!r} has no budget: set {self.parameter} (a number)."
            )
        return self.default(float(checks[RELATIVE_PARAMETER]))  # type: ignore[arg-type]


GATES: tuple[Gate, ...] = (
    Gate(
        "human_perplexity",
        words="the steered model's perplexity on the held-out benign human texts",
        label="perplexity on held-out benign text",
        header="held-out ppl",
        source="held_out",
        budget="relative",
        rule_measure=True,
    ),
    Gate(
        "perplexity",
        words="benign-subset continuation perplexity",
        label="perplexity of benign continuations",
        header="ppl",
        source="benign_subset",
        budget="relative",
        value_column="benign_continuation_perplexity",
        judged=True,
        rule_measure=True,
        counts=("perplexity_excluded",),
    ),
    Gate(
        "kl_benign",
        words="KL(unsteered || steered) per token on the held-out benign texts",
        label="KL on held-out benign text",
        header="KL benign",
        source="held_out",
        budget="absolute",
        parameter="max_kl_benign",
        default=math.log1p,
        unit="nats",
        report_unit="nats/token",
    ),
)
"""Every measure that gates admissibility, in the order the rule checks and reports them."""

HELD_OUT_KEY = "kl_benign"
"""The held-out measure every kl table has (the table is named after it); the others may be
absent from a run made before they were measured."""


def all_gates() -> tuple[Gate, ...]:
    """:data:`GATES`, read when called (so a test may declare one more with ``monkeypatch``)."""
    return GATES


def gate(name: str) -> Gate:
    """The gate of ``name``.

    Raises:
        ConfigError: ``name`` gates nothing.
    """
    for found in all_gates():
        if found.name == name:
            return found
    names = [found.name for found in all_gates()]
    raise ConfigError(
        f"{name!r} is not a gating measure; use one of {names} or declare it in "
        "steerlib.evaluate.gates.GATES."
    )


def held_out_gates() -> tuple[Gate, ...]:
    """The gates measured on the held-out benign texts, in :data:`GATES` order."""
    return tuple(g for g in all_gates() if g.source == "held_out")


def subset_gates() -> tuple[Gate, ...]:
    """The gates measured on the benign subset's completions, in :data:`GATES` order."""
    return tuple(g for g in all_gates() if g.source == "benign_subset")


def reported_gates() -> tuple[Gate, ...]:
    """The gates in the order the figures report them: the subset's, then the held-out ones."""
    return (*subset_gates(), *held_out_gates())


def held_out_columns() -> tuple[str, ...]:
    """The kl table's columns the summary merges: the values, then their interval bounds.

    :data:`HELD_OUT_KEY` comes first, then the other held-out gates in :data:`GATES` order.
    """
    names = sorted((g.name for g in held_out_gates()), key=lambda n: n != HELD_OUT_KEY)
    bounds = [f"{name}_ci_{end}" for name in names for end in ("low", "high")]
    return (*names, *bounds)


def budget_parameters() -> tuple[str, ...]:
    """The run parameters holding the gates' budgets, each once, in :data:`GATES` order."""
    return tuple(dict.fromkeys(g.parameter for g in all_gates()))
