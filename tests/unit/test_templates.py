"""Prompt template sets: the official wording (facial-r1), today's wording, a user's file, and how
each renders hints, label sets and retries."""
from __future__ import annotations

import pytest

from engine.core.prompts import build_messages, make_request
from engine.core.types import prompt_hash
from engine.core.templates import BUILTIN, render_labels, resolve
from engine.core.types import Sample, sha256_hex

IMAGE = b"\x89PNG fake"


def sample(dataset="RAF-DB", aus=("AU4", "AU12", "AU33"), labels=("happiness",), question="<image>\nHow does she feel?"):
    return Sample(id="s1", dataset=dataset, image=IMAGE, image_sha256=sha256_hex(IMAGE), image_path="a.png",
                  question=question, aus=aus, labels=labels)


def user_texts(messages):
    return [part["text"] for m in messages if m["role"] == "user" for part in m["content"] if part["type"] == "text"]


def test_facial_r1_prompt_is_the_official_wording():
    text = user_texts(build_messages(sample(), hint=True, style="facial-r1"))[0]
    assert text.startswith("### Question\nHow does she feel?\n\n### Requirements\n")  # <image> stripped
    # the label set as the official scripts render `emotions.keys()`
    assert ("    - Use a single word from dict_keys(['anger', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', "
            "'surprise']).") in text
    assert text.endswith("### Ground Truth\nYour analysis MUST identify these specific Action Units: "
                         "['AU12', 'AU33', 'AU4']\nAnd your final answer MUST be this exact emotion: ['happiness']")


def test_facial_r1_unknowns_and_defaults():
    emotion_only = user_texts(build_messages(sample(aus=()), hint=True, style="facial-r1"))[0]
    assert "Action Units:" not in emotion_only.split("### Ground Truth")[1]
    au_only = user_texts(build_messages(sample(dataset="DISFA", labels=(), question=None), hint=True,
                                        style="facial-r1"))[0]
    assert au_only.startswith("### Question\nWhat is the emotion of this face?\n")  # the official default question
    assert "from ['anger', 'happiness', 'sadness', 'neutral', 'disgust', 'surprise', 'fear']." in au_only
    assert "exact emotion" not in au_only


def test_facial_r1_retry_appends_to_the_prompt_with_the_official_issues():
    history = [("<think>Brows (AU4).</think>", ["au_missing:AU12", "label_mismatch:!=happiness", "no_answer"])]
    messages = build_messages(sample(), hint=True, history=history, style="facial-r1")
    assert len(messages) == 1  # one growing user text, as infer_emotion.py
    text = user_texts(messages)[0]
    tail = text[text.index("### Previous Response Issues"):]
    assert tail.startswith("### Previous Response Issues\nHere is your previous response:\n<think>Brows (AU4).</think>\n")
    assert ("The predicted AUs must be: ['AU12', 'AU33', 'AU4'], The predicted labels must be: ['happiness'], "
            "Missing or empty <answer>...</answer> tag.") in tail
    assert tail.endswith("5. Be concise and precise")
    request = make_request(sample(), 1, hint=True, history=history, style="facial-r1")
    assert request.prompt_hash == prompt_hash(messages)


def test_engine_wording_keeps_its_name_and_turns():
    history = [("<think>x</think>", ["no_answer"])]
    messages = build_messages(sample(), hint=True, history=history, style="full")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "AU33" in user_texts(messages)[0]  # an id without wording is named by its id
    assert "AU33 (" not in user_texts(messages)[0]
    assert resolve("engine") is BUILTIN["full"]
    assert make_request(sample(), 1, hint=True, history=history).prompt_hash == prompt_hash(messages)


def test_a_user_template_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: facial-r1\nhint_head: '### Known facts'\n")
    text = user_texts(build_messages(sample(), hint=True, style=str(path)))[0]
    assert "### Known facts\nYour analysis MUST identify" in text
    assert text.startswith("### Question")
    (tmp_path / "bad.yaml").write_text("no_such_field: 1\n")
    with pytest.raises(ValueError):
        resolve(str(tmp_path / "bad.yaml"))
    with pytest.raises(ValueError):
        resolve("nonexistent-set")


def test_open_label_set_in_the_answer_rule():
    text = user_texts(build_messages(sample(dataset="BP4D-gpt", labels=("bittersweet",)), hint=False))[0]
    assert "bittersweet" in text
    assert render_labels(("a", "b"), "comma") == "a, b"
    assert render_labels(("a",), "dict_keys") == "dict_keys(['a'])"


def test_retry_feedback_never_asks_for_what_is_unknown():
    from engine.core.config import VerifierConfig
    from engine.core.verifier import verify

    emotion_only = sample(aus=(), labels=("happiness",))
    completion = "<think>The brows are lowered (AU4) and the lips press (AU24).</think><answer>anger</answer>"
    for policy, style in (("strict", "full"), ("paper", "facial-r1")):
        reasons = verify(completion, emotion_only.aus, emotion_only.labels, VerifierConfig(policy=policy)).reasons
        assert not any(r.startswith("au_") for r in reasons)
        text = "\n".join(user_texts(build_messages(emotion_only, hint=True, history=[(completion, reasons)],
                                                   style=style)))
        assert "Action Units are present" not in text and "The predicted AUs must be" not in text
        assert "happiness" in text.split("anger</answer>")[-1]  # the label problem is still fed back


def test_configs_check_template_files_when_loaded(tmp_path):
    from engine.core.config import ConfigError, SynthConfig, load_config

    good = tmp_path / "mine.yaml"
    good.write_text("base: facial-r1\n")
    assert load_config(SynthConfig, None, {"prompt_style": str(good)}).prompt_style == str(good)
    for bad in (str(tmp_path / "missing.yaml"), "nonsense"):
        with pytest.raises(ConfigError, match="prompt_style"):
            load_config(SynthConfig, None, {"prompt_style": bad})
