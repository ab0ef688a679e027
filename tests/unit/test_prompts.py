"""The Facial-R1 prompt, the Ground Truth hint, retries and the prompt hash."""
from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from engine.core.config import VerifierConfig
from engine.core.facs import AU_DESCRIPTIONS, EMOTIONS
from engine.core.prompts import (
    EXAMPLE_AUS,
    EXAMPLE_COMPLETION,
    EXAMPLE_LABEL,
    build_messages,
    describe_reasons,
    make_request,
)
from engine.core.types import Sample, prompt_hash, sha256_hex
from engine.core.verifier import verify

IMAGE = b"\x89PNG fake bytes"


def sample(dataset="RAF-DB", aus=("AU1", "AU4", "AU15"), labels=("sadness",), sid="raf-0001") -> Sample:
    return Sample(id=sid, dataset=dataset, image=IMAGE, image_sha256=sha256_hex(IMAGE), image_path="img/0001.jpg",
                  question="What is the emotion of this face?", aus=aus, labels=labels)


def user_text(messages, index=0) -> str:
    parts = messages[index]["content"]
    return next(p["text"] for p in parts if p["type"] == "text")


def test_prompt_has_the_facial_r1_parts():
    messages = build_messages(sample(), hint=False)
    assert len(messages) == 1 and messages[0]["role"] == "user"
    assert [p["type"] for p in messages[0]["content"]] == ["image", "text"]
    text = user_text(messages)
    for au, name in AU_DESCRIPTIONS.items():
        assert f"{au}: {name}" in text
    assert "(AU4)" in text  # how to write AU ids
    for word in ('"no"', '"not"', '"without"', '"maybe"'):
        assert word in text
    assert "label set: anger, disgust, fear, happiness, neutral, sadness, surprise." in text  # RAF-DB: no contempt
    assert "contempt" not in text
    assert EXAMPLE_COMPLETION in text
    assert text.rstrip().endswith("<think>your analysis</think>\n<answer>one word</answer>")
    assert "Ground Truth" not in text and "MUST" not in text


def test_label_set_follows_the_dataset():
    assert "contempt" in user_text(build_messages(sample(dataset="AffectNet"), hint=False))
    raf_au = user_text(build_messages(sample(dataset="RAF-AU"), hint=False))
    assert "label set: anger, disgust, fear, happiness, sadness, surprise." in raf_au


def test_the_worked_example_passes_the_strict_verifier():
    verdict = verify(EXAMPLE_COMPLETION, EXAMPLE_AUS, [EXAMPLE_LABEL], VerifierConfig())
    assert verdict.accepted, verdict.reasons


def test_hint_block_lists_gold_aus_and_label():
    text = user_text(build_messages(sample(), hint=True))
    block = text[text.index("Ground Truth"):]
    assert "MUST identify these Action Units: AU1 (inner brow raiser), AU4 (brow lowerer), AU15 (lip corner depressor)." in block
    assert "MUST be this emotion: sadness." in block


def test_au_only_dataset_hint_and_answer_instruction():
    text = user_text(build_messages(sample(dataset="DISFA", aus=("AU6", "AU12"), labels=()), hint=True))
    block = text[text.index("Ground Truth"):]
    assert "AU6 (cheek raiser), AU12 (lip corner puller)" in block
    assert "MUST be this emotion" not in block
    assert "no emotion label" in text
    assert ", ".join(EMOTIONS) in text
    assert "<answer>one emotion word</answer>" in text


def test_hint_names_only_what_is_known():
    # unknown AUs (emotion-only source): no AU line at all
    text = user_text(build_messages(sample(aus=(), labels=("neutral",)), hint=True))
    assert "Action Units:" not in text[text.index("Ground Truth"):] and "MUST NOT" not in text
    assert "MUST be this emotion: neutral." in text
    # the explicit "no AU" form
    text = user_text(build_messages(sample(aus=("AU0",), labels=("neutral",)), hint=True))
    assert "MUST NOT name any Action Unit" in text
    # nothing known: no hint block
    text = user_text(build_messages(sample(dataset="Unlisted", aus=(), labels=()), hint=True))
    assert "Ground Truth" not in text


def test_retry_appends_previous_completions_and_problems():
    history = [("<think>Brows (AU4).</think><answer>anger</answer>", ["au_missing:AU1", "au_missing:AU15",
                                                                       "label_mismatch:anger!=sadness"]),
               ("<think>It is not clear.</think>", ["format", "no_answer", "forbidden_word:not"])]
    messages = build_messages(sample(), hint=True, history=history)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert sum(p["type"] == "image" for m in messages for p in m["content"]) == 1
    assert user_text(messages, 1) == history[0][0]
    first_retry = user_text(messages, 2)
    assert "AU1 (inner brow raiser), AU15 (lip corner depressor)" in first_retry
    assert '"anger" is wrong' in first_retry and "sadness" in first_retry
    second_retry = user_text(messages, 4)
    assert '"not"' in second_retry and "<answer>" in second_retry
    assert user_text(messages, 0) == user_text(build_messages(sample(), hint=True))  # the first turn is unchanged


def test_describe_reasons_covers_every_reason_kind():
    reasons = ["format", "no_think", "no_answer", "au_missing:AU4", "au_extra:AU9", "au_extra:AU10",
               "au_unknown:AU99", "label_mismatch:anger!=sadness", "forbidden_word:maybe", "hint_echo:ground truth",
               "too_short", "too_long", "something_new:x"]
    text = describe_reasons(reasons)
    lines = text.splitlines()
    assert all(line.startswith("- ") for line in lines)
    assert len(lines) == len(reasons) - 1  # the two au_extra reasons share a line
    assert "AU9 (nose wrinkler), AU10 (upper lip raiser)" in text
    assert "AU99" in text and '"maybe"' in text and "ground truth" in text and "something_new:x" in text
    assert describe_reasons([]) == ""


def test_prompt_hash_is_stable_and_ignores_image_data():
    messages = build_messages(sample(), hint=True)
    h = prompt_hash(messages)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert prompt_hash(build_messages(sample(), hint=True)) == h
    with_pixels = ({**messages[0], "content": [{"type": "image", "image": b"other"}, messages[0]["content"][1]]},)
    assert prompt_hash(with_pixels) == h
    assert prompt_hash(build_messages(sample(), hint=False)) != h
    assert prompt_hash(build_messages(sample(labels=("anger",)), hint=True)) != h


def test_make_request():
    history = [("<think>x</think>", ["format"])]
    request = make_request(sample(), 1, hint=True, history=history)
    assert request.key == "raf-0001#1" and request.sample_id == "raf-0001" and request.attempt == 1
    assert request.image == IMAGE
    assert request.messages == build_messages(sample(), hint=True, history=history)
    assert request.prompt_hash == prompt_hash(request.messages)


def test_compact_style_keeps_the_rules_and_format_without_definitions():
    full, compact = user_text(build_messages(sample(), hint=True)), user_text(build_messages(sample(), hint=True,
                                                                                              style="compact"))
    assert len(compact) < len(full) / 2
    assert "AU12: lip corner puller" not in compact and "(AU4)" in compact
    assert "<think>" in compact and "<answer>" in compact and "Answer with exactly one word" in compact
    assert "MUST identify these Action Units: AU1" in compact  # the hint block is the same in both styles
    assert make_request(sample(), 0, hint=True).prompt_hash != make_request(sample(), 0, hint=True,
                                                                            style="compact").prompt_hash


@settings(max_examples=60)
@given(question=st.text(max_size=40), completion=st.text(max_size=60),
       reasons=st.lists(st.sampled_from(["format", "au_missing:AU4", "label_mismatch:anger!=sadness", "x:\"\\"]),
                        max_size=3),
       retries=st.integers(0, 2), hint=st.booleans(), style=st.sampled_from(["full", "compact"]),
       dataset=st.sampled_from(["RAF-DB", "DISFA", "Unlisted"]))
def test_make_request_hash_equals_the_hash_of_its_messages(question, completion, reasons, retries, hint, style,
                                                          dataset):
    """make_request hashes the shared instructions once and the rest per request; the result must be
    prompt_hash of the messages it returns, whatever the texts contain (quotes, escapes, NULs)."""
    base = Sample(id="q", dataset=dataset, image=IMAGE, image_sha256=sha256_hex(IMAGE), image_path="q.png",
                  question=question, aus=("AU6", "AU12"), labels=("happiness",) if dataset != "DISFA" else ())
    history = [(completion + "\x00prompt-text\x00" * (i % 2), reasons) for i in range(retries)]
    request = make_request(base, retries, hint=hint, history=history, style=style)
    assert request.messages == build_messages(base, hint=hint, history=history, style=style)
    assert request.prompt_hash == prompt_hash(request.messages)
