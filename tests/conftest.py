"""Shared fixtures: tiny randomly-initialized causal LMs built in the tests (no hub access)."""

from __future__ import annotations

import os
from pathlib import Path

# Before transformers and huggingface_hub are imported: they read these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = (
    "the a an you he she they we it is are was were be to of and or in on at for with that this "
    "not no yes very so such idiot stupid fool moron hate love good bad nice kind rain sun cat "
    "dog tree house car road city park food bread rice tea water cook eat walk run talk said "
    "hello world today tomorrow morning night friend family work team day time what why how "
    "i me my your our their , . ! ?"
).split()
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a small fixed vocabulary, with a simple chat template."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<s> {{ m['content'] }} </s>{% endfor %}"
        "{% if add_generation_prompt %} <s>{% endif %}"
    )
    tokenizer.padding_side = "left"
    return tokenizer


def _common(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def make_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A 4-layer Llama with large init so greedy decoding has few near-ties."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        **_common(tokenizer),
    )
    return LlamaForCausalLM(config).eval()


def make_phi3(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Phi3ForCausalLM:
    """A 3-layer Phi-3 with partial rotary embeddings, the layout of Phi-4-mini-instruct."""
    torch.manual_seed(seed)
    config = Phi3Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        original_max_position_embeddings=256,
        partial_rotary_factor=0.75,
        initializer_range=0.2,
        tie_word_embeddings=True,
        **_common(tokenizer),
    )
    return Phi3ForCausalLM(config).eval()


def make_gpt2(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer GPT-2 (the ``transformer.h`` layout)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_positions=256, initializer_range=0.2, **_common(tokenizer)
    )
    return GPT2LMHeadModel(config).eval()


def make_gemma3(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, sliding_window: int = 6
) -> Gemma3ForCausalLM:
    """A 4-layer Gemma 3: scaled embeddings, sliding-window layers and a global layer.

    The default window (6 positions) is shorter than a test's decode, so the sliding layers
    drop positions; a window longer than the decode makes every layer keep them all.
    """
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=sliding_window,
        layer_types=[
            "sliding_attention",
            "sliding_attention",
            "sliding_attention",
            "full_attention",
        ],
        max_position_embeddings=256,
        initializer_range=0.2,
        **_common(tokenizer),
    )
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="session")
def llama(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    return make_llama(tokenizer)


@pytest.fixture(scope="session")
def texts(llama: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """The tiny Llama's own greedy text: likely under it, so steering raises its perplexity."""
    batch = tokenizer(["the dog", "we cook", "hello"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = llama.generate(**batch, max_new_tokens=12, do_sample=False)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


@pytest.fixture(scope="session")
def phi3(tokenizer: PreTrainedTokenizerFast) -> Phi3ForCausalLM:
    return make_phi3(tokenizer)


@pytest.fixture(scope="session")
def gpt2(tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    return make_gpt2(tokenizer)


@pytest.fixture(scope="session")
def gemma3(tokenizer: PreTrainedTokenizerFast) -> Gemma3ForCausalLM:
    return make_gemma3(tokenizer)


@pytest.fixture(scope="session")
def phi3_folder(tmp_path_factory: pytest.TempPathFactory, tokenizer, phi3) -> Path:
    folder = tmp_path_factory.mktemp("tiny-phi3")
    phi3.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def rtp_dir() -> Path:
    """The RealToxicityPrompts sample named by $STEERLIB_RTP_DIR; skips when absent."""
    value = os.environ.get("STEERLIB_RTP_DIR")
    if not value or not (Path(value) / "challenging_sample.jsonl").is_file():
        pytest.skip("STEERLIB_RTP_DIR is not set to the RTP sample folder (../shared/data/rtp)")
    return Path(value)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A fresh runs folder (``$STEERLIB_RUNS_DIR``), offline."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("STEERLIB_RUNS_DIR", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tokenizer, llama) -> Path:
    """The 4-layer test Llama (256-position context) saved the project's way."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    llama.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
