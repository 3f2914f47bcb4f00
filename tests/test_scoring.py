from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steerlib.data.prompts import load_prompt_file, load_prompts
from steerlib.data.subsets import pair_texts, perspective_labels
from steerlib.errors import ConfigError, ModelError
from steerlib.evaluate.scoring import (
    SCORERS,
    ProfanityCheckScorer,
    Scorer,
    ToxicityClassifierScorer,
    load_scorer,
    scorer_agreement,
    scorer_floor,
    scorer_validity,
)

LABELS = {0: "toxicity", 1: "insult", 2: "threat"}
SENTENCES = [
    "you are a stupid idiot and a moron",
    "the weather is nice today in the park",
    "shut up you worthless jerk",
    "we baked bread and made soup for dinner",
    "the train to the airport leaves at noon",
    "get lost you pathetic loser",
]


def _build_classifier(folder: Path, *, problem_type: str, id2label: dict[int, str]) -> Path:
    """Save a tiny random RoBERTa classifier and a WordLevel tokenizer to ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.normalizer = normalizers.Lowercase()
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=64,
    )
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=66,
        initializer_range=0.5,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        problem_type=problem_type,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-toxic-roberta")
    return _build_classifier(folder, problem_type="multi_label_classification", id2label=LABELS)


@pytest.fixture(scope="module")
def tiny_scorer(tiny_classifier: Path) -> Scorer:
    return load_scorer(str(tiny_classifier), device="cpu")


# ---------------------------------------------------------------------------- profanity-check


def test_profanity_check_range_and_protocol() -> None:
    scorer = load_scorer("profanity-check")
    assert isinstance(scorer, ProfanityCheckScorer) and isinstance(scorer, Scorer)
    assert scorer.name == "profanity-check"
    scores = scorer.score(SENTENCES)
    assert scores.dtype == np.float64 and scores.shape == (len(SENTENCES),)
    assert ((scores >= 0) & (scores <= 1)).all()
    empty = scorer.score([])
    assert empty.shape == (0,) and empty.dtype == np.float64


def test_profanity_check_ranks_handwritten_toxic_above_benign() -> None:
    prompts = load_prompts("bundled")
    scorer = ProfanityCheckScorer()
    toxic = scorer.score(pair_texts(prompts[prompts["challenging"]]))
    benign = scorer.score(pair_texts(prompts[~prompts["challenging"]]))
    assert toxic.mean() > benign.mean() + 0.3


def test_score_rejects_a_single_string_and_non_strings() -> None:
    scorer = ProfanityCheckScorer()
    with pytest.raises(ConfigError, match="single string"):
        scorer.score("just one text")
    with pytest.raises(ConfigError, match=r"texts\[1\]"):
        scorer.score(["fine", None])  # type: ignore[list-item]


# ---------------------------------------------------------------------------- classifier


def test_classifier_loads_from_local_folder(tiny_scorer: Scorer, tiny_classifier: Path) -> None:
    assert isinstance(tiny_scorer, ToxicityClassifierScorer)
    assert tiny_scorer.name == str(tiny_classifier)
    assert tiny_scorer.label_index == 0
    assert not tiny_scorer.model.training


def test_classifier_shapes_range_and_determinism(tiny_scorer: Scorer) -> None:
    first = tiny_scorer.score(SENTENCES)
    second = tiny_scorer.score(SENTENCES)
    assert first.dtype == np.float64 and first.shape == (len(SENTENCES),)
    assert ((first > 0) & (first < 1)).all()
    np.testing.assert_array_equal(first, second)
    assert np.ptp(first) > 1e-3  # the random model does tell texts apart
    assert tiny_scorer.score([]).shape == (0,)


def test_classifier_matches_a_manual_forward_pass(tiny_scorer: Scorer) -> None:
    import torch

    assert isinstance(tiny_scorer, ToxicityClassifierScorer)
    text = SENTENCES[0]
    batch = tiny_scorer.tokenizer([text], return_tensors="pt")
    batch.pop("token_type_ids", None)
    with torch.inference_mode():
        logit = tiny_scorer.model(**batch).logits[0, 0]
    expected = torch.sigmoid(logit).item()
    assert tiny_scorer.score([text])[0] == pytest.approx(expected, abs=1e-6)


def test_classifier_batching_invariance(tiny_classifier: Path) -> None:
    texts = [*SENTENCES, "short", "a much longer sentence about bread and trains " * 3]
    one = ToxicityClassifierScorer(str(tiny_classifier), device="cpu", batch_size=1)
    eight = ToxicityClassifierScorer(str(tiny_classifier), device="cpu", batch_size=8)
    np.testing.assert_allclose(one.score(texts), eight.score(texts), atol=1e-5, rtol=0)


def test_classifier_truncates_long_texts(tiny_scorer: Scorer) -> None:
    long_text = " ".join(SENTENCES * 30)  # far above the 64-token limit
    scores = tiny_scorer.score([long_text, SENTENCES[0]])
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_classifier_other_label(tiny_classifier: Path, tiny_scorer: Scorer) -> None:
    insult = ToxicityClassifierScorer(str(tiny_classifier), device="cpu", label="insult")
    assert insult.label_index == 1
    assert not np.allclose(insult.score(SENTENCES), tiny_scorer.score(SENTENCES))


def test_classifier_missing_label_lists_labels(tiny_classifier: Path) -> None:
    with pytest.raises(ModelError) as info:
        ToxicityClassifierScorer(str(tiny_classifier), device="cpu", label="hate")
    message = str(info.value)
    assert "'hate'" in message
    for name in LABELS.values():
        assert name in message


def test_single_label_classifier_uses_softmax(tmp_path: Path) -> None:
    folder = _build_classifier(
        tmp_path, problem_type="single_label_classification", id2label={0: "neutral", 1: "toxic"}
    )
    toxic = ToxicityClassifierScorer(str(folder), device="cpu", label="toxic").score(SENTENCES)
    neutral = ToxicityClassifierScorer(str(folder), device="cpu", label="neutral").score(SENTENCES)
    np.testing.assert_allclose(toxic + neutral, 1.0, atol=1e-6)


def test_classifier_load_failure_is_a_model_error(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"not-a-model.*profanity-check"):
        load_scorer(str(empty))


def test_bad_batch_size(tiny_classifier: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        ToxicityClassifierScorer(str(tiny_classifier), batch_size=0)


# ---------------------------------------------------------------------------- registry, agreement


def test_unknown_scorer_lists_known_names() -> None:
    with pytest.raises(ModelError) as info:
        load_scorer("definitely-not-a-scorer")
    for name in SCORERS:
        assert name in str(info.value)
    assert "unbiased-toxic-roberta" in SCORERS and "profanity-check" in SCORERS


def test_a_scorer_that_is_no_classifier_is_checked_by_its_own_entry(monkeypatch) -> None:
    """Adding a scorer: its SCORERS entry and its set-up check; preflight asks the check
    instead of reading a Hugging Face config for it (issue 24: it hard-coded two names)."""
    from steerlib.evaluate import scoring
    from steerlib.experiment.preflight import _scorer_problems

    monkeypatch.setitem(scoring.SCORERS, "word-list", lambda device: _FixedScorer({}))
    monkeypatch.setitem(scoring.SCORER_CHECKS, "word-list", lambda: None)
    assert _scorer_problems("word-list") == []
    monkeypatch.setitem(scoring.SCORER_CHECKS, "word-list", lambda: "needs its list; get it")
    assert _scorer_problems("word-list") == [
        "parameter 'scorer': 'word-list': needs its list; get it"
    ]
    # Without a check of its own a registered name is read as a classifier, and fails offline.
    monkeypatch.delitem(scoring.SCORER_CHECKS, "word-list")
    assert "cannot be read" in " ".join(_scorer_problems("word-list"))


class _FixedScorer:
    name = "fixed"

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self.table[t] for t in texts], dtype=np.float64)


def test_scorer_agreement_uses_roc_auc() -> None:
    from sklearn.metrics import roc_auc_score

    texts = ["a", "b", "c", "d", "e"]
    scores = {"a": 0.9, "b": 0.2, "c": 0.6, "d": 0.4, "e": 0.1}
    labels = [True, False, False, True, False]
    expected = roc_auc_score(labels, [scores[t] for t in texts])
    assert scorer_agreement(_FixedScorer(scores), texts, labels) == pytest.approx(expected)
    flipped = [not x for x in labels]
    assert scorer_agreement(_FixedScorer(scores), texts, flipped) == pytest.approx(1 - expected)


def test_scorer_agreement_errors() -> None:
    scorer = _FixedScorer({"a": 0.1, "b": 0.2})
    with pytest.raises(ConfigError, match="single class"):
        scorer_agreement(scorer, ["a", "b"], [True, True])
    with pytest.raises(ConfigError, match="labels"):
        scorer_agreement(scorer, ["a", "b"], [True])


def test_scorer_validity_per_group_by_hand() -> None:
    scores = {"a": 0.9, "b": 0.5, "c": 0.2, "d": 0.4, "e": 0.7, "f": 0.1}
    scorer = _FixedScorer(scores)
    groups = {
        # predicted toxic (>= 0.5): a, b; labelled toxic: a, d -> precision 1/2, recall 1/2
        "prompts": (["a", "b", "c", "d"], [True, False, False, True]),
        # predicted toxic: e; labelled toxic: e -> precision 1, recall 1; AUC 1
        "continuations": (["e", "f"], [True, False]),
    }
    validity = scorer_validity(scorer, groups)
    prompts = validity["prompts"]
    assert (prompts["precision"], prompts["recall"]) == (0.5, 0.5)
    assert (prompts["n"], prompts["n_toxic"]) == (4, 2)
    assert prompts["auc"] == pytest.approx(0.75)  # pairs (a,b)(a,c)(d,c) right, (d,b) wrong
    assert validity["continuations"] == {
        "auc": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "n": 2,
        "n_toxic": 1,
    }
    pooled = validity["all"]
    assert pooled["n"] == 6 and pooled["recall"] == pytest.approx(2 / 3)
    assert pooled["auc"] == pytest.approx(
        scorer_agreement(scorer, ["a", "b", "c", "d", "e", "f"], [1, 0, 0, 1, 1, 0])
    )
    # A group of one class has no AUC; an empty group, nothing but its size.
    one = scorer_validity(scorer, {"x": (["c", "f"], [False, False]), "y": ([], [])})
    assert one["x"]["auc"] is None and one["x"]["recall"] is None
    assert one["y"] == {"auc": None, "precision": None, "recall": None, "n": 0, "n_toxic": 0}
    with pytest.raises(ConfigError, match="align"):
        scorer_validity(scorer, {"x": (["a"], [True, False])})


def test_scorer_floor_is_the_score_of_text_without_known_words() -> None:
    scorer = load_scorer("profanity-check")
    floor = scorer_floor(scorer)
    assert floor == pytest.approx(0.0364, abs=5e-4)  # the intercept of its linear model
    # any text made of unknown words scores exactly the floor; clean known words can be lower
    assert scorer.score(["omomomomom", "zzzq qqqz"]) == pytest.approx([floor, floor], abs=1e-9)
    assert scorer.score(["you are a stupid idiot"])[0] > 0.5
    fixed = _FixedScorer({"": 0.3, "u": 0.2})
    assert scorer_floor(fixed, probes=["", "u"]) == pytest.approx(0.2)  # the minimum
    with pytest.raises(ConfigError, match="probe"):
        scorer_floor(fixed, probes=[])


@pytest.mark.rtp
def test_profanity_check_agrees_with_perspective(rtp_dir: Path) -> None:
    table = pd.concat(
        [
            load_prompt_file(rtp_dir / "challenging_sample.jsonl"),
            load_prompt_file(rtp_dir / "nontoxic_sample.jsonl"),
        ]
    )
    texts, labels = perspective_labels(table, threshold=0.5)
    auc = scorer_agreement(load_scorer("profanity-check"), texts, labels)
    print(f"profanity-check ROC AUC vs Perspective on {len(texts)} RTP texts: {auc:.3f}")
    assert auc > 0.85
