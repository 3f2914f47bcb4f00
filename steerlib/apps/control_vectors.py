"""Vectors that travel: llama.cpp control vectors and repeng, out and back in.

Both formats are the GGUF control-vector file that llama.cpp reads with ``--control-vector`` and
``--control-vector-scaled``: ``general.architecture = "controlvector"``, the string
``controlvector.model_hint``, the integer ``controlvector.layer_count`` (how many directions the
file holds) and one 1-D float32 tensor ``direction.N`` per steered layer.

**Conventions** (checked in llama.cpp's source: ``common/common.cpp``
``common_control_vector_load_one``, ``src/llama-adapter.cpp`` and the model graphs such as
``src/models/llama.cpp``): ``direction.N`` is scaled by the strength given on the command line
(``--control-vector-scaled FILE:SCALE``, or ``FILE SCALE`` in older builds; files and duplicate
directions are summed) and **added** to the output of block ``N``, where ``N`` is the same
0-based index as ``blk.N`` in the model's GGUF and as ``model.model.layers[N]`` in transformers:
the graph loop ``for il in 0..n_layer-1`` ends each block with ``cur = build_cvec(cur, il)``,
which adds the tensor loaded from ``direction.il``. ``direction.1`` therefore acts on the
output of the *second* block, and ``direction.0`` is rejected ("invalid (zero) direction tensor
layer index"): llama.cpp cannot steer the first block's output, and one bad tensor makes it
skip the whole file. It steers every position, prompt included (``positions="all"`` here), and
``--control-vector-layer-range START END`` keeps the blocks ``START..END`` (inclusive; default
``1..n_layer``).

This project (:mod:`steerlib.steer.hooks`) *subtracts* ``alpha * v[L]`` from the output of decoder
layer ``L`` (0-based, the same block). So the export writes ``direction.L = -scale * v[L]``
under the same index ``L``, and ``--control-vector-scaled FILE:ALPHA`` on a file written with
``scale=1`` does what ``steering(model, v, alpha=ALPHA, layers=L)`` does (with
``units="raw"``). The scale is recorded (``steerlib.scale``) and the import divides by it and
flips the sign back, so ``from_gguf(to_gguf(v))`` gives ``v`` (bit for bit when the scale is a
power of two, 1 included). A file made elsewhere (llama.cpp's ``llama-cvector-generator``,
repeng) is read the same way: the imported vector is ``-direction``, so a positive alpha here
means what a positive strength means there.

**repeng** (``vgel/repeng``, ``repeng/extract.py`` and ``repeng/control.py``) keeps
``ControlVector(model_type, directions: dict[int, ndarray])`` whose keys are the same 0-based
decoder-layer indices; ``ControlModel.set_control(vector, coeff)`` *adds* ``coeff *
directions[L]`` to that layer's output, and ``export_gguf`` / ``import_gguf`` write and read
the very file above (``layer_count`` as uint32, each key as ``direction.KEY``; ``import_gguf``
requires ``model_hint``). repeng has no other writer; a ``ControlVector`` kept any other way
is a pickle, which is not read here: unpickling runs code from the file. :func:`to_repeng`
differs from :func:`to_gguf` only where repeng does: it may hold layer 0 (repeng can steer it;
llama.cpp will not load such a file) and writes the count as uint32. Use
``ControlVector.import_gguf(FILE)`` and ``set_control(vector, ALPHA)`` on the repeng side.

Everything else this project knows about the vector (provenance, mean norms) travels in
``steerlib.*`` header keys, which llama.cpp and repeng ignore.

The command that exports a run's vector is :mod:`steerlib.apps.export`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerlib._io import _finite, atomic_write
from steerlib.errors import ConfigError, DataError
from steerlib.steer.vectors import SteeringVector

__all__ = [
    "ARCHITECTURE",
    "LLAMA_CPP",
    "REPENG",
    "Flavour",
    "from_gguf",
    "from_repeng",
    "model_hint_for",
    "to_gguf",
    "to_repeng",
]

ARCHITECTURE = "controlvector"
"""``general.architecture`` of a control-vector GGUF."""

KEY_MODEL_HINT = f"{ARCHITECTURE}.model_hint"
KEY_LAYER_COUNT = f"{ARCHITECTURE}.layer_count"
KEY_SCALE = "steerlib.scale"
KEY_PROVENANCE = "steerlib.provenance"
KEY_MEAN_NORMS = "steerlib.mean_norms"
KEY_CONVENTION = "steerlib.convention"

CONVENTION = (
    "direction.N = -scale * v[N]; llama.cpp and repeng add strength * direction.N to the output "
    "of block N (0-based); steerlib subtracts alpha * v[N] from the output of layer N"
)

_DIRECTION = re.compile(r"direction\.(\d+)")
_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "Model")


@dataclass(frozen=True)
class Flavour:
    """What differs between llama.cpp's reading of the file and repeng's."""

    name: str
    first_layer: int
    count_type: str
    reader: str


LLAMA_CPP = Flavour("llama.cpp control vector", 1, "int32", "from_gguf")
REPENG = Flavour("repeng ControlVector", 0, "uint32", "from_repeng")


def model_hint_for(vector: SteeringVector) -> str | None:
    """The ``controlvector.model_hint`` for ``vector``, from its provenance.

    An earlier import's ``model_hint`` wins; otherwise the transformers class is turned into
    the architecture name llama.cpp and repeng write (``LlamaForCausalLM`` -> ``llama``,
    ``Phi3ForCausalLM`` -> ``phi3``, ``GPT2LMHeadModel`` -> ``gpt2``).

    Returns:
        The hint, or ``None`` when the provenance names no model class.
    """
    hint = vector.provenance.get("model_hint")
    if hint:
        return str(hint)
    name = str(vector.provenance.get("model_class") or "")
    for suffix in _CLASS_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)].lower()
    return None


# -- writing ---------------------------------------------------------------------------------
def _check_scale(scale: float) -> float:
    value = float(scale)
    if not math.isfinite(value) or value == 0.0:
        raise ConfigError(
            f"scale must be a finite non-zero number, got {scale!r}: use 1.0 and give the "
            "strength on the command line (--control-vector-scaled FILE:ALPHA)."
        )
    return value


def _check_layers(vector: SteeringVector, flavour: Flavour) -> None:
    first = flavour.first_layer
    low = [layer for layer in vector.layers if layer < first]
    if low == [0]:
        raise ConfigError(
            "llama.cpp cannot steer the output of block 0 (it rejects direction.0 and then "
            "skips the whole file): export vector.select([...]) without layer 0, or use "
            "to_repeng for repeng, which can."
        )
    if low:
        raise ConfigError(
            f"layer indices {low} cannot be written to a {flavour.name}: indices count decoder "
            f"layers from 0 and this format starts at {first}."
        )
    built = vector.provenance.get("num_layers")
    high = [layer for layer in vector.layers if built is not None and layer >= int(built)]
    if high:
        raise ConfigError(
            f"layers {high} do not exist in the {built}-layer model this vector was built on: "
            "select the model's layers with vector.select([...])."
        )


def _check_finite(vector: SteeringVector) -> None:
    for layer in vector.layers:
        bad = int((~torch.isfinite(vector[layer])).sum())
        if bad:
            raise ConfigError(
                f"the direction at layer {layer} has {bad} NaN or infinite value(s): rebuild the "
                "vector (check the activations it came from) or export only the finite layers "
                "with vector.select([...])."
            )


def _write(
    vector: SteeringVector,
    path: str | os.PathLike[str],
    flavour: Flavour,
    model_hint: str | None,
    scale: float,
) -> Path:
    import gguf

    factor = _check_scale(scale)
    _check_layers(vector, flavour)
    _check_finite(vector)
    hint = model_hint or model_hint_for(vector)
    if not hint:
        raise ConfigError(
            "the vector's provenance names no model: pass model_hint='llama' (the model's "
            "architecture as llama.cpp names it: general.architecture of its GGUF)."
        )
    tensors = {
        layer: (vector[layer].detach().to(torch.float32).cpu() * -factor).numpy().copy()
        for layer in vector.layers
    }
    provenance = json.dumps(_finite(vector.provenance), ensure_ascii=False, default=str)
    norms = json.dumps({str(k): v for k, v in _finite(vector.mean_norms).items()})

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), ARCHITECTURE)
        writer.add_string(KEY_MODEL_HINT, hint)
        if flavour.count_type == "uint32":
            writer.add_uint32(KEY_LAYER_COUNT, len(tensors))
        else:
            writer.add_int32(KEY_LAYER_COUNT, len(tensors))
        writer.add_float64(KEY_SCALE, factor)
        writer.add_string(KEY_CONVENTION, CONVENTION)
        writer.add_string(KEY_PROVENANCE, provenance)
        writer.add_string(KEY_MEAN_NORMS, norms)
        for layer, values in tensors.items():
            writer.add_tensor(f"direction.{layer}", values)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(path, write)


def to_gguf(
    vector: SteeringVector,
    path: str | os.PathLike[str],
    *,
    model_hint: str | None = None,
    scale: float = 1.0,
) -> Path:
    """Write ``vector`` as a llama.cpp control vector.

    ``direction.L`` holds ``-scale * vector[L]`` for every layer ``L`` of the vector (the same
    0-based block index; see the module docstring), so ``llama-cli --control-vector-scaled
    FILE:ALPHA`` steers like ``steering(model, vector, alpha=ALPHA * scale, layers=L)``.

    Args:
        vector: The steering vector (points toward toxicity); layer 0 cannot be exported.
        path: Destination ``.gguf`` file (written atomically).
        model_hint: ``controlvector.model_hint``; default from the provenance
            (:func:`model_hint_for`, ``"llama"`` for SmolLM2).
        scale: Factor folded into the file (``--control-vector FILE`` then applies alpha
            ``scale``); recorded, and undone by :func:`from_gguf`.

    Returns:
        The written path.

    Raises:
        ConfigError: Layer 0 or a negative layer, a layer past the model's, a NaN or infinite
            value, a zero or non-finite scale, or no model hint.

    Example:
        >>> to_gguf(SteeringVector.load("data/runs/default/vectors.safetensors").select(12),
        ...         "vectors.gguf")  # doctest: +SKIP
    """
    return _write(vector, path, LLAMA_CPP, model_hint, scale)


def to_repeng(
    vector: SteeringVector,
    path: str | os.PathLike[str],
    *,
    model_hint: str | None = None,
    scale: float = 1.0,
) -> Path:
    """Write ``vector`` as the GGUF that repeng's ``ControlVector.import_gguf`` reads.

    Same file and conventions as :func:`to_gguf` (``direction.L = -scale * vector[L]``, added by
    ``ControlModel.set_control(vector, coeff)`` to layer ``L``'s output), except that layer 0
    is allowed and the count is a uint32, as repeng writes it.

    Args:
        vector: The steering vector (points toward toxicity).
        path: Destination ``.gguf`` file (written atomically).
        model_hint: repeng's ``model_type`` (the transformers ``config.model_type``); default
            from the provenance (:func:`model_hint_for`).
        scale: Factor folded into the file; recorded, and undone by :func:`from_repeng`.

    Returns:
        The written path.

    Raises:
        ConfigError: A negative layer, a layer past the model's, a NaN or infinite value, a zero
            or non-finite scale, or no model hint.
    """
    return _write(vector, path, REPENG, model_hint, scale)


# -- reading ---------------------------------------------------------------------------------
def _field(reader: Any, key: str) -> Any:
    """The value of a scalar or string header field, or ``None`` when absent."""
    import gguf

    field = reader.fields.get(key)
    if field is None or not field.types or not field.data:
        return None
    part = field.parts[field.data[0]]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return None
    return part.tolist()[0]


def _open(path: str | os.PathLike[str]) -> Any:
    import gguf

    source = Path(path)
    if not source.is_file():
        raise DataError(f"No control-vector file at {source}.")
    try:
        return gguf.GGUFReader(source)
    except Exception as exc:
        raise DataError(
            f"{source} is not a readable GGUF file ({exc}): give a control vector written by "
            "to_gguf, llama.cpp's llama-cvector-generator or repeng's export_gguf."
        ) from exc


def _json_field(reader: Any, key: str, source: Path) -> Any:
    text = _field(reader, key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}: header key {key} is not valid JSON ({exc}).") from exc


def _direction(tensor: Any, source: Path, flavour: Flavour) -> tuple[int, torch.Tensor]:
    import gguf

    match = _DIRECTION.fullmatch(tensor.name)
    if match is None:
        raise DataError(
            f"{source} holds tensor {tensor.name!r}: a control vector holds only tensors named "
            "direction.N (N a layer index)."
        )
    layer = int(match.group(1))
    if layer < flavour.first_layer:
        raise DataError(
            f"{source} holds direction.0, which llama.cpp rejects (it cannot steer block 0): "
            "if the file came from repeng, read it with from_repeng."
        )
    if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
        raise DataError(
            f"{source}: {tensor.name} is {tensor.tensor_type.name}, not F32; write control "
            "vectors as float32."
        )
    if int(np.prod([int(d) for d in tensor.shape[1:]])) != 1:
        raise DataError(f"{source}: {tensor.name} has shape {list(tensor.shape)}, not 1-D.")
    values = np.array(tensor.data, dtype=np.float32).reshape(-1)
    if not np.isfinite(values).all():
        raise DataError(
            f"{source}: {tensor.name} has NaN or infinite values; the file is damaged or was "
            "written from a broken vector."
        )
    return layer, torch.from_numpy(values)


def _read(path: str | os.PathLike[str], flavour: Flavour) -> SteeringVector:
    source = Path(path)
    reader = _open(source)
    architecture = _field(reader, "general.architecture")
    if architecture != ARCHITECTURE:
        raise DataError(
            f"{source} is a GGUF of architecture {architecture!r}, not a control vector "
            f"(general.architecture = {ARCHITECTURE!r}): pass the control-vector file, not the "
            "model."
        )
    directions: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        layer, values = _direction(tensor, source, flavour)
        directions[layer] = values
    if not directions:
        raise DataError(f"{source} holds no direction.N tensor: there is nothing to import.")
    if len({t.shape[0] for t in directions.values()}) != 1:
        raise DataError(f"{source}: the direction tensors do not all have the same length.")
    stored = _field(reader, KEY_SCALE)
    scale = 1.0 if stored is None else float(stored)
    if not math.isfinite(scale) or scale == 0.0:
        raise DataError(f"{source}: {KEY_SCALE} is {scale}, which cannot be undone.")
    vectors = {layer: values / -scale for layer, values in sorted(directions.items())}
    provenance = dict(_json_field(reader, KEY_PROVENANCE, source) or {})
    hint = _field(reader, KEY_MODEL_HINT)
    if hint:
        provenance["model_hint"] = hint
    provenance["imported_from"] = {"format": flavour.name, "path": str(source)}
    norms = _json_field(reader, KEY_MEAN_NORMS, source) or {}
    mean_norms = {int(k): float(v) for k, v in norms.items() if v is not None and int(k) in vectors}
    return SteeringVector(vectors, provenance, mean_norms)


def from_gguf(path: str | os.PathLike[str]) -> SteeringVector:
    """Read a llama.cpp control vector as a :class:`~steerlib.steer.vectors.SteeringVector`.

    The inverse of :func:`to_gguf`: layer ``N`` of the result is ``-direction.N / scale``
    (``scale`` as recorded, 1 for files made elsewhere), so ``steering(model, v, alpha, N)``
    does what ``--control-vector-scaled FILE:ALPHA`` does. Provenance written by :func:`to_gguf`
    comes back, with ``model_hint`` and ``imported_from`` added.

    Args:
        path: A control-vector ``.gguf``.

    Returns:
        The vector, pointing the way steerlib's vectors do (subtracted when steering).

    Raises:
        DataError: No such file, not a GGUF, not a control vector, ``direction.0``, a tensor
            that is not a finite 1-D float32 ``direction.N``, or directions of unequal lengths.
    """
    return _read(path, LLAMA_CPP)


def from_repeng(path: str | os.PathLike[str]) -> SteeringVector:
    """Read a repeng ``ControlVector.export_gguf`` file (``direction.0`` allowed).

    Layer ``N`` of the result is ``-direction.N / scale`` (see :func:`from_gguf`), so
    ``steering(model, v, alpha, N)`` does what repeng's ``set_control(vector, alpha)`` does at
    layer ``N``. repeng's pickled ``ControlVector`` objects are not read (unpickling runs code):
    export them with ``vector.export_gguf(path)`` first.

    Raises:
        DataError: As :func:`from_gguf`, except that ``direction.0`` is accepted.
    """
    return _read(path, REPENG)
