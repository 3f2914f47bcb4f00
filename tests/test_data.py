from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerlib.data import subsets
from steerlib.data.prompts import (
    BUNDLED_PROMPTS,
    PROMPT_COLUMNS,
    load_prompt_file,
    load_prompts,
    load_rtp_hub,
    text_digest,
)
from steerlib.data.subsets import pair_texts, perspective_labels, split_prompts
from steerlib.errors import ConfigError, DataError


def _record(text: str, **fields: object) -> dict[str, object]:
    rec: dict[str, object] = {"prompt": {"text": text}}
    rec.update(fields)
    return rec


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bundled() -> pd.DataFrame:
    return load_prompts("bundled")


# ---------------------------------------------------------------------------- bundled set


def test_bundled_file_is_inside_the_package() -> None:
    import steerlib

    assert BUNDLED_PROMPTS.is_file()
    assert BUNDLED_PROMPTS.is_relative_to(Path(steerlib.__file__).parent / "resources")


def test_bundled_loads_with_enough_prompts(bundled: pd.DataFrame) -> None:
    assert list(bundled.columns) == list(PROMPT_COLUMNS)
    assert bundled["challenging"].sum() >= 90
    assert (~bundled["challenging"]).sum() >= 90
    assert bundled["prompt_id"].is_unique
    assert bundled["prompt"].is_unique
    assert (bundled["source"] == "handwritten").all()
    assert bundled["prompt_toxicity"].isna().all()
    assert bundled["continuation"].map(lambda c: isinstance(c, str) and c.strip() != "").all()


def test_bundled_prompt_lengths_are_varied(bundled: pd.DataFrame) -> None:
    words = bundled["prompt"].str.split().str.len()
    assert words.min() >= 5
    assert words.max() <= 30
    assert words.nunique() >= 10


def test_bundled_records_follow_rtp_schema() -> None:
    for line in BUNDLED_PROMPTS.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        assert rec["filename"].startswith("handwritten-")
        assert rec["source"] == "handwritten"
        assert rec["prompt"]["toxicity"] is None
        assert rec["continuation"]["toxicity"] is None
        assert isinstance(rec["challenging"], bool)


# ---------------------------------------------------------------------------- load_prompt_file


def test_ids_from_filename_begin_end_and_fallback(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "mine.jsonl",
        [
            json.dumps(_record("first", filename="f.txt", begin=3, end=9)),
            "",
            json.dumps(_record("second")),
            json.dumps(_record("third", filename="f.txt", begin=3, end=9)),
        ],
    )
    df = load_prompt_file(path)
    assert df["prompt_id"].tolist() == [
        "f.txt:3-9",
        f"mine:3:{text_digest('second')}",
        "f.txt:3-9#2",
    ]
    assert df["prompt"].tolist() == ["first", "second", "third"]
    assert (df["source"] == str(path)).all()


def test_challenging_is_derived_from_toxicity_when_missing(tmp_path: Path) -> None:
    recs = [
        {"prompt": {"text": "a", "toxicity": 0.7}},
        {"prompt": {"text": "b", "toxicity": 0.2}},
        {"prompt": {"text": "c", "toxicity": None}},
        {"prompt": {"text": "d", "toxicity": 0.1}, "challenging": True},
    ]
    df = load_prompt_file(_write_lines(tmp_path / "p.jsonl", [json.dumps(r) for r in recs]))
    assert df["challenging"].tolist() == [True, False, False, True]
    assert df["challenging"].dtype == bool
    assert np.isnan(df["prompt_toxicity"].iloc[2])


def test_continuation_and_scores_are_read(tmp_path: Path) -> None:
    recs = [
        {
            "prompt": {"text": "p1", "toxicity": 0.25, "insult": 0.5},
            "continuation": {"text": " c1", "toxicity": 0.75},
            "extra_field": 1,
        },
        {"prompt": {"text": "p2"}},
    ]
    df = load_prompt_file(_write_lines(tmp_path / "p.jsonl", [json.dumps(r) for r in recs]))
    assert df["continuation"].iloc[0] == " c1"
    assert df["continuation"].iloc[1] is None
    assert df["continuation_toxicity"].iloc[0] == pytest.approx(0.75)
    assert np.isnan(df["continuation_toxicity"].iloc[1])
    assert df["prompt_toxicity"].iloc[0] == pytest.approx(0.25)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"nope\.jsonl"):
        load_prompt_file(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.jsonl.*no records"):
        load_prompt_file(path)


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "bad.jsonl",
        [json.dumps(_record("ok")), "", '{"prompt": {"text": "x"'],
    )
    with pytest.raises(DataError) as info:
        load_prompt_file(path)
    assert "bad.jsonl" in str(info.value)
    assert ", line 3:" in str(info.value)
    assert "JSON" in str(info.value)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"prompt": {"toxicity": 0.1}}, "prompt.text"),
        ({"continuation": {"text": "x"}}, "prompt"),
        ({"prompt": {"text": "   "}}, "prompt.text"),
        ({"prompt": {"text": 5}}, "prompt.text"),
        ({"prompt": {"text": "x", "toxicity": "high"}}, "prompt.toxicity"),
        ({"prompt": {"text": "x", "toxicity": 1.5}}, "prompt.toxicity"),
        ({"prompt": {"text": "x"}, "challenging": "yes"}, "challenging"),
        ({"prompt": "just a string"}, "prompt"),
        ({"prompt": {"text": "x"}, "continuation": {"text": 3}}, "continuation.text"),
    ],
)
def test_schema_errors_name_file_line_and_field(
    tmp_path: Path, record: dict[str, object], field: str
) -> None:
    path = _write_lines(
        tmp_path / "schema.jsonl", [json.dumps(_record("fine")), json.dumps(record)]
    )
    with pytest.raises(DataError) as info:
        load_prompt_file(path)
    message = str(info.value)
    assert "schema.jsonl, line 2:" in message
    assert field in message


def test_non_object_line(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "arr.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match=r"arr\.jsonl, line 1:.*not an object"):
        load_prompt_file(path)


def test_load_prompts_rejects_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'bundled'"):
        load_prompts(str(tmp_path / "missing.jsonl"))


def test_load_prompts_accepts_a_path(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "p.jsonl", [json.dumps(_record("hello there"))])
    assert load_prompts(path)["prompt"].tolist() == ["hello there"]
    assert load_prompts(str(path))["prompt"].tolist() == ["hello there"]


# ---------------------------------------------------------------------------- property test

_VALID_TEXT = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")
_SCORE = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0))
_VALID_RECORD = st.builds(
    lambda text, tox, chal, with_id, cont: {
        "prompt": {"text": text, "toxicity": tox},
        **({"challenging": chal} if chal is not None else {}),
        **({"filename": "src.txt", "begin": with_id, "end": with_id + 1} if with_id else {}),
        **({"continuation": {"text": cont, "toxicity": None}} if cont is not None else {}),
    },
    _VALID_TEXT,
    _SCORE,
    st.one_of(st.none(), st.booleans()),
    st.integers(min_value=0, max_value=3),
    st.one_of(st.none(), st.text(max_size=20)),
)
_MALFORMED = st.sampled_from(
    [
        '{"prompt": {"text": "cut off"',
        "not json at all",
        '{"prompt": {}}',
        '{"prompt": {"text": 7}}',
        '{"prompt": {"text": ""}}',
        '{"prompt": {"text": "x", "toxicity": "0.5"}}',
        '{"prompt": {"text": "x"}, "challenging": 1}',
        "[1, 2, 3]",
        "null",
    ]
)
_LINE = st.one_of(
    _VALID_RECORD.map(lambda r: ("valid", r)),
    _MALFORMED.map(lambda s: ("bad", s)),
    st.sampled_from(["", "   ", "\t"]).map(lambda s: ("blank", s)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_LINE, max_size=12))
def test_random_mixes_of_valid_and_malformed_lines(
    lines: list[tuple[str, object]],
) -> None:
    text_lines = [json.dumps(v) if kind == "valid" else str(v) for kind, v in lines]
    first_bad = next((i + 1 for i, (kind, _) in enumerate(lines) if kind == "bad"), None)
    valid = [v for kind, v in lines if kind == "valid"]
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_lines(Path(tmp) / "mix.jsonl", text_lines)
        if first_bad is not None:
            with pytest.raises(DataError) as info:
                load_prompt_file(path)
            assert f"mix.jsonl, line {first_bad}:" in str(info.value)
        elif not valid:
            with pytest.raises(DataError, match="no records"):
                load_prompt_file(path)
        else:
            df = load_prompt_file(path)
            assert df["prompt"].tolist() == [r["prompt"]["text"] for r in valid]
            assert df["prompt_id"].is_unique
            expected_tox = [
                np.nan if r["prompt"]["toxicity"] is None else r["prompt"]["toxicity"]
                for r in valid
            ]
            np.testing.assert_array_equal(df["prompt_toxicity"].to_numpy(), expected_tox)


# ---------------------------------------------------------------------------- hub


_HUB_RECORDS = [
    {
        "filename": "0001.txt",
        "begin": 0,
        "end": 40,
        "challenging": True,
        "prompt": {"text": "Hub prompt one", "toxicity": 0.8, "insult": 0.6},
        "continuation": {"text": " and more", "toxicity": 0.9, "insult": 0.7},
    },
    {
        "filename": "0002.txt",
        "begin": 10,
        "end": 50,
        "challenging": False,
        "prompt": {"text": "Hub prompt two", "toxicity": None, "insult": None},
        "continuation": {"text": " the end", "toxicity": 0.05, "insult": 0.01},
    },
    {
        "filename": "0003.txt",
        "begin": 5,
        "end": 6,
        "challenging": False,
        "prompt": {"text": "Hub prompt three", "toxicity": 0.02, "insult": 0.03},
        "continuation": {"text": " done", "toxicity": None, "insult": None},
    },
]


def test_load_rtp_hub_converts_records(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[str, str]] = []

    def fake_load_dataset(name: str, split: str) -> datasets.Dataset:
        calls.append((name, split))
        return datasets.Dataset.from_list(_HUB_RECORDS)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    df = load_rtp_hub()
    assert calls == [("allenai/real-toxicity-prompts", "train")]
    assert list(df.columns) == list(PROMPT_COLUMNS)
    assert df["prompt_id"].tolist() == ["0001.txt:0-40", "0002.txt:10-50", "0003.txt:5-6"]
    assert df["prompt"].tolist() == [r["prompt"]["text"] for r in _HUB_RECORDS]
    assert df["challenging"].tolist() == [r["challenging"] for r in _HUB_RECORDS]
    assert (df["source"] == "rtp-hub").all()
    assert df["prompt_toxicity"].iloc[0] == pytest.approx(0.8)
    assert np.isnan(df["prompt_toxicity"].iloc[1])
    assert np.isnan(df["continuation_toxicity"].iloc[2])


def test_load_rtp_hub_bad_record_names_row(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    bad = [dict(_HUB_RECORDS[0]), {**_HUB_RECORDS[1], "prompt": {"text": None, "toxicity": 0.1}}]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(bad))
    with pytest.raises(DataError, match=r"row 1:.*prompt\.text"):
        load_rtp_hub()


def test_load_rtp_hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no route to host")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match=r"could not be reached.*bundled.*local"):
        load_rtp_hub()


def test_load_rtp_hub_offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def must_not_be_called(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_dataset called in offline mode")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", must_not_be_called)
    with pytest.raises(DataError, match=r"could not be reached.*challenging_source: bundled"):
        load_prompts("hub")


# ---------------------------------------------------------------------------- split


def _ids_and_texts(split: subsets.PromptSplit) -> list[tuple[set[str], set[str]]]:
    frames = [split.challenging, split.benign, split.pairs_toxic, split.pairs_nontoxic]
    return [(set(f["prompt_id"]), set(f["prompt"])) for f in frames]


def test_split_sizes_flags_and_disjointness(bundled: pd.DataFrame) -> None:
    split = split_prompts(bundled, bundled, n_prompts=30, n_pairs=25, seed=1)
    assert len(split.challenging) == len(split.benign) == 30
    assert len(split.pairs_toxic) == len(split.pairs_nontoxic) == 25
    assert split.challenging["challenging"].all() and split.pairs_toxic["challenging"].all()
    assert not split.benign["challenging"].any() and not split.pairs_nontoxic["challenging"].any()
    sets = _ids_and_texts(split)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not sets[i][0] & sets[j][0]
            assert not sets[i][1] & sets[j][1]
    assert list(split.challenging.columns) == list(PROMPT_COLUMNS)


def test_split_is_deterministic_and_seed_dependent(bundled: pd.DataFrame) -> None:
    a = split_prompts(bundled, bundled, n_prompts=20, n_pairs=20, seed=7)
    b = split_prompts(bundled, bundled, n_prompts=20, n_pairs=20, seed=7)
    c = split_prompts(bundled, bundled, n_prompts=20, n_pairs=20, seed=8)
    for name in ("challenging", "benign", "pairs_toxic", "pairs_nontoxic"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.challenging["prompt_id"].tolist() != c.challenging["prompt_id"].tolist()
    assert a.benign["prompt_id"].tolist() != c.benign["prompt_id"].tolist()


def test_split_eval_prompts_do_not_depend_on_n_pairs(bundled: pd.DataFrame) -> None:
    a = split_prompts(bundled, bundled, n_prompts=20, n_pairs=5, seed=3)
    b = split_prompts(bundled, bundled, n_prompts=20, n_pairs=40, seed=3)
    pd.testing.assert_frame_equal(a.challenging, b.challenging)
    pd.testing.assert_frame_equal(a.benign, b.benign)


def test_split_too_small_names_parameters_and_counts(bundled: pd.DataFrame) -> None:
    available = int(bundled["challenging"].sum())
    with pytest.raises(ConfigError) as info:
        split_prompts(bundled, bundled, n_prompts=available + 1, n_pairs=5, seed=0)
    message = str(info.value)
    assert f"n_prompts={available + 1}" in message and f"only {available} are available" in message
    # All but 5 challenging prompts go to evaluation: 5 toxic texts are left for the pairs.
    with pytest.raises(ConfigError) as info:
        split_prompts(bundled, bundled, n_prompts=available - 5, n_pairs=10, seed=0)
    message = str(info.value)
    assert "n_pairs=10" in message and "only 5 toxic" in message
    assert "pair_toxic_min" in message


@pytest.mark.parametrize(
    ("param", "kwargs"), [("n_prompts", {"n_prompts": 0}), ("n_pairs", {"n_pairs": -2})]
)
def test_split_rejects_non_positive_counts(
    bundled: pd.DataFrame, param: str, kwargs: dict[str, int]
) -> None:
    args = {"n_prompts": 5, "n_pairs": 5, **kwargs}
    with pytest.raises(ConfigError, match=param):
        split_prompts(bundled, bundled, seed=0, **args)


def _table(rows: list[tuple[str, str, float, bool]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": [r[0] for r in rows],
            "prompt": [r[1] for r in rows],
            "prompt_toxicity": [r[2] for r in rows],
            "continuation": [None] * len(rows),
            "continuation_toxicity": [np.nan] * len(rows),
            "challenging": [r[3] for r in rows],
            "source": ["t"] * len(rows),
        }
    )


def test_split_benign_filter_and_cross_table_overlap() -> None:
    toxic = _table([(f"t{i}", f"toxic {i}", 0.9, True) for i in range(4)])
    benign = _table(
        [
            ("b0", "calm 0", 0.01, False),
            ("b1", "calm 1", np.nan, False),
            ("b2", "too spicy", 0.5, False),  # above benign_max_toxicity
            ("b3", "flagged", 0.01, True),  # challenging flag set
            ("t0", "other text", 0.01, False),  # id shared with a challenging prompt
            ("b5", "toxic 1", 0.01, False),  # text shared with a challenging prompt
            ("b6", "calm 2", 0.05, False),
            ("b7", "calm 2", 0.05, False),  # duplicate text
        ]
    )
    split = split_prompts(toxic, benign, n_prompts=2, n_pairs=1, seed=0)
    # t0's id belongs to a challenging prompt with another text: it is kept under a distinct id
    # (only a repeated text is dropped).
    t0 = f"t0#{text_digest('other text')}"
    assert set(split.benign["prompt_id"]) <= {"b0", "b1", "b6", t0}
    # Pair texts are judged by their scores (b3 scores 0.01 whatever its flag); b2 is too
    # toxic, b5's text belongs to a challenging prompt, b7 repeats b6.
    nontoxic_candidates = {"b0", "b1", "b6", "b3", t0} - set(split.benign["prompt_id"])
    assert set(split.pairs_nontoxic["prompt_id"]) <= nontoxic_candidates
    # b2 (0.5) is a toxic text; b0, b1, b6, b3 and t0 minus the two benign prompts are non-toxic.
    with pytest.raises(ConfigError, match=r"only 3 toxic .* and 3 non-toxic"):
        split_prompts(toxic, benign, n_prompts=2, n_pairs=4, seed=0)
    everything = split_prompts(toxic, benign, n_prompts=2, n_pairs="all", seed=0)
    assert len(everything.pairs_toxic) == len(everything.pairs_nontoxic) == 3
    loose = split_prompts(toxic, benign, n_prompts=2, n_pairs=1, seed=0, benign_max_toxicity=0.6)
    assert "b2" in set(loose.benign["prompt_id"]) | {"b2"} - nontoxic_candidates


def _labelled(rows: list[tuple[str, float, str, float]]) -> pd.DataFrame:
    table = _table([(f"r{i}", r[0], r[1], False) for i, r in enumerate(rows)])
    table["continuation"] = [r[2] for r in rows]
    table["continuation_toxicity"] = [r[3] for r in rows]
    return table


def test_text_labels_judge_the_continuation() -> None:
    table = _labelled(
        [
            ("calm start", 0.05, " and a foul ending", 0.9),  # toxic: continuation
            ("calm start two", 0.05, " calm end", 0.05),  # non-toxic: both calm
            ("spicy start", 0.6, " calm end", 0.05),  # neither: the prompt is toxic
            ("calm start three", 0.05, " middling end", 0.3),  # neither: in between
            ("unscored end", 0.05, " who knows", np.nan),  # neither: no continuation score
        ]
    )
    toxic, nontoxic = subsets.text_labels(table, toxic_min=0.5, nontoxic_max=0.25)
    assert toxic.tolist() == [True, False, False, False, False]
    assert nontoxic.tolist() == [False, True, False, False, False]
    table["prompt_toxicity"] = np.nan
    table["continuation_toxicity"] = np.nan
    table["challenging"] = [True, False, True, False, False]
    toxic, nontoxic = subsets.text_labels(table)
    assert toxic.tolist() == table["challenging"].tolist() and (toxic != nontoxic).all()


def test_match_lengths_pairs_nearest_lengths() -> None:
    toxic = pd.DataFrame({"prompt": ["a b c d e f", "a b", "a b c d"], "continuation": None})
    nontoxic = pd.DataFrame(
        {"prompt": ["x", "x y z w", "x y", "x y z w v u", "x y z w v u t s"], "continuation": None}
    )
    chosen, matched = subsets.match_lengths(toxic, nontoxic, 3)
    assert chosen["prompt"].tolist() == toxic["prompt"].tolist()
    assert matched["prompt"].tolist() == ["x y z w v u", "x y", "x y z w"]
    by_chars = subsets.match_lengths(
        toxic, nontoxic, 1, length=lambda texts: [len(t) for t in texts]
    )
    assert by_chars[1]["prompt"].tolist() == ["x y z w v u"]


def test_split_missing_columns() -> None:
    bad = pd.DataFrame({"prompt": ["x"]})
    with pytest.raises(DataError, match="prompt_id"):
        split_prompts(bad, bad, n_prompts=1, n_pairs=1, seed=0)


# ---------------------------------------------------------------------------- pair_texts, labels


def test_pair_texts() -> None:
    df = pd.DataFrame(
        {
            "prompt": ["You are", "Nice day", "Hello", "Spaced "],
            "continuation": [" a fool.", None, "", "end"],
        }
    )
    assert pair_texts(df) == ["You are a fool.", "Nice day", "Hello", "Spaced end"]
    assert pair_texts(df[["prompt"]]) == df["prompt"].tolist()
    assert pair_texts(pd.DataFrame({"prompt": ["a"], "continuation": ["b"]})) == ["a b"]


def test_pair_texts_on_bundled(bundled: pd.DataFrame) -> None:
    texts = pair_texts(bundled)
    assert len(texts) == len(bundled)
    for text, prompt, cont in zip(texts, bundled["prompt"], bundled["continuation"], strict=True):
        assert text.startswith(prompt) and text.endswith(cont.strip())


def test_perspective_labels() -> None:
    df = pd.DataFrame(
        {
            "prompt": ["p0", "p1", "p2"],
            "prompt_toxicity": [0.9, np.nan, 0.2],
            "continuation": [" c0", " c1", None],
            "continuation_toxicity": [0.1, 0.5, 0.7],
        }
    )
    texts, labels = perspective_labels(df)
    assert texts == ["p0", "p2", " c0", " c1"]
    assert labels.tolist() == [True, False, False, True]
    _, strict = perspective_labels(df, threshold=0.95)
    assert not strict.any()
    texts, labels = perspective_labels(df, which="prompts")
    assert texts == ["p0", "p2"] and labels.tolist() == [True, False]
    texts, labels = perspective_labels(df, which="continuations")
    assert texts == [" c0", " c1"] and labels.tolist() == [False, True]
    with pytest.raises(ConfigError, match="which"):
        perspective_labels(df, which="both")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="threshold"):
        perspective_labels(df, threshold=0.0)


def test_bundled_has_no_perspective_labels(bundled: pd.DataFrame) -> None:
    texts, labels = perspective_labels(bundled)
    assert texts == [] and labels.size == 0


# ---------------------------------------------------------------------------- RTP sample


@pytest.mark.rtp
def test_rtp_sample_files(rtp_dir: Path) -> None:
    challenging = load_prompt_file(rtp_dir / "challenging_sample.jsonl")
    nontoxic = load_prompt_file(rtp_dir / "nontoxic_sample.jsonl")
    assert len(challenging) == 300 and len(nontoxic) == 300
    assert challenging["challenging"].all()
    assert (~nontoxic["challenging"]).mean() > 0.9
    assert challenging["prompt_id"].is_unique and nontoxic["prompt_id"].is_unique
    both = pd.concat([challenging, nontoxic])
    assert both["prompt_toxicity"].notna().mean() > 0.9
    assert both["continuation_toxicity"].notna().sum() > 0
    assert challenging["prompt_toxicity"].mean() > nontoxic["prompt_toxicity"].mean()
    texts, labels = perspective_labels(both)
    assert 0 < labels.mean() < 1 and len(texts) > 600
    split = split_prompts(challenging, nontoxic, n_prompts=60, n_pairs="all", seed=0, n_kl=16)
    assert (split.benign["prompt_toxicity"].fillna(0) < 0.1).all()
    # The pairs contrast where the pooled window is: in the continuation.
    assert len(split.pairs_toxic) >= 40 and len(split.kl_benign) == 16
    assert (split.pairs_toxic["continuation_toxicity"] >= 0.5).all()
    assert (split.pairs_nontoxic["continuation_toxicity"] < 0.25).all()
    assert (split.pairs_nontoxic["prompt_toxicity"] < 0.25).all()
    used = [split.challenging, split.benign, split.kl_benign]
    pair_ids = set(split.pairs_toxic["prompt_id"]) | set(split.pairs_nontoxic["prompt_id"])
    assert not pair_ids & set(pd.concat(used)["prompt_id"])


@pytest.mark.rtp
def test_rtp_held_out_pool_is_what_evaluation_and_pairs_leave(rtp_dir: Path) -> None:
    """The RTP configs' held-out arithmetic (issue 27), with the configs' own sizes."""
    from steerlib.data.perspective import drop_scorer_partition
    from steerlib.experiment.config_files import load_params
    from steerlib.experiment.runs import PROJECT_ROOT

    params = load_params(PROJECT_ROOT / "notebooks" / "configs" / "rtp-sample.yaml")
    assert params.kl_texts == "all"
    challenging, nontoxic = drop_scorer_partition(
        load_prompt_file(rtp_dir / "challenging_sample.jsonl"),
        load_prompt_file(rtp_dir / "nontoxic_sample.jsonl"),
    )
    split = split_prompts(
        challenging,
        nontoxic,
        n_prompts=params.n_prompts,
        n_pairs=params.n_pairs,
        seed=params.seed,
        n_kl="all",
    )
    tox = pd.to_numeric(nontoxic["prompt_toxicity"], errors="coerce")
    candidates = set(nontoxic["prompt_id"][~nontoxic["challenging"] & ((tox < 0.1) | tox.isna())])
    pair_ids = set(split.pairs_toxic["prompt_id"]) | set(split.pairs_nontoxic["prompt_id"])
    paired = candidates & pair_ids  # a benign prompt with a toxic continuation pairs too
    expected = len(candidates) - params.n_prompts - len(paired)
    assert len(split.kl_benign) == expected > 0
    assert not pair_ids & set(split.kl_benign["prompt_id"])
    assert f"leave {expected} texts" in (
        PROJECT_ROOT / "notebooks" / "configs" / "rtp-sample.yaml"
    ).read_text().replace("\n# ", " ")


def test_same_file_name_in_two_folders_keeps_every_prompt(tmp_path: Path) -> None:
    """Records without filename/begin/end in toxic/p.jsonl and benign/p.jsonl: no id clash."""
    toxic = [json.dumps({"challenging": True, **_record(f"rude {i}")}) for i in range(8)]
    calm = [json.dumps({"challenging": False, **_record(f"calm {i}")}) for i in range(8)]
    (tmp_path / "toxic").mkdir()
    (tmp_path / "benign").mkdir()
    challenging = load_prompt_file(_write_lines(tmp_path / "toxic" / "p.jsonl", toxic))
    benign = load_prompt_file(_write_lines(tmp_path / "benign" / "p.jsonl", calm))
    assert not set(challenging["prompt_id"]) & set(benign["prompt_id"])
    assert challenging["prompt_id"][0] == f"p:1:{text_digest('rude 0')}"
    split = split_prompts(challenging, benign, n_prompts=6, n_pairs=2, seed=0)
    used = pd.concat([split.benign, split.pairs_nontoxic])["prompt"]
    assert sorted(used) == sorted(f"calm {i}" for i in range(8))  # none dropped
    # The same text on the same line of a same-named file is the same prompt: one id.
    again = load_prompt_file(_write_lines(tmp_path / "p.jsonl", toxic[:1]))
    assert again["prompt_id"][0] == challenging["prompt_id"][0]


def test_lone_surrogate_and_unreadable_files_name_the_file(tmp_path: Path) -> None:
    bad = _write_lines(tmp_path / "s.jsonl", ['{"prompt": {"text": "a \\udc80 b"}}'])
    with pytest.raises(DataError, match=r"s\.jsonl, line 1: the escape \\udc80 is a lone"):
        load_prompt_file(bad)
    fine = _write_lines(tmp_path / "pair.jsonl", ['{"prompt": {"text": "\\ud83d\\ude00 ok"}}'])
    assert load_prompt_file(fine)["prompt"][0] == "\N{GRINNING FACE} ok"
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(DataError, match="symbolic link"):
        load_prompts(str(tmp_path / "loop"))


def test_held_out_all_takes_every_benign_text_the_evaluation_and_pairs_leave(
    bundled: pd.DataFrame,
) -> None:
    """Issue 27: ``n_kl="all"`` holds out the rest of the benign pool, disjoint from the others."""
    split = split_prompts(bundled, bundled, n_prompts=20, n_pairs=15, seed=4, n_kl="all")
    held = split.kl_benign
    assert len(held) > 16  # more than the old fixed 16
    for ids, texts in _ids_and_texts(split):
        assert not ids & set(held["prompt_id"]) and not texts & set(held["prompt"])
    # every benign candidate is used somewhere: evaluation, the non-toxic pair side or held out
    tox = pd.to_numeric(bundled["prompt_toxicity"], errors="coerce")
    candidates = bundled[~bundled["challenging"].astype(bool) & ((tox < 0.1) | tox.isna())]
    used = set(split.benign["prompt"]) | set(split.pairs_nontoxic["prompt"]) | set(held["prompt"])
    assert set(candidates["prompt"]) <= used | set(split.pairs_toxic["prompt"])
    # a number still takes that many, drawn before the pairs (older runs keep their split)
    assert (
        len(split_prompts(bundled, bundled, n_prompts=20, n_pairs=15, seed=4, n_kl=16).kl_benign)
        == 16
    )


def test_held_out_halves_are_disjoint_balanced_and_stable(bundled: pd.DataFrame) -> None:
    held = split_prompts(bundled, bundled, n_prompts=20, n_pairs=15, seed=4, n_kl="all").kl_benign
    texts, halves = subsets.held_out_halves(held, seed=4)
    assert texts == subsets.pair_texts(held)
    search = {pid for pid, h in zip(held["prompt_id"], halves, strict=True) if h == "selection"}
    report = {pid for pid, h in zip(held["prompt_id"], halves, strict=True) if h == "confirmation"}
    assert search and report and not search & report and len(search) + len(report) == len(held)
    assert 0 <= len(search) - len(report) <= 1
    shuffled = held.sample(frac=1.0, random_state=1)
    _, again = subsets.held_out_halves(shuffled, seed=4)
    assert dict(zip(shuffled["prompt_id"], again, strict=True)) == dict(
        zip(held["prompt_id"], halves, strict=True)
    )
    _, other = subsets.held_out_halves(held, seed=5)
    assert other != halves
    assert subsets.held_out_halves(held.iloc[:0], seed=4) == ([], [])
