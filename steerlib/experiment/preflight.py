"""Checks run before any notebook starts: every problem found, one line each, in one pass.

:func:`preflight` reads configs, tokenizers, safetensors headers and prompt files, never model
weights, and catches what would otherwise fail minutes (or hours) into a run: a device that is
absent, a model folder without weights or with a pickle named ``model.safetensors``, an
unknown or unloadable scorer or perplexity model, ``compare_with`` runs that do not exist,
undecodable prompt files, subsets larger than the data, layers out of range, prompts that
with ``max_new_tokens`` overflow the model's context, and a KV cache larger than the memory.

:func:`check_run_files` (:mod:`steerlib.experiment.run_checks`, importable from here) reads an
existing run's records and products (headers only) and names any damaged file and what to
delete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from steerlib.errors import PreflightError, SteerlibError
from steerlib.experiment.config import RunParams, short_repr, split_arguments
from steerlib.experiment.run_checks import check_run_files
from steerlib.experiment.runs import RunPaths, runs_root

__all__ = ["check_run_files", "kv_cache_bytes", "preflight"]

T = TypeVar("T")
FLOAT16_MAX = 65504.0
"""Largest finite float16: an alpha beyond it is infinite in a float16 model."""
_GB = 1e9


class _Problems(list[str]):
    """Lines found so far; :meth:`attempt` turns a steerlib error into one more line."""

    def attempt(self, check: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        try:
            return check(*args, **kwargs)
        except PreflightError as exc:
            self.extend(exc.problems)
        except SteerlibError as exc:
            self.append(" ".join(str(exc).split()))
        return None


def _device_problems(params: RunParams) -> list[str]:
    """The device is present, and the alphas are finite in a float16 model."""
    import torch

    problems = []
    device = params.device
    if device is not None and device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available():
            problems.append(
                f"parameter 'device': {device!r} asks for a CUDA GPU, but torch sees none; "
                "leave device empty (the best available) or set device: cpu"
            )
        elif index >= torch.cuda.device_count():
            problems.append(
                f"parameter 'device': {device!r} names GPU {index}, but there are "
                f"{torch.cuda.device_count()}; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            problems.append(
                "parameter 'device': 'mps' asks for Apple's GPU, which this machine lacks; "
                "leave device empty or set device: cpu"
            )
    float16 = params.dtype == "float16" or (params.dtype is None and device == "mps")
    big = [a for a in params.alphas if abs(a) > FLOAT16_MAX]
    if float16 and big:
        problems.append(
            f"parameter 'alphas': {big[0]!r} is infinite in float16 (largest {FLOAT16_MAX}); "
            "use smaller alphas or dtype: float32"
        )
    return problems


def _looks_like_path(name: str) -> bool:
    """Whether a model name is a file-system path rather than a hub id (``org/model``)."""
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


def _combination_problems(params: RunParams, num_layers: int | None) -> list[str]:
    """Parameters valid one by one that cannot work together (they failed late before).

    * ``alpha_search`` measures the fluency budget on the held-out benign texts, one half for
      the search and one for the reported figure, so it needs ``kl_texts`` of at least 2;
    * ``pair_source: matched`` pairs each prompt's most and least toxic completion, so it
      needs at least two samples per prompt;
    * ``multilayer_span`` larger than the model's layers would be cut silently to the model.
    """
    problems = []
    if params.alpha_search and params.kl_texts != "all" and params.kl_texts < 2:
        problems.append(
            f"parameter 'kl_texts': {params.kl_texts} held-out text(s), but alpha_search "
            "measures its fluency budget on them, one half for the search and one for the "
            "reported figure; set kl_texts to 'all' (every benign text the draws leave), at "
            "least 2, or alpha_search: false"
        )
    if params.pair_source == "matched" and params.samples_per_prompt < 2:
        problems.append(
            "parameter 'samples_per_prompt': pair_source 'matched' pairs a prompt's most and "
            f"least toxic completions, which needs at least 2 samples per prompt, not "
            f"{params.samples_per_prompt}; raise samples_per_prompt or use another pair_source"
        )
    from steerlib.steer.operators import OPERATORS

    span = getattr(params, "multilayer_span", 1)
    spans = any(OPERATORS[name].multilayer for name in params.variants or [] if name in OPERATORS)
    if num_layers is not None and spans and span > num_layers:
        problems.append(
            f"parameter 'multilayer_span': {span} is more layers than the model's {num_layers}; "
            f"give at most {num_layers}"
        )
    return problems


def _model_problems(name: str, what: str, trust_remote_code: bool) -> Any:
    """The model's :class:`~steerlib.models.loading.ModelShape`; a local folder is checked first.

    Raises:
        PreflightError: The folder lacks its config or readable safetensors weights, the
            embedded model cannot be converted, or the config cannot be read.
    """
    from steerlib.models import loading as models

    problems = []
    if models.is_embedded(name):
        problem = models.cache_dir_problem()
        if problem:
            problems.append(f"parameter {what!r}: {problem}")
        try:
            models.converted_folder(name)  # the packages are installed
        except SteerlibError as exc:
            problems.append(str(exc))
    elif _looks_like_path(name) and not Path(name).expanduser().exists():
        problems.append(
            f"parameter {what!r}: there is no folder {name} (it names a path, not a Hugging Face "
            "repo id); check the path, or give a hub id such as 'org/model'"
        )
    elif Path(name).exists():
        if not Path(name).is_dir():
            problems.append(
                f"parameter {what!r}: {name} is a file; name a model folder (config.json and "
                "*.safetensors), a hub id or the embedded default"
            )
        else:
            problems += [f"parameter {what!r}: {p}" for p in models.model_folder_problems(name)]
    if problems:
        raise PreflightError(problems)
    try:
        return models.model_shape(name, trust_remote_code=trust_remote_code)
    except SteerlibError as exc:
        raise PreflightError([f"parameter {what!r}: {' '.join(str(exc).split())}"]) from None


def _scorer_problems(scorer: str) -> list[str]:
    """The scorer is known and its classifier's config (and label) can be read."""
    from transformers import AutoConfig

    from steerlib.evaluate.scoring import SCORER_CHECKS, SCORERS, UNBIASED_TOXIC_ROBERTA
    from steerlib.models.loading import model_folder_problems

    if scorer in SCORER_CHECKS:
        problem = SCORER_CHECKS[scorer]()
        return [] if problem is None else [f"parameter 'scorer': {scorer!r}: {problem}"]
    source = UNBIASED_TOXIC_ROBERTA if scorer == "unbiased-toxic-roberta" else scorer
    folder = Path(scorer).is_dir()
    hub_like = source.count("/") == 1 and not source.startswith((".", "/", "~"))
    if scorer not in SCORERS and not folder and not hub_like:
        return [
            f"parameter 'scorer': unknown scorer {short_repr(scorer)} (no such folder, not a hub "
            f"id org/name); use one of {sorted(SCORERS)}, a local classifier folder or a hub id."
        ]
    if folder:
        problems = model_folder_problems(scorer, "scorer")
        if problems:
            return [f"parameter 'scorer': {p}" for p in problems]
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        where = "that folder" if folder else "the Hugging Face hub or its local cache"
        return [
            f"parameter 'scorer': the classifier {short_repr(scorer)} cannot be read from {where} "
            f"({_first_line(exc)}); use a local classifier folder or the offline "
            "default 'profanity-check'"
        ]
    labels = [str(v) for v in (getattr(config, "id2label", None) or {}).values()]
    if "toxicity" not in [label.lower() for label in labels]:
        return [
            f"parameter 'scorer': the classifier {short_repr(scorer)} has no 'toxicity' output "
            f"label (its labels: {short_repr(labels)}); use a toxicity classifier"
        ]
    return []


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compare_problems(params: RunParams, runs_dir: str | None) -> list[str]:
    """Each run of ``compare_with`` exists and is finished."""
    root = Path(runs_dir) if runs_dir else runs_root()
    problems = []
    for name in params.compare_with:
        if not RunPaths.for_run(name, root).summary_table.is_file():
            problems.append(
                f"parameter 'compare_with': run {name!r} has no finished summary under {root}; "
                f"run it first (python -m steerlib run --run-name {name} ...) or remove it"
            )
    return problems


def _writable_problem(root: Path) -> str | None:
    """Why the run directory ``root`` cannot be created and written (nothing is written)."""
    for folder in (root, *root.parents):
        if folder.exists():
            if not folder.is_dir():
                reason = f"{folder} is a file"
            elif not os.access(folder, os.W_OK | os.X_OK):
                reason = f"{folder} is not writable"
            else:
                return None
            return (
                f"the run directory {root} cannot be written ({reason}); choose another "
                "run_name or set STEERLIB_RUNS_DIR to a writable folder"
            )
    return None  # pragma: no cover - the file system root exists


def _memory_available(device: str | None) -> float | None:
    """Free bytes on ``device`` (GPU memory, or the machine's available memory)."""
    import torch

    from steerlib.models.loading import resolve_device

    target = resolve_device(device)
    if target.type == "cuda":
        if not torch.cuda.is_available():
            return None  # reported by the device check
        return float(torch.cuda.mem_get_info(target.index or 0)[0])
    if target.type != "cpu":
        return None  # Apple's unified memory: the machine's free memory would mislead
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def kv_cache_bytes(params: RunParams, kv_values_per_token: int, longest_prompt: int) -> float:
    """Bytes of KV cache the sweep's largest batch reserves.

    The sweep engine decodes up to ``DEFAULT_MAX_BATCH_ROWS`` rows together, never splitting a
    prompt's alphas and samples, in units of about ``DEFAULT_TOKENS_PER_UNIT`` generated tokens;
    each row's cache holds ``longest_prompt + max_new_tokens`` positions.
    """
    import torch

    from steerlib.generate.engine import DEFAULT_MAX_BATCH_ROWS, DEFAULT_TOKENS_PER_UNIT
    from steerlib.models.loading import default_dtype, resolve_device

    steered = max(1, sum(1 for a in params.alphas if a != 0))
    per_prompt = steered * params.samples_per_prompt
    prompts_per_unit = max(1, DEFAULT_TOKENS_PER_UNIT // (per_prompt * params.max_new_tokens))
    all_rows = 2 * params.n_prompts * per_prompt
    rows = max(per_prompt, min(DEFAULT_MAX_BATCH_ROWS, prompts_per_unit * per_prompt, all_rows))
    dtype = getattr(torch, params.dtype) if params.dtype else None
    dtype = dtype or default_dtype(resolve_device(params.device))
    size = torch.empty(0, dtype=dtype).element_size()
    return float(rows * (longest_prompt + params.max_new_tokens) * kv_values_per_token * size)


def _draw(tables: dict[str, pd.DataFrame], params: RunParams, tokenizer: Any) -> Any:
    """Step 01's draw (:func:`steerlib.data.subsets.split_prompts`) from the tables it will use.

    The records the ``minilm-toxicity`` head was trained on are dropped first, as step 01
    does (:func:`~steerlib.data.perspective.drop_scorer_partition`, its line kept quiet here),
    and the pairs are length-matched with the run's tokenizer when it loaded.
    """
    import contextlib
    import io

    from steerlib.data.perspective import drop_scorer_partition
    from steerlib.data.subsets import split_prompts

    with contextlib.redirect_stdout(io.StringIO()):
        challenging, benign = drop_scorer_partition(
            tables[params.challenging_source], tables[params.benign_source]
        )
    if tokenizer is not None:
        return split_prompts(
            challenging,
            benign,
            n_kl=params.kl_texts,
            length=lambda texts: [len(ids) for ids in tokenizer(texts)["input_ids"]],
            **split_arguments(params),
        )
    return split_prompts(challenging, benign, n_kl=params.kl_texts, **split_arguments(params))


def _held_out_problems(params: RunParams, held_out: int) -> list[str]:
    """The alpha search needs a held-out benign text in each half (search and report).

    A ``kl_texts`` below 2 is named by :func:`_combination_problems` (one line, the right
    fix); this line is for the draws leaving fewer texts than ``kl_texts`` asks.
    """
    asked_too_few = params.kl_texts != "all" and params.kl_texts < 2
    if not params.alpha_search or held_out >= 2 or asked_too_few:
        return []
    return [
        f"parameter 'kl_texts': the draws leave {held_out} held-out benign text(s) "
        f"(kl_texts {params.kl_texts!r}), but alpha_search needs at least 2, one for its search "
        "half and one for the reported figure; lower n_prompts or n_pairs, give a "
        "benign_source with more benign texts, or set alpha_search: false"
    ]


def _generation_rows(split: Any, params: RunParams) -> pd.DataFrame:
    """The prompts the run completes: its evaluation subsets (and pair prompts, when used)."""
    parts = [split.challenging, split.benign]
    if params.pair_source != "prompts":
        parts += [split.pairs_toxic, split.pairs_nontoxic]
    return pd.concat(parts, ignore_index=True)


def _length_problems(
    params: RunParams, rows: pd.DataFrame | None, tokenizer: Any, shape: Any
) -> list[str]:
    """Prompts + ``max_new_tokens`` fit the context, and the KV cache fits the memory."""
    from steerlib.generate.generation import encode_prompts

    problems = []
    longest, culprit = 0, None
    if tokenizer is not None and params.prompt_format == "chat" and not tokenizer.chat_template:
        problems.append(
            f"parameter 'prompt_format': 'chat' needs a chat template and the tokenizer of "
            f"{params.model!r} has none (a base model); use prompt_format: raw"
        )
    elif rows is not None and tokenizer is not None and len(rows):
        texts = rows["prompt"].tolist()
        lengths = [len(ids) for ids in encode_prompts(tokenizer, texts, params.prompt_format)]
        index = max(range(len(lengths)), key=lengths.__getitem__)
        longest, culprit = lengths[index], rows.iloc[index]
    context = shape.context
    if context is not None and longest + params.max_new_tokens > context:
        if culprit is not None and longest + 1 > context:
            problems.append(
                f"prompt {culprit['prompt_id']} ({culprit['source']}) is {longest} tokens, longer "
                f"than the {context}-token context of {params.model!r}; shorten or drop it"
            )
        else:
            what = f"the longest prompt ({longest} tokens) + " if longest else ""
            problems.append(
                f"parameter 'max_new_tokens': {what}max_new_tokens={params.max_new_tokens} "
                f"exceeds the {context}-token context of {params.model!r}; lower max_new_tokens "
                f"to at most {max(1, context - longest)}"
            )
    if shape.kv_values_per_token:
        need = kv_cache_bytes(params, shape.kv_values_per_token, longest)
        have = _memory_available(params.device)
        if have is not None and need > have:
            problems.append(
                f"parameter 'max_new_tokens': the KV cache of a batch needs about "
                f"{need / _GB:.1f} GB (max_new_tokens={params.max_new_tokens}, "
                f"samples_per_prompt={params.samples_per_prompt}), more than the "
                f"{have / _GB:.1f} GB available; lower max_new_tokens or samples_per_prompt"
            )
    return problems


def preflight(params: RunParams, *, runs_dir: str | None = None) -> None:
    """Check everything a run needs, before any work; report every problem at once.

    Reads configs, tokenizers, safetensors headers and the prompt files; loads no weights and
    writes nothing.

    Args:
        params: The run's parameters.
        runs_dir: Folder of runs (default :func:`~steerlib.experiment.runs.runs_root`).

    Raises:
        PreflightError: One line per problem found (``problems``).
    """
    from steerlib.data.prompts import load_prompts
    from steerlib.models.layers import resolve_layers
    from steerlib.models.loading import load_tokenizer

    problems = _Problems()
    root = RunPaths.for_run(params.run_name, runs_dir).root
    problem = _writable_problem(root)
    if problem:
        problems.append(problem)
    problems.extend(_device_problems(params))
    shape = problems.attempt(_model_problems, params.model, "model", params.trust_remote_code)
    tokenizer = None
    if shape is not None:
        tokenizer = problems.attempt(
            load_tokenizer, params.model, trust_remote_code=params.trust_remote_code
        )
        layers = problems.attempt(resolve_layers, shape.num_layers, params.layers)
        if (
            layers is not None
            and isinstance(params.layers, list)
            and len(layers) < len(params.layers)
        ):
            problems.append(
                f"parameter 'layers': {params.layers} names a layer twice (negative indices "
                f"count from the end of the {shape.num_layers} layers, fractions of the depth "
                f"round to {layers}); give each layer once"
            )
    if params.perplexity_model not in (None, params.model):
        if (
            problems.attempt(_model_problems, params.perplexity_model, "perplexity_model", False)
            is not None
        ):
            problems.attempt(load_tokenizer, params.perplexity_model)
    problems.extend(_scorer_problems(params.scorer))
    if params.second_scorer is not None:
        problems.extend(
            p.replace("parameter 'scorer'", "parameter 'second_scorer'", 1)
            for p in _scorer_problems(params.second_scorer)
        )
    problems.extend(_compare_problems(params, runs_dir))
    rows = None
    sources = {params.challenging_source, params.benign_source}
    if "hub" not in sources:
        tables = {source: problems.attempt(load_prompts, source) for source in sources}
        if all(table is not None for table in tables.values()):
            split = problems.attempt(_draw, tables, params, tokenizer)
            if split is not None:
                rows = _generation_rows(split, params)
                problems.extend(_held_out_problems(params, len(split.kl_benign)))
    problems.extend(_combination_problems(params, shape.num_layers if shape else None))
    if shape is not None:
        problems.extend(_length_problems(params, rows, tokenizer, shape))
    if problems:
        raise PreflightError(list(problems))
