"""Atomic file writes: a crash never leaves a truncated file that a later step would read.

Each writer writes to a temporary file in the destination folder, flushes it to disk and
renames it over the destination (``os.replace`` is atomic on POSIX and Windows). With
``replace=False`` the file is published with a hard link instead, which fails when the
destination exists: a file that several processes may write (a sweep unit of torchrun workers)
is then written once, by the first.

Every parquet file written here carries a checksum of its rows in its own metadata
(:data:`CHECKSUM_KEY`, see :func:`frame_checksum`); :func:`read_checked_parquet` verifies it,
so a unit or product edited in place, or one written by other tools, is reported instead of
being used. :func:`file_sha256` fingerprints whole files (the chain runner records them).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)

CHECKSUM_KEY = b"steerlib.checksum"
"""Parquet schema-metadata key holding :func:`frame_checksum` of the file's rows."""

__all__ = [
    "CHECKSUM_KEY",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "file_sha256",
    "frame_checksum",
    "load_tensors",
    "read_checked_parquet",
    "save_tensors",
]


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], None], *, replace: bool = True
) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``.

    Args:
        path: Destination file; its parent folder is created if needed.
        write: Function that writes the complete file to the temporary path it is given.
        replace: Replace an existing ``path``; with False an existing one is kept and
            :class:`FileExistsError` raised (a file system without hard links falls back to a
            check before the rename, which two racing writers can both pass).

    Returns:
        The destination path.

    Raises:
        FileExistsError: ``replace`` is False and ``path`` exists.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; use the usual mode
        if replace:
            os.replace(tmp, dest)
        else:
            _publish_once(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _publish_once(tmp: Path, dest: Path) -> None:
    """Give ``tmp`` the name ``dest`` unless that exists (FileExistsError); ``tmp`` is kept."""
    try:
        os.link(tmp, dest)  # atomic, and refused when ``dest`` exists
    except FileExistsError:
        raise
    except OSError:  # pragma: no cover - a file system without hard links
        if dest.exists():
            raise FileExistsError(dest) from None
        os.replace(tmp, dest)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON (non-finite floats are written as ``null``)."""
    text = json.dumps(_finite(obj), indent=indent, ensure_ascii=False, default=str)
    return atomic_write_text(path, text + "\n")


def frame_checksum(df: pd.DataFrame) -> str:
    """SHA-256 of a table's column names and values (row order counts; dtypes do not).

    The same rows give the same checksum before writing and after reading back, whatever
    type pandas gives the strings; a changed value, row or column changes it.
    """
    digest = hashlib.sha256()
    for name in df.columns:
        column = df[name]
        try:
            hashed = pd.util.hash_pandas_object(column, index=False)
        except TypeError:  # cells that pandas cannot hash (lists, arrays): their JSON text
            hashed = pd.util.hash_pandas_object(column.map(_cell_text), index=False)
        digest.update(str(name).encode("utf-8") + b"\0")
        digest.update(hashed.to_numpy().tobytes())
    return digest.hexdigest()


def _cell_text(value: Any) -> str:
    """A list-like cell as JSON text (a list written comes back as an array)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return json.dumps(value, default=str)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_parquet(
    path: str | os.PathLike[str], df: pd.DataFrame, *, replace: bool = True
) -> Path:
    """Atomically write ``df`` as a parquet file (index dropped); see :func:`atomic_write`.

    The file's schema metadata holds :func:`frame_checksum` of ``df`` (:data:`CHECKSUM_KEY`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(tmp: Path) -> None:
        table = pa.Table.from_pandas(df, preserve_index=False)
        meta = {**(table.schema.metadata or {}), CHECKSUM_KEY: frame_checksum(df).encode()}
        pq.write_table(table.replace_schema_metadata(meta), tmp)

    return atomic_write(path, write, replace=replace)


def read_checked_parquet(
    path: str | os.PathLike[str], what: str, fix: str, *, required: bool = True
) -> pd.DataFrame:
    """Read a parquet file written by :func:`atomic_write_parquet` and verify its checksum.

    Args:
        path: The file.
        what: What it holds, for the message (``"sweep unit"``).
        fix: What to do about a damaged file, for the message.
        required: Refuse a file without a checksum (not written by steerlib, or rewritten by
            another tool); with False such a file is read unchecked.

    Raises:
        DamagedRunError: The file cannot be read, has no checksum (``required``), or its rows
            differ from its checksum; one line naming the file and ``fix``.
    """
    import pyarrow.parquet as pq

    from steerlib.errors import DamagedRunError

    source = Path(path)
    try:
        table = pq.read_table(source)
        df = table.to_pandas()
    except Exception as exc:  # pyarrow raises several error types for a damaged file
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:120]
        raise DamagedRunError(f"{what} {source} is damaged ({reason}); {fix}.") from None
    recorded = (table.schema.metadata or {}).get(CHECKSUM_KEY)
    if recorded is None:
        if not required:
            return df
        raise DamagedRunError(
            f"{what} {source} has no steerlib checksum (it was rewritten by another tool or "
            f"by hand); {fix}."
        )
    if recorded.decode() != frame_checksum(df):
        raise DamagedRunError(
            f"{what} {source} does not match its checksum (edited or damaged after it was "
            f"written); {fix}."
        )
    return df


def _finite(obj: Any) -> Any:
    """Replace NaN and infinities by ``None`` so the JSON stays standard."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(value) for value in obj]
    return obj


def save_tensors(
    path: str | os.PathLike[str], tensors: dict[str, Any], meta: dict[str, Any]
) -> Path:
    """Write ``tensors`` as safetensors with ``meta`` as JSON provenance, atomically.

    The provenance is stored twice: in the safetensors header (the copy that is read back) and in
    a ``.json`` sidecar beside it, for people and tools that do not read safetensors.
    """
    from safetensors.torch import save_file

    dest = Path(path)
    header = {"steerlib": json.dumps(_finite(meta))}
    atomic_write(dest, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    atomic_write_json(dest.with_suffix(".json"), meta)
    return dest


def load_tensors(path: str | os.PathLike[str], what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a file written by :func:`save_tensors`: ``(tensors, provenance)``.

    Only safetensors are read; nothing is unpickled.

    Raises:
        DataError: The file is missing.
        DamagedRunError: The file is not a readable safetensors file (truncated or corrupt);
            the message names ``what`` it should hold and says to delete it.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from steerlib.errors import DamagedRunError, DataError

    source = Path(path)
    if not source.is_file():
        raise DataError(f"No {what} file at {source}.")
    try:
        with safe_open(str(source), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("steerlib", "{}"))
        tensors = load_file(str(source))
    except Exception as exc:  # safetensors and json raise their own error types
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
        raise DamagedRunError(
            f"{source} is not a readable steerlib {what} file ({reason}); delete it and run "
            "the step that writes it again (python -m steerlib run ... --force)."
        ) from None
    return tensors, meta
