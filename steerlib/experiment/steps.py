"""Steps 01-04 of the experiment: data, baseline, activations, vectors.

Each step reads the products of the steps before it from the run directory (see
:class:`steerlib.experiment.runs.RunPaths` and :data:`steerlib.experiment.table.STEPS`) and writes
its
own; a step whose products exist and whose status is ``done`` returns them instead of
recomputing (``force=True`` recomputes).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd

from steerlib._io import atomic_write_parquet
from steerlib.data.perspective import drop_scorer_partition
from steerlib.errors import ConfigError
from steerlib.evaluate.metrics import SECOND_SUFFIX
from steerlib.experiment.config import RunParams, split_arguments
from steerlib.experiment.run import Run
from steerlib.generate.generation import DecodingSettings

__all__ = [
    "EVAL_SUBSETS",
    "build_vectors",
    "capture_activations",
    "contrastive_texts",
    "eval_prompts",
    "matched_pairs",
    "prepare_data",
    "run_baseline",
    "score",
    "variant_inputs",
]

EVAL_SUBSETS = ("challenging", "benign")
"""The prompt roles the sweep and the analysis evaluate (step 01's ``role`` column; in the tables
of completions the same values are the ``subset`` column, see docs/layout.md)."""


def eval_prompts(prompts: pd.DataFrame, roles: tuple[str, ...] = EVAL_SUBSETS) -> pd.DataFrame:
    """The prompts of ``roles``, with the role as the ``subset`` column.

    ``role`` (prompts table) says what a prompt is for in the run; ``subset`` (completions,
    sweep and summary tables) is the role of a row's prompt.
    """
    rows = prompts[prompts["role"].isin(roles)]
    return rows.rename(columns={"role": "subset"})[["prompt_id", "prompt", "subset"]]


def score(run: Run, table: pd.DataFrame) -> pd.DataFrame:
    """Add ``toxicity`` and ``perplexity`` columns to a completions table.

    With a ``second_scorer`` the completions are scored by it too, in ``toxicity_second``.
    """
    from steerlib.evaluate.fluency import continuation_perplexity, judge_prompt_format
    from steerlib.experiment.timings import phase

    table = table.copy()
    table["toxicity"] = run.scorer().score(table["completion"].tolist())
    second = run.second_scorer()
    if second is not None:  # one more batched pass; its column carries the suffix
        table[f"toxicity{SECOND_SUFFIX}"] = second.score(table["completion"].tolist())
    with phase("judge perplexity"):
        judge, judge_tokenizer = run.judge()
        table["perplexity"] = continuation_perplexity(
            judge,
            judge_tokenizer,
            table["prompt"].tolist(),
            table["completion"].tolist(),
            prompt_format=judge_prompt_format(
                run.params.prompt_format, run.params.model, run.params.perplexity_model
            ),
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
    from steerlib.data.prompts import load_prompts
    from steerlib.data.subsets import split_prompts
    from steerlib.models.loading import load_tokenizer

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
        challenging, benign = drop_scorer_partition(challenging, benign)
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

    from steerlib.generate.engine import generate_unit, sweep_units

    paths, p = run.paths, run.params
    if not force and run.done("02_baseline", paths.baseline):
        return pd.read_parquet(paths.baseline)
    prompts = pd.read_parquet(run.require("prompts"))
    roles = EVAL_SUBSETS + (("pairs_toxic", "pairs_nontoxic") if p.pair_source != "prompts" else ())
    with run.step("02_baseline"):
        model, tokenizer = run.model()
        evaluation = eval_prompts(prompts, roles)
        # Unsteered: the steering options do not apply (kept at their defaults, as always).
        decoding = replace(DecodingSettings.of(p), positions="all", units="raw")
        # The sweep engine without a vector: prompts encoded once, samples share the cache.
        units = sweep_units(
            evaluation,
            layers=[-1],
            directions=["none"],
            tokenizer=tokenizer,
            alphas=[0.0],
            samples_per_prompt=decoding.samples_per_prompt,
            max_new_tokens=decoding.max_new_tokens,
            prompt_format=decoding.prompt_format,
        )
        tables = [
            generate_unit(
                model,
                tokenizer,
                unit,
                evaluation,
                alphas=[0.0],
                settings=decoding,
            )
            for unit in tqdm(units, desc="baseline", unit="unit")
        ]
        table = score(run, pd.concat(tables, ignore_index=True))
        atomic_write_parquet(paths.baseline, table)
    return table


# -- 03 activations --------------------------------------------------------------------------
def contrastive_texts(run: Run) -> tuple[list[str], list[str], str]:
    """The toxic and non-toxic texts of the vector, and a description of their source."""
    from steerlib.data.subsets import pair_texts

    p = run.params
    prompts = pd.read_parquet(run.require("prompts"))
    if p.pair_source == "prompts":
        toxic = pair_texts(prompts[prompts["role"] == "pairs_toxic"])
        nontoxic = pair_texts(prompts[prompts["role"] == "pairs_nontoxic"])
        return toxic, nontoxic, f"prompts: {p.challenging_source} / {p.benign_source}"
    baseline = pd.read_parquet(run.require("baseline"))
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
    from steerlib.steer.activations import ResidualActivations, capture_residuals
    from steerlib.steer.vectors import model_provenance

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
    from steerlib.steer.activations import ResidualActivations
    from steerlib.steer.vectors import SteeringVector, compute_caa

    paths, p = run.paths, run.params
    if not force and run.done("04_vectors", paths.vectors, paths.control_vectors):
        return SteeringVector.load(paths.vectors), SteeringVector.load(paths.control_vectors)
    toxic = ResidualActivations.load(run.require("activations_toxic"))
    nontoxic = ResidualActivations.load(run.require("activations_nontoxic"))
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
        _fit_and_save_probe(run, toxic, nontoxic)
    return vector, control


def _fit_and_save_probe(run: Run, toxic: Any, nontoxic: Any) -> Any:
    from steerlib.steer.probe import fit_probe

    probe = fit_probe(toxic, nontoxic, seed=run.params.seed)
    probe.provenance.update(run_name=run.paths.name, pair_source=run.params.pair_source)
    probe.save(run.paths.probe)
    return probe


def variant_inputs(run: Run, vector: Any) -> tuple[Any, Any]:
    """The run's toxicity probe and its CAA vector with the clamp levels, for the variants.

    Runs whose step 04 predates the probe and the non-toxic projections (or whose step 04 was
    copied from such a run) get both from step 03's activations here: the probe is fitted
    and saved as step 04 would (a second or so), the projections are computed in memory.

    Returns:
        ``(probe, vector)``.
    """
    from dataclasses import replace as replace_field

    from steerlib.steer.activations import ResidualActivations
    from steerlib.steer.probe import ToxicityProbe

    paths = run.paths
    probe = ToxicityProbe.load(paths.probe) if paths.probe.is_file() else None
    if probe is not None and vector.nontoxic_projections:
        return probe, vector
    toxic = ResidualActivations.load(run.require("activations_toxic"))
    nontoxic = ResidualActivations.load(run.require("activations_nontoxic"))
    if probe is None:
        probe = _fit_and_save_probe(run, toxic, nontoxic)
    if not vector.nontoxic_projections:
        means = nontoxic.mean()
        projections = {
            layer: float(means[i] @ (vector[layer] / vector[layer].norm().clamp(min=1e-12)))
            for i, layer in enumerate(nontoxic.layers)
            if layer in vector.directions
        }
        vector = replace_field(vector, nontoxic_projections=projections)
    return probe, vector
