from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steerlib.evaluate.fluency import KL_COLUMNS, benign_kl, continuation_perplexity
from steerlib.steer.hooks import active_hook_count, steering
from steerlib.steer.vectors import SteeringVector

PROMPTS = ["the dog said you are a", "hello", "we walk in the park"]
COMPLETIONS = ["stupid fool .", "world , my friend", ""]


def _manual_ppl(model, tokenizer, prompt: str, completion: str) -> float:
    p = tokenizer(prompt)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    labels = ids.clone()
    labels[0, : len(p)] = -100
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=labels).loss
    return math.exp(float(loss))


def test_perplexity_matches_model_loss(llama, tokenizer):
    ppl = continuation_perplexity(llama, tokenizer, PROMPTS, COMPLETIONS, batch_size=2)
    for i in range(2):
        assert ppl[i] == pytest.approx(
            _manual_ppl(llama, tokenizer, PROMPTS[i], COMPLETIONS[i]), rel=1e-4
        )
    assert np.isnan(ppl[2])
    single = continuation_perplexity(llama, tokenizer, PROMPTS, COMPLETIONS, batch_size=1)
    np.testing.assert_allclose(ppl, single, rtol=1e-5)
    with pytest.raises(ValueError, match="same length"):
        continuation_perplexity(llama, tokenizer, PROMPTS, COMPLETIONS[:1])


@pytest.mark.parametrize("name", ["llama", "phi3", "gpt2", "gemma3"])
def test_perplexity_with_shared_prompts_matches_one_pass_per_row(request, tokenizer, name):
    # A sweep's shape: several completions of different lengths per prompt, prompts of
    # different lengths, batches that split a prompt's completions.
    model = request.getfixturevalue(name)
    prompts = ["hello"] * 3 + ["the dog said you are a"] * 4 + ["we walk in the park"] * 2
    completions = [
        "world",
        "world , my friend",
        "you idiot",
        "stupid fool .",
        "nice",
        "",
        "very nice day and the sun",
        "and the cat",
        "today",
    ]
    got = continuation_perplexity(model, tokenizer, prompts, completions, batch_size=4)
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if not completion:
            assert np.isnan(got[i])
            continue
        assert got[i] == pytest.approx(_manual_ppl(model, tokenizer, prompt, completion), rel=1e-4)


def test_perplexity_needs_a_prompt(llama, tokenizer):
    with pytest.raises(ValueError, match="no tokens"):
        continuation_perplexity(llama, tokenizer, [""], ["hello"])


def test_benign_kl_zero_at_alpha_zero_and_grows(llama, tokenizer):
    gen = torch.Generator().manual_seed(0)
    vec = SteeringVector({1: torch.randn(32, generator=gen), 2: torch.randn(32, generator=gen)})
    vectors = {"caa": vec, "random": vec.random_like(1)}
    texts = ["the sun is nice today", "we cook rice and bread in the morning", "hello world"]
    kl = benign_kl(
        llama, tokenizer, texts, vectors, layers=[1, 2], alphas=[0.0, 0.5, 1.5], batch_size=2
    )
    assert list(kl.columns) == KL_COLUMNS and len(kl) == 2 * 2 * 3
    zero = kl[kl.alpha == 0.0]["kl_benign"]
    assert (zero.abs() < 1e-6).all()
    for (direction, layer), group in kl.groupby(["direction", "layer"]):
        values = group.sort_values("alpha")["kl_benign"].tolist()
        assert values[0] < values[1] < values[2], (direction, layer)
    assert kl["n_tokens"].iloc[0] == sum(len(tokenizer(t)["input_ids"]) for t in texts)
    assert active_hook_count(llama) == 0


def test_benign_kl_matches_manual_computation(llama, tokenizer):
    vec = SteeringVector({2: torch.ones(32)})
    text = "the dog and the cat walk"
    kl = benign_kl(llama, tokenizer, [text], {"caa": vec}, layers=[2], alphas=[0.7])
    enc = tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        p = torch.log_softmax(llama(**enc).logits, -1)
        with steering(llama, vec, 0.7, 2):
            q = torch.log_softmax(llama(**enc).logits, -1)
    manual = float((p.exp() * (p - q)).sum(-1).mean())
    assert kl["kl_benign"].iloc[0] == pytest.approx(manual, rel=1e-5)


def test_benign_kl_reports_the_steered_perplexity_of_the_human_text(llama, tokenizer):
    vec = SteeringVector({2: torch.ones(32)})
    texts = ["the dog and the cat walk", "hello world today"]
    kl = benign_kl(llama, tokenizer, texts, {"caa": vec}, layers=[2], alphas=[0.0, 0.7])
    nll, count = {0.0: 0.0, 0.7: 0.0}, 0
    for text in texts:
        ids = tokenizer([text], return_tensors="pt")["input_ids"]
        count += ids.shape[1] - 1
        for alpha in nll:
            with torch.inference_mode(), steering(llama, vec, alpha, 2):
                logp = torch.log_softmax(llama(input_ids=ids).logits, -1)
            nll[alpha] -= float(logp[0, :-1].gather(-1, ids[0, 1:, None]).sum())
    for alpha, total in nll.items():
        got = kl.loc[kl.alpha == alpha, "human_perplexity"].iloc[0]
        assert got == pytest.approx(math.exp(total / count), rel=1e-4)


def test_benign_kl_halves_and_text_cluster_intervals(llama, tokenizer):
    """Issue 27: each half of the held-out texts gets its own value and a bootstrap interval."""
    vector = SteeringVector({1: torch.randn(32, generator=torch.Generator().manual_seed(1))})
    texts = [f"the {w} walked to the shop and bought some bread" for w in "abcdefgh"]
    texts += ["we cook rice on sunday", "hello there, how are you", "a quiet morning at home"]
    halves = ["selection" if i % 2 else "confirmation" for i in range(len(texts))]
    table = benign_kl(
        llama,
        tokenizer,
        texts,
        {"caa": vector},
        layers=[1],
        alphas=[0.0, 2.0],
        halves=halves,
        n_resamples=200,
        seed=0,
    )
    assert set(table["split"]) == {"all", "selection", "confirmation"}
    by = table.set_index(["split", "alpha"])
    assert by.loc[("selection", 2.0), "n_texts"] + by.loc[("confirmation", 2.0), "n_texts"] == 11
    for name in ("human_perplexity", "kl_benign"):
        low, high = table[f"{name}_ci_low"], table[f"{name}_ci_high"]
        assert (low <= table[name] + 1e-9).all() and (table[name] <= high + 1e-9).all()
    steered = table[table["alpha"] == 2.0]
    assert (steered["human_perplexity_ci_high"] > steered["human_perplexity_ci_low"]).all()
    # a half's value is that of its own texts alone
    own = [t for t, h in zip(texts, halves, strict=True) if h == "selection"]
    alone = benign_kl(llama, tokenizer, own, {"caa": vector}, layers=[1], alphas=[2.0])
    assert by.loc[("selection", 2.0), "human_perplexity"] == pytest.approx(
        alone["human_perplexity"].iloc[0], rel=1e-4
    )
