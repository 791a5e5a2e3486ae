"""Token ids back into text: stop strings found on the decoded answer, and incremental decoding
whose pieces add up to the whole decode. On real tokenizers: the tiny model's word-level one and,
when it is installed, the default model's byte-level BPE (characters spread over several tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.tiny_model import EOS_ID, VOCAB
from service.errors import InvalidRequestError
from service.prompts import PromptRenderer, StopStrings, TextStream

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "powerserve" / "models" / "smollm2-135m-instruct"
A, B, C = VOCAB["a"], VOCAB["b"], VOCAB["c"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> PromptRenderer:
    return PromptRenderer(tiny_model_dir)


@pytest.fixture(scope="module")
def default() -> PromptRenderer:
    if not (DEFAULT_MODEL_DIR / "tokenizer.json").exists():
        pytest.skip(f"the default model is not prepared at {DEFAULT_MODEL_DIR}")
    return PromptRenderer(DEFAULT_MODEL_DIR)


def streamed(renderer: PromptRenderer, token_ids: list[int]) -> list[str]:
    decoder = TextStream(renderer)
    return [decoder.push([token]) for token in token_ids]


# --- StopStrings -----------------------------------------------------------------------------------


def test_cut_keeps_the_tokens_up_to_the_stop_and_the_text_before_it(tiny: PromptRenderer) -> None:
    answer = [A, B, C, A]  # "a b c a"
    assert StopStrings(tiny, ["b c"]).cut(answer) == (3, "a ")  # the stop spans two tokens
    assert StopStrings(tiny, ["a"]).cut(answer) == (1, "")
    assert StopStrings(tiny, ["c a"]).cut(answer) == (4, "a b ")


def test_cut_takes_the_earliest_stop_whatever_its_place_in_the_list(tiny: PromptRenderer) -> None:
    assert StopStrings(tiny, ["c", "b"]).cut([A, B, C]) == (2, "a ")


def test_cut_without_a_stop_in_the_answer(tiny: PromptRenderer) -> None:
    assert StopStrings(tiny, []).cut([A, B]) is None
    assert StopStrings(tiny, ["c"]).cut([A, B]) is None
    assert StopStrings(tiny, ["b a"]).cut([A, B]) is None  # only its start is there


def test_keep_is_the_tokens_cut_keeps(tiny: PromptRenderer) -> None:
    stops = StopStrings(tiny, ["b c"])
    assert stops.keep([A, B, C, A]) == 3
    assert stops.keep([A, B]) is None


def test_cut_on_a_byte_level_tokenizer(default: PromptRenderer) -> None:
    answer = default.encode_text("The answer is 42. Done")
    kept, text = StopStrings(default, [". "]).cut(answer)  # type: ignore[misc]
    assert text == "The answer is 42"
    assert ". " in default.decode(answer[:kept]) and ". " not in default.decode(answer[: kept - 1])


# --- TextStream ------------------------------------------------------------------------------------


def test_text_stream_adds_up_to_the_decode(tiny: PromptRenderer) -> None:
    answer = [A, B, C, EOS_ID, A]
    parts = streamed(tiny, answer)
    assert "".join(parts) == tiny.decode(answer) == "a b c a"
    assert parts[3] == ""  # EOS is a special token: skipped, as decode skips it


def test_text_stream_takes_several_tokens_at_once(tiny: PromptRenderer) -> None:
    decoder = TextStream(tiny)
    assert decoder.push([A, B]) + decoder.push([]) + decoder.push([C]) == "a b c"


@pytest.mark.parametrize("text", ["wörld 日本語", "hello wörld 日本語 🙂 done", "🙂"])
def test_text_stream_holds_back_partial_characters(default: PromptRenderer, text: str) -> None:
    answer = default.encode_text(text)
    parts = streamed(default, answer)
    assert "".join(parts) == default.decode(answer) == text
    assert not any("\ufffd" in part for part in parts)  # no half character is ever sent
    assert "" in parts  # some token ended mid-character: void otherwise


# --- PromptRenderer --------------------------------------------------------------------------------


def test_validate_ids_names_the_parameter(tiny: PromptRenderer) -> None:
    tiny.validate_ids([A, EOS_ID], param="prompt")
    for bad in (len(VOCAB), -1):
        with pytest.raises(InvalidRequestError) as raised:
            tiny.validate_ids([A, bad], param="messages")
        assert raised.value.param == "messages"


# --- bounds -----------------------------------------------------------------------------------------


TEXTS = [
    "a b c a b",
    "What is 7 + 5? Answer with a number only.",
    "naïve café — 東京 🚀 " * 5,
    " " * 300,
    "x" * 500,
]


@pytest.mark.parametrize("text", TEXTS)
def test_fewest_tokens_never_exceeds_the_real_count(
    tiny: PromptRenderer, default: PromptRenderer, text: str
) -> None:
    """The cheap bound that refuses a far too long prompt before tokenising is a true lower bound
    (on a byte-level BPE); the tiny model's word-level tokenizer folds unknown words into one token,
    so it claims none."""
    assert 1 <= default.fewest_tokens(text) <= len(default.encode_text(text))
    assert tiny.fewest_tokens(text) == 0


def test_rendered_chats_are_cached_by_bytes(tiny: PromptRenderer) -> None:
    """Small conversations are kept (a repeat skips the template), a large one never is."""
    small = [{"role": "user", "content": "a b"}]
    assert tiny.encode_chat(small) == tiny.encode_chat(small)
    kept = tiny.chat_cache_bytes
    assert kept > 0
    tiny.encode_chat([{"role": "user", "content": "a b " * 100_000}])  # 400 kB: rendered, not kept
    assert tiny.chat_cache_bytes == kept
