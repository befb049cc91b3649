"""The locally trained tokenizer: same ids from `tokenizers` and AutoTokenizer, specials, chat template."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer
from transformers.models.qwen2 import tokenization_qwen2

from tasks.arithmetic.problems import take_problems
from tasks.arithmetic.tokenizer import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    PRETOKENIZE_REGEX,
    save_tokenizer,
    train_tokenizer,
)

TEXTS = [
    "Compute 813 + 944 + 765.",
    "3+4+5=12\n1+4+6+1=12\n8+9+7+1=25\nAnswer: 2522",
    "<|im_start|>user\nCompute 47 + 85.<|im_end|>\n<|im_start|>assistant\n",
    "héllo wörld, it's   12,345 ١٢٣ \t\r\n 🙂",
    "e\u0301 vs \u00e9 (NFC)",
    "",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, Path]:
    corpus = []
    for level in (1, 3, 6):
        for problem in take_problems(level, "tokenizer-test", 100):
            corpus += [problem.question, problem.worked_solution()]
    tokenizer = train_tokenizer(corpus, vocab_size=300)
    out = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(tokenizer, out, model_max_length=128)
    return tokenizer, out


def test_split_regex_is_qwen2s() -> None:
    assert PRETOKENIZE_REGEX == tokenization_qwen2.PRETOKENIZE_REGEX


def test_ids_agree_between_tokenizers_saved_file_and_auto_tokenizer(trained: tuple[Tokenizer, Path]) -> None:
    raw, out = trained
    auto = AutoTokenizer.from_pretrained(out)
    from_file = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in TEXTS:
        ids = raw.encode(text).ids
        assert auto(text, add_special_tokens=False)["input_ids"] == ids, text
        assert from_file.encode(text).ids == ids, text
        assert auto.decode(ids) == raw.decode(ids, skip_special_tokens=False)


def test_special_tokens_and_digits(trained: tuple[Tokenizer, Path]) -> None:
    raw, out = trained
    auto = AutoTokenizer.from_pretrained(out)
    assert [raw.token_to_id(t) for t in (ENDOFTEXT, IM_START, IM_END)] == [0, 1, 2]
    assert (auto.eos_token, auto.eos_token_id, auto.pad_token_id) == (IM_END, 2, 0)
    assert auto(f"{IM_START}{IM_END}", add_special_tokens=False)["input_ids"] == [1, 2]
    assert len(auto("12345", add_special_tokens=False)["input_ids"]) == 5  # one token per digit
    assert len(auto) == raw.get_vocab_size() <= 300


def test_chat_template_is_chatml_without_system_prompt(trained: tuple[Tokenizer, Path]) -> None:
    auto = AutoTokenizer.from_pretrained(trained[1])
    messages = [{"role": "user", "content": "Compute 1 + 2."}]
    text = auto.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nCompute 1 + 2.<|im_end|>\n<|im_start|>assistant\n"
    ids = auto.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == trained[0].encode(text).ids


def test_vocab_too_small_is_rejected() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["1+1=2"], vocab_size=100)
