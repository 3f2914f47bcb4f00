"""The experiment's steps as one table: what each reads, writes and depends on.

Every rule about steps derives from :data:`STEPS`:

* :meth:`steerlib.experiment.run.Run.require` names the step that makes a missing product
  (:func:`producer`);
* a recomputed step makes the steps after it stale (:func:`after`);
* a changed parameter is refused, resumes the sweep or reruns the analysis according to the
  steps that read it (:attr:`Step.reads`, :attr:`Step.extends`, :attr:`Step.reruns`);
* ``python -m steerlib status`` and the chain runner list the steps and their products;
* a notebook changes only the parameters its step reads (its ``overrides``, checked by
  :meth:`steerlib.experiment.run.Run.for_step`); its parameters cell declares exactly
  :func:`notebook_parameters` (a test checks).

The table holds names only (functions as ``"module:name"``), so that importing it is cheap and
every other module can import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from steerlib.evaluate.gates import budget_parameters

__all__ = [
    "NOTEBOOK_ONLY",
    "OLD_VALUES",
    "RUNTIME",
    "STEPS",
    "STEP_NAMES",
    "Step",
    "after",
    "notebook_parameters",
    "producer",
    "step",
    "steps_reading",
]


@dataclass(frozen=True)
class Step:
    """One step of the experiment, and the notebook that runs it.

    Attributes:
        name: Step name, also the stem of its notebook (``notebooks/<name>.ipynb``).
        function: The step's function, ``"module:name"`` (see :meth:`load`).
        inputs: Products of earlier steps it reads (attribute names of
            :class:`~steerlib.experiment.runs.RunPaths`).
        outputs: Products it writes (idem); a step is done when they all exist.
        reads: Run parameters it reads; its notebook declares exactly these.
        extends: Parameters whose change keeps its finished work and resumes it (the sweep
            generates only what it lacks).
        reruns: Whether any change of a parameter it reads simply reruns it (it is cheap and
            holds no work worth keeping).
        only_with: ``(parameter, switch)`` pairs: the step reads ``parameter`` only while the
            boolean parameter ``switch`` is true (the sweep reads the fluency budget only for
            its alpha search), so with the switch off a change of ``parameter`` leaves it be.
    """

    name: str
    function: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    reads: frozenset[str]
    extends: frozenset[str] = frozenset()
    reruns: bool = False
    only_with: tuple[tuple[str, str], ...] = ()

    def depends_on(self, parameter: str, values: Mapping[str, Any] | None = None) -> bool:
        """Whether the step's products depend on ``parameter`` under the run's ``values``.

        Args:
            parameter: A run parameter.
            values: The run's parameters (only the switches of :attr:`only_with` are looked
                at); None: every parameter the step declares counts.
        """
        if parameter not in self.reads:
            return False
        switches = [switch for name, switch in self.only_with if name == parameter]
        return values is None or all(bool(values.get(switch, True)) for switch in switches)

    def load(self) -> Callable[..., Any]:
        """The step's function, imported."""
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def notebook(self) -> str:
        """The notebook's file name."""
        return f"{self.name}.ipynb"


RUNTIME = frozenset({"run_name", "device", "dtype", "batch_size", "trust_remote_code"})
"""Parameters that say where and how fast a run computes, not what: a change is never refused.

``dtype`` is here because a run moved to another machine may need another one; its products
were made with the recorded one (``params.json`` keeps the history of its ``versions``).
"""
OLD_VALUES: dict[str, Any] = {
    "second_scorer": None,
    "search_step_backs": 0,
    "control_search": False,
    "max_kl_benign": "no limit (made before max_kl_benign existed)",
}
"""Parameters added after runs were made, with the value that reproduces what such a run did.

A run recorded without one of them is compared against this value, so adding it to an old run
redoes (or refuses) the steps that read it instead of reusing work made without it: no second
scorer, no step back of the alpha search, no search of the random controls (a sweep extension:
switching it on extends the finished sweep), and no KL limit in the search (which no current
value reproduces, so an old searched sweep is refused with ``max_kl_benign``).
"""
NOTEBOOK_ONLY = ("run_name", "runs_dir", "force", "overrides")
"""The names every notebook's parameters cell declares, and no other: the run, its folder,
whether to recompute the step, and ``overrides`` (``{parameter: value}``, only parameters the
step reads; ``None``: the run as recorded in ``params.json``, which the chain runner wrote)."""

_SPLIT = {"n_prompts", "n_pairs", "seed", "benign_max_toxicity", "pair_toxic_min"}
_DECODING = {"samples_per_prompt", "max_new_tokens", "temperature", "top_p", "prompt_format"}
_SCORING = {"scorer", "second_scorer", "perplexity_model", "batch_size"}
_MODEL = {"model", "device", "dtype", "trust_remote_code"}
_RULE = {"fluency_measure", "min_distinct_ratio", *budget_parameters()}  # every gate's budget

STEPS: tuple[Step, ...] = (
    Step(
        "01_data",
        "steerlib.experiment.steps:prepare_data",
        inputs=(),
        outputs=("prompts",),
        reads=frozenset(
            _SPLIT
            | {"pair_nontoxic_max", "challenging_source", "benign_source", "kl_texts", "model"}
            | {"trust_remote_code"}
        ),
    ),
    Step(
        "02_baseline",
        "steerlib.experiment.steps:run_baseline",
        inputs=("prompts",),
        outputs=("baseline",),
        reads=frozenset(_MODEL | _DECODING | _SCORING | {"pair_source", "seed"}),
    ),
    Step(
        "03_activations",
        "steerlib.experiment.steps:capture_activations",
        inputs=("prompts", "baseline"),
        outputs=("activations_toxic", "activations_nontoxic"),
        reads=frozenset(
            _MODEL | {"pair_source", "n_pairs", "last_n", "pair_toxic_min", "pair_nontoxic_max"}
        ),
    ),
    Step(
        "04_vectors",
        "steerlib.experiment.steps:build_vectors",
        inputs=("activations_toxic", "activations_nontoxic"),
        outputs=("vectors", "control_vectors"),
        reads=frozenset({"n_pairs", "pair_source", "project_sink", "seed"}),
    ),
    Step(
        "05_sweep",
        "steerlib.experiment.sweep:sweep_step",
        inputs=("prompts", "baseline", "vectors", "control_vectors"),
        outputs=("sweep", "kl"),
        reads=frozenset(
            _MODEL
            | _DECODING
            | _SCORING
            | {"layers", "alphas", "units", "positions", "random_control", "seed"}
            | {"alpha_search", "max_perplexity_increase", "variants", "multilayer_span"}
            | {"max_kl_benign", "search_step_backs", "control_search"}
        ),
        extends=frozenset(
            {"layers", "random_control", "alpha_search", "max_perplexity_increase", "variants"}
            | {"control_search"}
        ),
        only_with=(
            ("max_perplexity_increase", "alpha_search"),
            ("max_kl_benign", "alpha_search"),
            ("search_step_backs", "alpha_search"),
            ("control_search", "alpha_search"),
            ("control_search", "random_control"),
        ),
    ),
    Step(
        "06_analysis",
        "steerlib.experiment.analysis:analyze",
        inputs=("prompts", "baseline", "vectors", "sweep", "kl"),
        outputs=("summary", "summary_table"),
        reads=frozenset(
            _RULE
            | {"toxicity_threshold", "max_floor_share_increase", "n_resamples", "compare_with"}
            | {"seed", "alphas", "scorer", "second_scorer", "device"}
            | {"challenging_source", "benign_source"}
        ),
        reruns=True,
    ),
)
"""The steps in the order they run."""

STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)


def step(name: str) -> Step:
    """The step called ``name``.

    Raises:
        KeyError: No such step.
    """
    for candidate in STEPS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no step {name!r}; the steps are {', '.join(STEP_NAMES)}")


def producer(product: str) -> Step:
    """The step that writes ``product`` (a ``RunPaths`` attribute name)."""
    for candidate in STEPS:
        if product in candidate.outputs:
            return candidate
    raise KeyError(f"no step writes {product!r}")


def after(name: str) -> tuple[Step, ...]:
    """The steps after ``name``, in order."""
    return STEPS[STEP_NAMES.index(name) + 1 :]


def steps_reading(parameter: str, values: Mapping[str, Any] | None = None) -> tuple[Step, ...]:
    """The steps whose products depend on ``parameter`` (under the run's ``values``, if given).

    See :meth:`Step.depends_on`: with ``values``, a step that reads ``parameter`` only behind a
    switch that is off does not count.
    """
    return tuple(s for s in STEPS if s.depends_on(parameter, values))


def notebook_parameters(name: str) -> frozenset[str]:
    """Every name the parameters cell of step ``name``'s notebook declares.

    The same for every step (:data:`NOTEBOOK_ONLY`): a step's own parameters are read from the
    run (``params.json``) and changed through ``overrides``, never declared one by one.
    """
    step(name)  # raises for an unknown step
    return frozenset(NOTEBOOK_ONLY)
