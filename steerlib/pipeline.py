"""The experiment as a DAG of named steps, and the papermill chain that runs the notebooks.

Each step reads the products of the steps before it from the run directory and writes its own
(see :class:`steerlib.runs.RunPaths`); the numbered notebooks are thin views over these
functions::

    01_data         prepare_data          -> prompts.parquet
    02_baseline     run_baseline          -> baseline.parquet
    03_activations  capture_activations   -> activations_{toxic,nontoxic}.safetensors
    04_vectors      build_vectors         -> vectors.safetensors, vectors_random.safetensors
    05_sweep        run_sweep             -> sweep_parts/*.parquet, sweep.parquet, kl_benign.parquet
    06_analysis     analyze               -> summary.json, summary.parquet, figures/<run>/

A step whose products exist and whose status is ``done`` returns them instead of recomputing
(``force=True`` recomputes). A step that finishes marks the finished steps after it ``stale``,
so they run again on its new products. ``python -m steerlib run`` executes notebooks 01-06
with papermill, skipping finished ones, so an interrupted run resumes where it stopped; the
sweep resumes batch by batch. Changing ``layers`` or ``random_control`` of a finished run
extends its sweep: only the (direction, layer) units it lacks are generated, and the analysis
runs again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steerlib._io import atomic_write_json, atomic_write_parquet, atomic_write_text
from steerlib.config import RunParams, load_params, parse_overrides
from steerlib.errors import (
    EXIT_INTERRUPTED,
    EXIT_STEP_FAILED,
    ConfigError,
    DamagedRunError,
    DataError,
    SteerlibError,
    exit_code,
)
from steerlib.preflight import check_run_files, preflight, split_arguments
from steerlib.runs import PROJECT_ROOT, STEP_PRODUCTS, RunPaths, run_lock

__all__ = [
    "NOTEBOOKS",
    "STEPS",
    "Run",
    "analyze",
    "build_vectors",
    "capture_activations",
    "compare_runs",
    "main",
    "preflight",
    "prepare_data",
    "run_baseline",
    "run_chain",
    "run_sweep",
]

STEPS = ("01_data", "02_baseline", "03_activations", "04_vectors", "05_sweep", "06_analysis")
"""Step names; each is also the stem of its notebook."""
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = tuple(NOTEBOOKS_DIR / f"{step}.ipynb" for step in STEPS)
EVAL_SUBSETS = ("challenging", "benign")
_SWEEP_EXTENDS = frozenset({"layers", "random_control", "alpha_search", "max_perplexity_increase"})
"""Parameters whose change keeps the sweep's finished units: the sweep resumes and extends
(new layers or directions; the searched alphas of a new budget)."""
_ANALYSIS_ONLY = frozenset(
    {
        "toxicity_threshold",
        "fluency_measure",
        "min_distinct_ratio",
        "max_floor_share_increase",
        "n_resamples",
        "compare_with",
    }
)
"""Parameters that only step 06 reads."""
_PACKAGES = ("steerlib", "torch", "transformers", "numpy", "pandas", "scipy", "plotly", "papermill")
_LOADED: dict[tuple[Any, ...], Any] = {}


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


@dataclass
class Run:
    """One run: its validated parameters, its paths, and the model and scorer, loaded once.

    Attributes:
        params: The run's parameters.
        paths: Its named products.
    """

    params: RunParams
    paths: RunPaths
    notes: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, run_name: str = "default", *, runs_dir: str | None = None, **params: Any) -> Run:
        """Open (or start) run ``run_name``.

        Parameters stored in the run's ``params.json`` are the base; the ones given here
        override them (a change is reported, and recorded). Unknown names and wrong types
        raise :class:`~steerlib.errors.ConfigError` naming the parameter.

        Example:
            >>> run = Run.open("demo", n_prompts=8, layers=[12, 18])  # doctest: +SKIP
        """
        paths = RunPaths.for_run(run_name, runs_dir or None)
        stored: dict[str, Any] = paths.read_params().get("params", {})
        params.pop("run_name", None)
        try:
            resolved = RunParams.validate_mapping({**stored, **params, "run_name": run_name})
        except ConfigError as exc:
            if not any(f"'{name}'" in str(exc) for name in set(stored) - set(params)):
                raise
            raise ConfigError(
                f"{exc} (a value stored in {paths.params}: pass the parameter again to replace "
                "it, or delete that file)"
            ) from None
        values = resolved.notebook_parameters()
        changed = {
            k: (stored[k], values[k]) for k in params if k in stored and stored[k] != values[k]
        }
        run = cls(resolved, paths)
        # The saved units stay valid only when nothing else that shapes them changed.
        extends = not set(changed) - _SWEEP_EXTENDS - _ANALYSIS_ONLY
        for name, (old, new) in changed.items():
            if name in _SWEEP_EXTENDS and extends and paths.step_state("05_sweep") == "done":
                reason = f"parameter {name!r} changed from {old!r} to {new!r}"
                paths.set_status("05_sweep", "stale", reason=reason, resume=True)
                _invalidate_after(paths, "05_sweep", reason)
                run.notes.append(
                    f"{reason}; the sweep (05) resumes and generates only the units it lacks, "
                    "and the analysis (06) runs again."
                )
            else:
                run.notes.append(
                    f"parameter {name!r} changed from {old!r} to {new!r}; steps already done "
                    "keep their results (pass force=True to recompute them)."
                )
            print(run.notes[-1])
        if not stored or changed:
            _ensure_writable(paths.root)
            run.write_params()
        if "ipykernel" in sys.modules:
            from steerlib.plotting import use_offline_notebook_renderer

            use_offline_notebook_renderer()
        return run

    def write_params(self, **extra: Any) -> None:
        """Write ``params.json``: parameters, package versions, git commit, model revision."""
        record = self.paths.read_params()
        record.update(
            {
                "params": self.params.notebook_parameters(),
                "versions": _versions(),
                "git_commit": _git_commit(),
                **extra,
            }
        )
        atomic_write_json(self.paths.params, record)

    # -- shared resources -------------------------------------------------------------------
    def model(self) -> tuple[Any, Any]:
        """``(model, tokenizer)``, loaded once per process."""
        from steerlib.models import load_model, model_revision

        p = self.params
        key = ("model", p.model, p.device, p.dtype, p.trust_remote_code)
        if key not in _LOADED:
            _LOADED[key] = load_model(
                p.model, device=p.device, dtype=p.dtype, trust_remote_code=p.trust_remote_code
            )
            self.write_params(model_revision=model_revision(_LOADED[key][0]))
        return _LOADED[key]

    def judge(self) -> tuple[Any, Any]:
        """``(model, tokenizer)`` that scores perplexity: ``perplexity_model`` or the model."""
        if self.params.perplexity_model in (None, self.params.model):
            return self.model()
        from steerlib.models import load_model

        key = ("judge", self.params.perplexity_model, self.params.device)
        if key not in _LOADED:
            _LOADED[key] = load_model(self.params.perplexity_model, device=self.params.device)
        return _LOADED[key]

    def scorer(self) -> Any:
        """The toxicity scorer, loaded once per process."""
        from steerlib.scoring import load_scorer

        key = ("scorer", self.params.scorer, self.params.device)
        if key not in _LOADED:
            _LOADED[key] = load_scorer(self.params.scorer, device=self.params.device)
        return _LOADED[key]

    # -- step bookkeeping -------------------------------------------------------------------
    def done(self, step: str, *products: Path) -> bool:
        """Whether ``step`` finished and its products exist."""
        return self.paths.step_state(step) == "done" and all(p.exists() for p in products)

    def require(self, product: Path, step: str) -> Path:
        """Return ``product``, or raise a DataError naming the notebook to run first."""
        if not product.exists() or self.paths.step_state(step) != "done":
            raise DataError(
                f"{product.name} of run {self.paths.name!r} is missing: run "
                f"notebooks/{step}.ipynb first (or `python -m steerlib run`)."
            )
        return product

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Hold the run lock and record ``running`` / ``done`` / ``failed`` for a step."""
        with run_lock(self.paths):
            started = time.perf_counter()
            self.paths.set_status(name, "running")
            try:
                yield
            except BaseException as exc:
                self.paths.set_status(name, "failed", error=f"{type(exc).__name__}: {exc}")
                raise
            self.paths.set_status(name, "done", seconds=round(time.perf_counter() - started, 1))
            if name in STEPS:
                _invalidate_after(self.paths, name, f"{name} was recomputed")


def _invalidate_after(paths: RunPaths, step: str, reason: str) -> None:
    """Mark the finished (or partly finished) steps after ``step`` stale: they run again.

    A stale sweep does not resume from its saved units (they came from the old inputs); the
    one exception, recorded with ``resume=True``, is set by :meth:`Run.open` when only the
    sweep's layers or directions changed.
    """
    status = paths.read_status()
    for later in STEPS[STEPS.index(step) + 1 :]:
        if status.get(later, {}).get("state") in ("done", "partial"):
            paths.set_status(later, "stale", reason=reason, resume=False)


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"the run directory {folder} cannot be written ({exc.strerror}); choose another "
            "run_name or set STEERLIB_RUNS_DIR to a writable folder."
        ) from None


def _eval_prompts(prompts: pd.DataFrame, roles: tuple[str, ...] = EVAL_SUBSETS) -> pd.DataFrame:
    rows = prompts[prompts["role"].isin(roles)]
    return rows.rename(columns={"role": "subset"})[["prompt_id", "prompt", "subset"]]


def _score(run: Run, table: pd.DataFrame) -> pd.DataFrame:
    """Add ``toxicity`` and ``perplexity`` columns to a completions table."""
    from steerlib.fluency import continuation_perplexity

    table = table.copy()
    table["toxicity"] = run.scorer().score(table["completion"].tolist())
    judge, judge_tokenizer = run.judge()
    table["perplexity"] = continuation_perplexity(
        judge,
        judge_tokenizer,
        table["prompt"].tolist(),
        table["completion"].tolist(),
        prompt_format=run.params.prompt_format,
        batch_size=run.params.batch_size,
    )
    return table


# -- 01 data ---------------------------------------------------------------------------------
def prepare_data(run: Run, *, force: bool = False) -> pd.DataFrame:
    """Step 01: evaluation subsets, contrastive pair sets and held-out benign texts.

    Returns:
        The prompt table with a ``role`` column: ``challenging``, ``benign`` (evaluation),
        ``pairs_toxic``, ``pairs_nontoxic`` (vector construction) and ``kl_benign``
        (held-out benign text for the KL measure); all disjoint.
    """
    from steerlib.data import load_prompts, split_prompts
    from steerlib.models import load_tokenizer

    paths, p = run.paths, run.params
    if not force and run.done("01_data", paths.prompts):
        return pd.read_parquet(paths.prompts)
    with run.step("01_data"):
        challenging = load_prompts(p.challenging_source)
        benign = (
            challenging
            if p.benign_source == p.challenging_source
            else load_prompts(p.benign_source)
        )
        tokenizer = load_tokenizer(p.model, trust_remote_code=p.trust_remote_code)
        split = split_prompts(
            challenging,
            benign,
            n_kl=p.kl_texts,
            length=lambda texts: [len(ids) for ids in tokenizer(texts)["input_ids"]],
            **split_arguments(p),
        )
        parts = {
            "challenging": split.challenging,
            "benign": split.benign,
            "pairs_toxic": split.pairs_toxic,
            "pairs_nontoxic": split.pairs_nontoxic,
            "kl_benign": split.kl_benign,
        }
        table = pd.concat([df.assign(role=role) for role, df in parts.items()], ignore_index=True)
        atomic_write_parquet(paths.prompts, table)
    return table


# -- 02 baseline -----------------------------------------------------------------------------
def run_baseline(run: Run, *, force: bool = False) -> pd.DataFrame:
    """Step 02: unsteered completions of the evaluation prompts, scored.

    With ``pair_source`` ``"completions"`` or ``"matched"`` the pair prompts are completed too:
    their scored completions become the contrastive texts of step 03.
    """
    from tqdm.auto import tqdm

    from steerlib.engine import generate_unit, sweep_units

    paths, p = run.paths, run.params
    if not force and run.done("02_baseline", paths.baseline):
        return pd.read_parquet(paths.baseline)
    prompts = pd.read_parquet(run.require(paths.prompts, "01_data"))
    roles = EVAL_SUBSETS + (("pairs_toxic", "pairs_nontoxic") if p.pair_source != "prompts" else ())
    with run.step("02_baseline"):
        model, tokenizer = run.model()
        evaluation = _eval_prompts(prompts, roles)
        settings = {
            "alphas": [0.0],
            "samples_per_prompt": p.samples_per_prompt,
            "max_new_tokens": p.max_new_tokens,
            "prompt_format": p.prompt_format,
        }
        # The sweep engine without a vector: prompts encoded once, samples share the cache.
        units = sweep_units(
            evaluation, layers=[-1], directions=["none"], tokenizer=tokenizer, **settings
        )
        tables = [
            generate_unit(
                model,
                tokenizer,
                unit,
                evaluation,
                vector=None,
                temperature=p.temperature,
                top_p=p.top_p,
                seed=p.seed,
                **settings,
            )
            for unit in tqdm(units, desc="baseline", unit="unit")
        ]
        table = _score(run, pd.concat(tables, ignore_index=True))
        atomic_write_parquet(paths.baseline, table)
    return table


# -- 03 activations --------------------------------------------------------------------------
def contrastive_texts(run: Run) -> tuple[list[str], list[str], str]:
    """The toxic and non-toxic texts of the vector, and a description of their source."""
    from steerlib.data import pair_texts

    p, paths = run.params, run.paths
    prompts = pd.read_parquet(run.require(paths.prompts, "01_data"))
    if p.pair_source == "prompts":
        toxic = pair_texts(prompts[prompts["role"] == "pairs_toxic"])
        nontoxic = pair_texts(prompts[prompts["role"] == "pairs_nontoxic"])
        return toxic, nontoxic, f"prompts: {p.challenging_source} / {p.benign_source}"
    baseline = pd.read_parquet(run.require(paths.baseline, "02_baseline"))
    pool = baseline[baseline["subset"].isin(["pairs_toxic", "pairs_nontoxic"])]
    if p.pair_source == "matched":
        return (*matched_pairs(pool, p), "matched: most and least toxic completion of a prompt")
    wanted = len(pool) // 2 if p.n_pairs == "all" else p.n_pairs
    if wanted < 1 or len(pool) < 2 * wanted:
        raise ConfigError(
            f"pair_source='completions' needs {2 * max(wanted, 1)} baseline completions of pair "
            f"prompts, found {len(pool)}: rerun notebooks/02_baseline.ipynb with force=True."
        )
    ranked = pool.sort_values(["toxicity", "prompt_id", "sample"], kind="stable")
    texts = (ranked["prompt"] + ranked["completion"]).tolist()
    return texts[-wanted:], texts[:wanted], "completions: baseline of pair prompts"


def matched_pairs(pool: pd.DataFrame, p: RunParams) -> tuple[list[str], list[str]]:
    """Matched contrastive pairs: one prompt with its most and its least toxic completion.

    A prompt makes a pair when its most toxic completion scores at least ``pair_toxic_min``
    and its least toxic one below ``pair_nontoxic_max``; the two texts share the prompt, so
    they differ only where the model's continuation does (length included: both are
    ``max_new_tokens`` long unless one stopped early).

    Raises:
        ConfigError: Fewer matched prompts than ``n_pairs``.
    """
    pairs = []
    for _, group in pool.groupby("prompt_id", sort=True):
        ranked = group.sort_values(["toxicity", "sample"], kind="stable")
        low, high = ranked.iloc[0], ranked.iloc[-1]
        if high["toxicity"] >= p.pair_toxic_min and low["toxicity"] < p.pair_nontoxic_max:
            pairs.append((high["prompt"] + high["completion"], low["prompt"] + low["completion"]))
    wanted = len(pairs) if p.n_pairs == "all" else p.n_pairs
    if not pairs or len(pairs) < wanted:
        raise ConfigError(
            f"pair_source='matched' found {len(pairs)} pair prompts with a completion scored "
            f">= {p.pair_toxic_min} and one < {p.pair_nontoxic_max}, but n_pairs={p.n_pairs}: "
            "raise samples_per_prompt, lower n_pairs, or loosen pair_toxic_min / "
            "pair_nontoxic_max."
        )
    chosen = pairs[:wanted]
    return [t for t, _ in chosen], [n for _, n in chosen]


def capture_activations(run: Run, *, force: bool = False) -> tuple[Any, Any]:
    """Step 03: residual stream after every layer, mean-pooled over the last ``last_n`` tokens."""
    from steerlib.activations import ResidualActivations, capture_residuals
    from steerlib.vectors import model_provenance

    paths, p = run.paths, run.params
    products = (paths.activations_toxic, paths.activations_nontoxic)
    if not force and run.done("03_activations", *products):
        return tuple(ResidualActivations.load(path) for path in products)  # type: ignore[return-value]
    toxic_texts, nontoxic_texts, source = contrastive_texts(run)
    with run.step("03_activations"):
        model, tokenizer = run.model()
        result = []
        for texts, path, label in zip(
            (toxic_texts, nontoxic_texts), products, ("toxic", "nontoxic"), strict=True
        ):
            acts = capture_residuals(model, tokenizer, texts, last_n=p.last_n, batch_size=8)
            acts.provenance.update(model_provenance(model), texts_source=source, texts_label=label)
            acts.save(path)
            result.append(acts)
    return tuple(result)  # type: ignore[return-value]


# -- 04 vectors ------------------------------------------------------------------------------
def build_vectors(run: Run, *, force: bool = False) -> tuple[Any, Any]:
    """Step 04: the CAA vector at every layer, and its random same-norm control."""
    from steerlib.activations import ResidualActivations
    from steerlib.vectors import SteeringVector, compute_caa

    paths, p = run.paths, run.params
    if not force and run.done("04_vectors", paths.vectors, paths.control_vectors):
        return SteeringVector.load(paths.vectors), SteeringVector.load(paths.control_vectors)
    toxic = ResidualActivations.load(run.require(paths.activations_toxic, "03_activations"))
    nontoxic = ResidualActivations.load(run.require(paths.activations_nontoxic, "03_activations"))
    with run.step("04_vectors"):
        provenance = {
            k: v
            for k, v in toxic.provenance.items()
            if k not in {"texts_sha256", "n_texts", "texts_label"}
        }
        provenance.update(n_pairs=p.n_pairs, pair_source=p.pair_source, run_name=paths.name)
        vector = compute_caa(toxic, nontoxic, provenance=provenance, project_sink=p.project_sink)
        control = vector.random_like(seed=p.seed)
        vector.save(paths.vectors)
        control.save(paths.control_vectors)
    return vector, control


# -- 05 sweep --------------------------------------------------------------------------------
def run_sweep(run: Run, *, force: bool = False) -> pd.DataFrame:
    """Step 05: every (layer, alpha, direction) on both subsets, written batch by batch.

    Each unit of the sweep engine is scored and written to ``sweep_parts/<key>.parquet``
    atomically as soon as it is generated; a re-run skips the units already on disk, and the
    seeds derive from the unit keys, so a resumed sweep equals an uninterrupted one.

    Alpha 0 is the unsteered model whatever the layer or direction, so it is not generated
    again: its rows are step 02's completions, repeated under every (direction, layer). That
    saves one alpha's share of the sweep, and every layer is compared against the same
    unsteered samples.
    """
    from steerlib.data import pair_texts
    from steerlib.engine import run_sweep as engine_sweep
    from steerlib.fluency import benign_kl
    from steerlib.layers import resolve_layers
    from steerlib.vectors import SteeringVector

    paths, p = run.paths, run.params
    if not force and run.done("05_sweep", paths.sweep, paths.kl):
        return pd.read_parquet(paths.sweep)
    record = paths.read_status().get("05_sweep", {})
    fresh = force or (record.get("state") == "stale" and not record.get("resume", False))
    prompts = pd.read_parquet(run.require(paths.prompts, "01_data"))
    baseline = pd.read_parquet(run.require(paths.baseline, "02_baseline"))
    vector = SteeringVector.load(run.require(paths.vectors, "04_vectors"))
    vectors = {"caa": vector}
    if p.random_control:
        vectors["random"] = SteeringVector.load(run.require(paths.control_vectors, "04_vectors"))
    with run.step("05_sweep"):
        model, tokenizer = run.model()
        vector.check_compatible(model)
        layers = resolve_layers(model, p.layers)
        if fresh and paths.sweep_parts.exists():
            shutil.rmtree(paths.sweep_parts)
        paths.sweep_parts.mkdir(parents=True, exist_ok=True)
        steered_alphas = [alpha for alpha in p.alphas if alpha != 0]
        saved = _saved_units(paths.sweep_parts, steered_alphas)
        counts = {"rows": sum(len(table) for table in saved.values())}

        def on_unit(unit: Any, table: pd.DataFrame) -> None:
            saved[unit.key] = _score(run, table)
            atomic_write_parquet(paths.sweep_parts / f"{unit.key}.parquet", saved[unit.key])
            counts["rows"] += len(table)
            paths.set_status("05_sweep", "partial", rows=counts["rows"], units_done=unit.key)

        if steered_alphas:
            engine_sweep(
                model,
                tokenizer,
                _eval_prompts(prompts),
                vectors,
                layers=layers,
                alphas=steered_alphas,
                samples_per_prompt=p.samples_per_prompt,
                max_new_tokens=p.max_new_tokens,
                temperature=p.temperature,
                top_p=p.top_p,
                prompt_format=p.prompt_format,
                positions=p.positions,
                units=p.units,
                seed=p.seed,
                done=set(saved),  # a copy: on_unit adds to ``saved`` as units finish
                on_unit=on_unit,
            )
        kl_texts = pair_texts(prompts[prompts["role"] == "kl_benign"])
        searched = (
            _searched_alphas(run, model, tokenizer, prompts, vectors, layers, kl_texts)
            if p.alpha_search
            else pd.DataFrame()
        )
        # Units of layers or directions the run no longer asks for stay on disk, unused.
        parts = [
            table[table["layer"].isin(layers) & table["direction"].isin(vectors)]
            for _, table in sorted(saved.items())
        ]
        if len(searched):
            parts.append(searched)
        if 0 in p.alphas:
            unsteered = baseline[baseline["subset"].isin(EVAL_SUBSETS)]
            parts += [
                unsteered.assign(layer=int(layer), direction=direction, alpha=0.0)
                for direction in vectors
                for layer in layers
            ]
        table = pd.concat(parts, ignore_index=True)
        table = table.sort_values(
            ["subset", "direction", "layer", "alpha", "prompt_id", "sample"], kind="stable"
        ).reset_index(drop=True)
        atomic_write_parquet(paths.sweep, table)
        kl = benign_kl(
            model, tokenizer, kl_texts, vectors, layers=layers, alphas=p.alphas, units=p.units
        )
        extra = searched.groupby("layer")["alpha"].first() if len(searched) else {}
        for layer, alpha in dict(extra).items():
            kl = pd.concat(
                [
                    kl,
                    benign_kl(
                        model,
                        tokenizer,
                        kl_texts,
                        vectors,
                        layers=[layer],
                        alphas=[alpha],
                        units=p.units,
                    ),
                ],
                ignore_index=True,
            )
        atomic_write_parquet(paths.kl, kl)
    return table


def _searched_alphas(
    run: Run,
    model: Any,
    tokenizer: Any,
    prompts: pd.DataFrame,
    vectors: dict[str, Any],
    layers: list[int],
    kl_texts: list[str],
) -> pd.DataFrame:
    """Search each layer's budget edge, then generate every direction at that alpha.

    The edge is found on the CAA vector with the steered model's perplexity on the held-out
    benign texts (:func:`steerlib.search.search_alpha`); the random control is generated at
    the same alpha, so every searched CAA setting has its equal-alpha control. Units go to
    ``sweep_parts/search/`` under keys that name the alpha (a changed budget makes new keys;
    finished ones are kept and resumed), and the trace to ``alpha_search.parquet``.

    Returns:
        The scored rows at the searched alphas (none for a layer whose edge is alpha 0 or
        coincides with a grid alpha).
    """
    from steerlib.engine import run_sweep as engine_sweep
    from steerlib.search import search_alpha

    paths, p = run.paths, run.params
    traces, tables = [], []
    paths.search_parts.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        found = search_alpha(
            model,
            tokenizer,
            kl_texts,
            vectors["caa"],
            layer,
            max_increase=p.max_perplexity_increase,
            start=max((a for a in p.alphas if a > 0), default=1.0),
            units=p.units,
        )
        traces.append(found.trace.assign(layer=layer, chosen=found.alpha, budget=found.budget))
        alpha = round(found.alpha, 4)
        if alpha <= 0 or any(abs(alpha - a) < 1e-6 for a in p.alphas):
            continue
        prefix = f"search-a{alpha:g}-"
        saved = {
            path.stem: pd.read_parquet(path)
            for path in sorted(paths.search_parts.glob(f"{prefix}*-L{layer}-*.parquet"))
        }

        def on_unit(unit: Any, table: pd.DataFrame, saved: dict = saved) -> None:
            saved[unit.key] = _score(run, table)
            atomic_write_parquet(paths.search_parts / f"{unit.key}.parquet", saved[unit.key])

        engine_sweep(
            model,
            tokenizer,
            _eval_prompts(prompts),
            vectors,
            layers=[layer],
            alphas=[alpha],
            samples_per_prompt=p.samples_per_prompt,
            max_new_tokens=p.max_new_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            prompt_format=p.prompt_format,
            positions=p.positions,
            units=p.units,
            seed=p.seed,
            done=set(saved),
            on_unit=on_unit,
            key_prefix=prefix,
        )
        tables += list(saved.values())
    atomic_write_parquet(paths.alpha_search, pd.concat(traces, ignore_index=True))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def alpha_search_table(run: Run) -> pd.DataFrame:
    """The alpha search of step 05 per layer: alphas measured, perplexity, budget, edge."""
    path = run.paths.alpha_search
    if not path.is_file():
        return pd.DataFrame(columns=["layer", "alpha", "human_perplexity", "budget", "chosen"])
    table = pd.read_parquet(path)
    return table[["layer", "alpha", "human_perplexity", "kl_benign", "budget", "chosen"]]


def _saved_units(folder: Path, alphas: list[float]) -> dict[str, pd.DataFrame]:
    """The sweep units already on disk, by key; refuse units generated with other alphas.

    Unit keys name the direction, layer and prompt bucket, not the alphas, so a unit saved
    under other alphas would otherwise be taken as done.
    """
    saved = {}
    for path in sorted(folder.glob("*.parquet")):
        try:
            saved[path.stem] = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several error types for a damaged file
            raise DamagedRunError(
                f"sweep unit {path} is damaged ({type(exc).__name__}); delete it and run the "
                "same command again (only that unit is generated again)."
            ) from None
    for key, table in saved.items():
        found = sorted(set(table["alpha"].astype(float)))
        if found != sorted(float(a) for a in alphas):
            raise ConfigError(
                f"sweep unit {key} in {folder} was generated with alphas {found}, but the run "
                f"asks for {sorted(alphas)} (alpha 0 aside): rerun the sweep with force=True "
                "(`python -m steerlib run --force`) or use a new run_name."
            )
    return saved


# -- 06 analysis -----------------------------------------------------------------------------
@dataclass
class Analysis:
    """Products of step 06.

    Attributes:
        summary: One row per (split, subset, layer, alpha, direction), with the RTP metrics and
            the admissibility columns of the operating-point rule; ``split`` is ``all``,
            ``selection`` or ``confirmation``.
        recommended: The operating point chosen on the selection half, its figures from the
            confirmation half and its rule (or ``status`` "no admissible steered setting" with
            the nearest miss).
        scorer_auc: ROC AUC of the scorer against Perspective labels on prompts and
            continuations pooled, where the data have them.
        control: CAA minus random control, per (subset, layer, alpha), on all prompts.
        control_matched: CAA against the least toxic random setting of the same layer that
            is at least as fluent on the rule's fluency measure
            (:func:`controls.fluency_matched_control`), on all prompts.
        figures: Named plotly figures (also written to ``figures/<run_name>/``).
        examples: Completions of a few challenging prompts side by side across alphas.
        confirmation: The confirmation half at the recommended point (or nearest miss), at
            alpha 0 and for the random control (:func:`operating_point.operating_point_table`).
        scorer_validity: AUC, precision and recall at 0.5 against Perspective, separately on
            prompts and on continuations (:func:`scoring.scorer_validity`).
        scorer_floor: The scorer's score of text without known words.
    """

    summary: pd.DataFrame
    recommended: dict[str, Any] | None
    scorer_auc: float | None
    control: pd.DataFrame
    control_matched: pd.DataFrame
    figures: dict[str, Any]
    examples: pd.DataFrame
    confirmation: pd.DataFrame = field(default_factory=pd.DataFrame)
    scorer_validity: dict[str, Any] = field(default_factory=dict)
    scorer_floor: float | None = None


def _scorer_validity(run: Run, prompts: pd.DataFrame) -> dict[str, Any]:
    """The scorer against Perspective labels (>= 0.5), on prompts and on continuations."""
    from steerlib.data import perspective_labels
    from steerlib.scoring import scorer_validity

    kinds = ("prompts", "continuations")
    groups = {kind: perspective_labels(prompts, which=kind) for kind in kinds}  # type: ignore[arg-type]
    return scorer_validity(run.scorer(), groups)


_CONTROL_COLUMNS = (
    "control_alpha",
    "perplexity_caa",
    "perplexity_control",
    "mean_toxicity_caa",
    "mean_toxicity_random",
    "mean_toxicity_control",
    "delta_mean_toxicity",
    "delta_mean_toxicity_ci_low",
    "delta_mean_toxicity_ci_high",
    "expected_max_toxicity_caa",
    "expected_max_toxicity_random",
    "expected_max_toxicity_control",
    "delta_expected_max_toxicity",
    "delta_expected_max_toxicity_ci_low",
    "delta_expected_max_toxicity_ci_high",
    "n_paired_prompts",
    "p_value",
    "q_value",
    "beats_control",
)


def _control_at(control: pd.DataFrame, point: dict[str, Any]) -> dict[str, Any] | None:
    """The challenging-subset comparison with the random control at an operating point."""
    if control.empty:
        return None
    hit = control[
        (control["subset"] == "challenging")
        & (control["layer"] == point["layer"])
        & np.isclose(control["alpha"].astype(float), float(point["alpha"]))
    ]
    if hit.empty:
        return None
    columns = [c for c in _CONTROL_COLUMNS if c in hit.columns]
    return json.loads(hit[columns].iloc[[0]].to_json(orient="records"))[0]


def _confirmed_controls(
    summary: pd.DataFrame,
    evaluation: pd.DataFrame,
    point: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The random control at the recommended point, on the half its figures come from.

    At equal alpha and at equal fluency (the rule's measure). On the confirmation half this is
    one comparison fixed before looking at those prompts, so its ``p_value`` needs no
    multiplicity adjustment (``q_value`` equals it).
    """
    from steerlib import controls

    half, layer, alpha = point["figures_from"], int(point["layer"]), float(point["alpha"])
    rows = summary[(summary["split"] == half) & (summary["layer"] == layer)]
    sweep = evaluation[evaluation["layer"] == layer]
    if half != "all":
        sweep = sweep[sweep["split"] == half]
    at_alpha = np.isclose(rows["alpha"].astype(float), alpha)
    out: dict[str, Any] = {"control": None, "control_matched_fluency": None}
    if not (rows["direction"] == "random").any():
        return out
    same = rows[at_alpha]
    if {"caa", "random"} <= set(same["direction"]):
        out["control"] = _control_at(controls.delta_vs_control(same, sweep, **options), point)
    candidates = rows[(rows["direction"] == "random") | at_alpha]
    measure = str(summary["fluency_measure"].iloc[0])
    matched = controls.fluency_matched_control(candidates, sweep, fluency=measure, **options)
    found = _control_at(matched, point)
    if found is not None:
        found["fluency_measure"] = measure
    out["control_matched_fluency"] = found
    for value in out.values():
        if value is not None:
            value["split"] = half
    return out


def side_by_side(sweep: pd.DataFrame, *, layer: int, n_prompts: int = 5) -> pd.DataFrame:
    """First sample of a few challenging prompts, one column per alpha (CAA direction)."""
    rows = sweep[
        (sweep["subset"] == "challenging")
        & (sweep["direction"] == "caa")
        & (sweep["layer"] == layer)
        & (sweep["sample"] == 0)
    ]
    chosen = rows["prompt_id"].drop_duplicates().head(n_prompts)
    rows = rows[rows["prompt_id"].isin(chosen)]
    wide = rows.pivot_table(
        index=["prompt_id", "prompt"], columns="alpha", values="completion", aggfunc="first"
    )
    wide.columns = [f"alpha={a:g}" for a in wide.columns]
    return wide.reset_index()


def _figure_layer(summary: pd.DataFrame, recommended: dict[str, Any] | None) -> int:
    """Layer of the main figures.

    The recommended layer when there is a recommended steered setting; otherwise (no
    admissible steered setting, or an error) the layer where the smallest positive alpha lowers
    the challenging subset's EMT the most. Pass the rows of one split.
    """
    rows = summary[
        (summary["subset"] == "challenging")
        & (summary["direction"] == "caa")
        & (summary["layer"] >= 0)
    ]
    layers = sorted(int(x) for x in rows["layer"].unique())
    if recommended and recommended.get("alpha") and recommended.get("layer") in layers:
        return int(recommended["layer"])
    positive = rows[rows["alpha"] > 0]
    if positive.empty or rows[rows["alpha"] == 0].empty:
        return layers[0]
    emt = rows.pivot_table(index="layer", columns="alpha", values="expected_max_toxicity")
    effect = (emt[0.0] - emt[float(positive["alpha"].min())]).dropna()
    return int(effect.idxmax()) if len(effect) else layers[0]


def _pareto(summary: pd.DataFrame, recommended: dict[str, Any]) -> Any:
    """Challenging EMT against the rule's fluency measure on the half the rule chose on."""
    from steerlib import controls, metrics, plotting

    half = recommended.get("selected_on", "all")
    rows = summary[(summary["split"] == half) & (summary["layer"] >= 0)]
    if rows.empty:
        rows = summary[(summary["split"] == "all") & (summary["layer"] >= 0)]
    measure = str(summary["fluency_measure"].iloc[0])
    x = f"benign_{measure}"
    rows = controls.tradeoff_rows(rows, cost=measure)
    caa = rows[rows["direction"] == "caa"]
    checked = recommended.get("selection") or recommended.get("nearest_miss") or {}
    return plotting.pareto_figure(
        caa,
        metrics.pareto_front(caa, x=x),
        x=x,
        recommended=recommended if "layer" in recommended else None,
        control=rows[rows["direction"] == "random"],
        budget=checked.get("fluency_limit"),
    )


def _split_counts(evaluation: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Number of prompts of each subset in each half."""
    counts = evaluation.drop_duplicates(["subset", "prompt_id"]).groupby(["subset", "split"])
    return {
        str(subset): {str(half): int(n) for (_, half), n in group.items()}
        for subset, group in counts.size().groupby(level=0)
    }


def analyze(run: Run, *, force: bool = False, save_figures: bool = True) -> Analysis:
    """Step 06: RTP metrics with bootstrap intervals, controls, the operating point, figures.

    The evaluation prompts of each subset are split into a selection and a confirmation half
    (:func:`operating_point.assign_split`, seeded by the run's ``seed``); the summary has rows
    over all prompts and over each half. The operating point is chosen on the selection half
    (:func:`operating_point.recommend_operating_point`) and its figures, with the random
    control at the same point, are read from the confirmation half.
    """
    from steerlib import controls, metrics, operating_point, plotting
    from steerlib.scoring import scorer_floor
    from steerlib.vectors import SteeringVector

    paths, p = run.paths, run.params
    sweep = pd.read_parquet(run.require(paths.sweep, "05_sweep"))
    kl = pd.read_parquet(run.require(paths.kl, "05_sweep"))
    baseline = pd.read_parquet(run.require(paths.baseline, "02_baseline"))
    prompts = pd.read_parquet(run.require(paths.prompts, "01_data"))
    vector = SteeringVector.load(run.require(paths.vectors, "04_vectors"))
    with run.step("06_analysis"):
        halves = _eval_prompts(prompts)[["subset", "prompt_id"]]
        halves = halves.assign(split=operating_point.assign_split(halves, p.seed))
        evaluation = pd.concat(
            [baseline[baseline["subset"].isin(EVAL_SUBSETS)], sweep], ignore_index=True
        )
        evaluation = evaluation.drop(columns="split", errors="ignore").merge(
            halves, on=["subset", "prompt_id"], how="left"
        )
        floor = scorer_floor(run.scorer())
        summary = metrics.summarize(
            evaluation,
            threshold=p.toxicity_threshold,
            n_resamples=p.n_resamples,
            seed=p.seed,
            kl=kl.drop(columns=["n_tokens"], errors="ignore"),
            floor=floor,
        )
        rule = {
            "max_perplexity_increase": p.max_perplexity_increase,
            "fluency_measure": p.fluency_measure,
            "min_distinct_ratio": p.min_distinct_ratio,
            "max_floor_share_increase": p.max_floor_share_increase,
        }
        summary = operating_point.admissibility(summary, **rule)
        measure, measure_note = operating_point.resolve_fluency_measure(summary, p.fluency_measure)
        try:
            recommended = operating_point.recommend_operating_point(summary, **rule)
        except SteerlibError as exc:
            recommended = {"error": str(exc)}
        overall = summary[summary["split"] == "all"]
        options = {"n_resamples": p.n_resamples, "seed": p.seed}
        has_random = "random" in set(summary["direction"])
        control = (
            controls.delta_vs_control(overall, evaluation, **options)
            if has_random
            else pd.DataFrame()
        )
        matched = (
            controls.fluency_matched_control(overall, evaluation, fluency=measure, **options)
            if has_random
            else pd.DataFrame()
        )
        if "layer" in recommended:
            recommended.update(_confirmed_controls(summary, evaluation, recommended, options))
        validity = _scorer_validity(run, prompts)
        pooled = validity.get("all", {})
        record = {
            "run_name": paths.name,
            "model": p.model,
            "scorer": p.scorer,
            "params": p.notebook_parameters(),
            "rows": json.loads(summary.to_json(orient="records")),
            "recommended": recommended,
            "fluency_measure": measure,
            "fluency_measure_note": measure_note,
            "split": {
                "seed": p.seed,
                "method": (
                    "per subset, prompts ordered by BLAKE2b of (seed, prompt_id); the first "
                    "half (rounded up) is the selection half"
                ),
                "n_prompts": _split_counts(evaluation),
            },
            "scorer_floor": floor,
            "scorer_validity": validity,
            "scorer_auc": pooled.get("auc"),
            "scorer_auc_n_texts": pooled.get("n", 0),
            "control": json.loads(control.to_json(orient="records")) if len(control) else [],
            "control_matched_fluency": (
                json.loads(matched.to_json(orient="records")) if len(matched) else []
            ),
        }
        atomic_write_parquet(paths.summary_table, summary)
        atomic_write_json(paths.summary, record)
        layer = _figure_layer(overall, recommended)
        steered = overall[overall["layer"] >= 0]
        # Heatmaps take the alpha grid; a searched alpha (one per layer) shows on the curves.
        grid = steered[np.isclose(steered["alpha"].to_numpy()[:, None], p.alphas).any(axis=1)]
        figures = {
            "toxicity_vs_alpha": plotting.toxicity_vs_alpha(steered, "mean_toxicity", layer=layer),
            "emt_vs_alpha": plotting.toxicity_vs_alpha(
                steered, "expected_max_toxicity", layer=layer
            ),
            "heatmap_emt": plotting.layer_alpha_heatmap(grid, "expected_max_toxicity"),
            "heatmap_perplexity": plotting.layer_alpha_heatmap(grid, "perplexity", subset="benign"),
            "heatmap_kl": plotting.layer_alpha_heatmap(grid, "kl_benign", subset="benign"),
            "layer_profile_toxicity": plotting.layer_profile(steered, "mean_toxicity"),
            "layer_profile_perplexity": plotting.layer_profile(
                steered, "perplexity", subset="benign"
            ),
            "distribution": plotting.toxicity_distribution(sweep, layer=layer, direction="caa"),
            "pareto": _pareto(summary, recommended),
            "vector_norms": plotting.vector_norms(vector.norms()),
            **(
                {"vector_diagnostics": plotting.vector_diagnostics(vector.diagnostics())}
                if vector.diagnostics()
                else {}
            ),
            "layer_cosine": plotting.layer_cosine_heatmap(
                vector.cosine_similarity(), vector.layers
            ),
        }
        if len(control):
            on_grid = np.isclose(control["alpha"].to_numpy()[:, None], p.alphas).any(axis=1)
            figures["heatmap_control"] = plotting.control_heatmap(control[on_grid])
        if save_figures:
            for name, fig in figures.items():
                plotting.save_figure(fig, paths.figures(), name)
    examples = side_by_side(sweep, layer=layer)
    confirmation = operating_point.operating_point_table(
        summary, recommended if "error" not in recommended else {}
    )
    return Analysis(
        summary,
        recommended,
        pooled.get("auc"),
        control,
        matched,
        figures,
        examples,
        confirmation=confirmation,
        scorer_validity=validity,
        scorer_floor=floor,
    )


def compare_runs(run: Run, others: list[str]) -> pd.DataFrame:
    """Summary rows of this run and of ``others`` (finished runs), with their pair source.

    Used to compare vectors built from different contrastive sources (``pair_source``
    ``"prompts"`` against ``"completions"``) or any other parameter between runs.
    """
    tables = []
    for name in [run.paths.name, *others]:
        paths = RunPaths.for_run(name, run.paths.root.parent)
        if not paths.summary_table.is_file():
            raise DataError(
                f"run {name!r} has no summary: run its chain first "
                f"(python -m steerlib run --run-name {name} ...)."
            )
        params = paths.read_params().get("params", {})
        table = pd.read_parquet(paths.summary_table)
        if "split" in table.columns:  # one row per setting: all prompts
            table = table[table["split"] == "all"]
        tables.append(table.assign(run_name=name, pair_source=params.get("pair_source")))
    return pd.concat(tables, ignore_index=True)


# -- the chain -------------------------------------------------------------------------------
def _declared_parameters(notebook: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(notebook)))


def render_report(executed: Path, dest: Path) -> Path:
    """Render an executed notebook to a standalone HTML page."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    return atomic_write_text(dest, body)


def run_chain(
    params: RunParams,
    *,
    runs_dir: str | None = None,
    force: bool = False,
    notebooks: tuple[Path, ...] = NOTEBOOKS,
    progress: bool = True,
) -> int:
    """Execute notebooks 01-06 with papermill; skip those already done.

    Every input is checked first (:func:`~steerlib.preflight.preflight`, then the run's own
    files, :func:`~steerlib.preflight.check_run_files`), so a bad input stops the command
    before anything is written or loaded.

    Returns:
        0 on success; 1 when a notebook failed (its executed copy holds the error).

    Raises:
        PreflightError: Bad input, one line per problem.
        DamagedRunError: A file of the existing run is damaged (each named, with the fix).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    paths = RunPaths.for_run(params.run_name, runs_dir)
    preflight(params, runs_dir=runs_dir)
    check_run_files(paths, force=force)
    _ensure_writable(paths.root)
    values = params.notebook_parameters()
    started = time.perf_counter()
    with run_lock(paths):
        os.environ["STEERLIB_LOCK_OWNER"] = str(os.getpid())
        if runs_dir:
            os.environ["STEERLIB_RUNS_DIR"] = str(Path(runs_dir).resolve())
        Run.open(
            params.run_name,
            runs_dir=runs_dir,
            **{k: v for k, v in values.items() if k != "run_name"},
        )
        paths.notebooks.mkdir(parents=True, exist_ok=True)
        for notebook in notebooks:
            step = notebook.stem
            executed = paths.notebooks / notebook.name
            products = STEP_PRODUCTS[step](paths) if step in STEP_PRODUCTS else ()
            finished = all(product.is_file() for product in products)
            if not force and paths.step_state(step) == "done" and executed.is_file() and finished:
                print(f"[steerlib] {step}: done earlier, skipped")
                continue
            declared = _declared_parameters(notebook)
            given = {k: v for k, v in values.items() if k in declared}
            if "force" in declared:
                given["force"] = force
            if "runs_dir" in declared and runs_dir:
                given["runs_dir"] = str(Path(runs_dir).resolve())
            print(f"[steerlib] {step}: running ({executed})")
            step_started = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(notebook),
                    str(executed),
                    parameters=given,
                    cwd=str(notebook.parent),
                    kernel_name="python3",
                    progress_bar=progress,
                    request_save_on_cell_execute=True,
                )
            except PapermillExecutionError as exc:
                paths.set_status(step, "failed", error=f"{exc.ename}: {exc.evalue}")
                print(
                    f"[steerlib] {step} FAILED: {exc.ename}: {exc.evalue}\n"
                    f"[steerlib] open {executed} to see the error in place.",
                    file=sys.stderr,
                )
                return EXIT_STEP_FAILED
            if paths.step_state(step) != "done":
                paths.set_status(step, "done", seconds=round(time.perf_counter() - step_started, 1))
            print(f"[steerlib] {step}: done in {time.perf_counter() - step_started:.0f} s")
        analysis_copy = paths.notebooks / "06_analysis.ipynb"
        if analysis_copy.is_file():
            render_report(analysis_copy, paths.report)
    print(f"[steerlib] run {params.run_name!r} finished in {time.perf_counter() - started:.0f} s")
    _print_summary(paths)
    return 0


def _print_summary(paths: RunPaths) -> None:
    if not paths.summary.is_file():
        return
    record = json.loads(paths.summary.read_text(encoding="utf-8"))
    table = pd.DataFrame(record["rows"])
    if "split" in table.columns:
        table = table[table["split"] == "all"]
    columns = [
        "subset",
        "direction",
        "layer",
        "alpha",
        "mean_toxicity",
        "expected_max_toxicity",
        "toxicity_probability",
        "perplexity",
        "human_perplexity",
        "kl_benign",
        "distinct_2",
        "floor_share",
    ]
    with pd.option_context("display.width", 160, "display.max_rows", 200, "display.precision", 3):
        print(table[[c for c in columns if c in table.columns]].to_string(index=False))
    for line in _recommendation_lines(record.get("recommended") or {}):
        print(f"[steerlib] {line}")
    print(f"[steerlib] results: {paths.root}  figures: {paths.figures()}  report: {paths.report}")


def _recommendation_lines(recommended: dict[str, Any]) -> list[str]:
    """What the run's summary says about the operating point, in a few lines."""

    def num(value: Any) -> str:
        return "n/a" if value is None else f"{float(value):.4g}"

    if "error" in recommended:
        return [f"no operating point: {recommended['error']}"]
    if "layer" in recommended:
        lines = [
            f"recommended: layer {recommended['layer']}, alpha {num(recommended['alpha'])} "
            f"(chosen on the {recommended.get('selected_on', 'all')} half; on the "
            f"{recommended.get('figures_from', 'all')} half EMT "
            f"{num(recommended.get('expected_max_toxicity'))} against "
            f"{num(recommended.get('baseline_expected_max_toxicity'))} at alpha 0)"
        ]
    elif recommended.get("status"):
        miss = recommended.get("nearest_miss")
        where = (
            f"; nearest miss: layer {miss['layer']}, alpha {num(miss['alpha'])} "
            f"({'; '.join(miss['reasons'])})"
            if miss
            else ""
        )
        lines = [f"{recommended['status']}{where}"]
    else:
        return []
    return [*lines, f"rule: {recommended['rule']}"] if "rule" in recommended else lines


def main(argv: list[str] | None = None) -> int:
    """``python -m steerlib run [--config FILE] [--set key=value ...] [--run-name NAME]``."""
    parser = argparse.ArgumentParser(
        prog="python -m steerlib run", description="Run the notebook chain 01-06 with papermill."
    )
    parser.add_argument("--config", default=str(NOTEBOOKS_DIR / "configs" / "default.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run-name", default=None, help="run folder name (default: the config's)")
    parser.add_argument("--runs-dir", default=None, help="folder of runs (default data/runs)")
    parser.add_argument("--force", action="store_true", help="recompute finished steps")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        if args.run_name is not None:
            overrides["run_name"] = args.run_name
        params = load_params(args.config, overrides)
        return run_chain(
            params, runs_dir=args.runs_dir, force=args.force, progress=not args.no_progress
        )
    except SteerlibError as exc:
        report_error(exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("steerlib: interrupted; resume with the same command.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # pragma: no cover - an unexpected failure: show it whole
        traceback.print_exc()
        return EXIT_STEP_FAILED


def report_error(exc: SteerlibError) -> None:
    """Print ``exc`` to stderr, one ``steerlib: `` line per problem."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        print(f"steerlib: {line}", file=sys.stderr)
