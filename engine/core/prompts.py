"""The Facial-R1 prompt: instructions, the 30 AU definitions, one worked example and the exact
<think>/<answer> format; optionally the label-conditioned "Ground Truth" block used for synthesis
(rationalisation, as STaR), and the retry turns that show the model its previous answer and what the
verifier found wrong with it.

Messages are backend-neutral chat messages: the first user turn holds one {"type": "image"} part
(the image bytes travel beside the messages) and the text; a retry appends the previous completion as
an assistant turn and the problem list as a user turn, so the prompt grows as in the paper's code.
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from engine.core.facs import AU_DESCRIPTIONS, EMOTIONS, label_set_for
from engine.core.types import GenerationRequest, Sample, sha256_hex

PROMPT_VERSION = "1"

Message = dict[str, Any]
# "full" is the paper's prompt (AU definitions and a worked example, ~550 tokens); "compact" keeps its
# rules and format in ~80 tokens, for small models and CPU runs where prompt length dominates cost.
PromptStyle = Literal["full", "compact"]
History = Sequence[tuple[str, Sequence[str]]]  # (previous completion, its verifier reasons)

AU_DEFINITIONS_TEXT = "\n".join(f"{au}: {name}" for au, name in AU_DESCRIPTIONS.items())

# The worked example follows every rule it teaches: AU ids in parentheses, reasoning from the AUs to
# the emotion, no negative or uncertain words, one label word.
EXAMPLE_AUS: tuple[str, ...] = ("AU1", "AU4", "AU15")
EXAMPLE_LABEL = "sadness"
EXAMPLE_COMPLETION = (
    "<think>The inner corners of the eyebrows are raised (AU1) and drawn together (AU4), creating a "
    "slanted, worried brow. The corners of the lips are pulled downward (AU15), giving the mouth a "
    "drooping shape. Raised inner brows combined with lowered lip corners form the classic pattern of "
    "sorrow, so the face expresses sadness.</think>\n<answer>sadness</answer>")

_INSTRUCTIONS = """You are an expert in facial expression analysis using the Facial Action Coding System (FACS).
{question}
Analyse the face in the image step by step:
1. Describe the observable facial features and write the Action Unit id in parentheses after each one, for example "the eyebrows are pulled together (AU4)".
2. Reason from these Action Units to the emotion they indicate.
3. Describe only what is present: avoid negative or uncertain words such as "no", "not", "without" and "maybe".
4. {answer_rule}

Action Unit definitions:
{definitions}

Example:
{example}

Respond in exactly this format:
<think>your analysis</think>
<answer>{answer_slot}</answer>"""

_COMPACT_INSTRUCTIONS = """{question}
Describe the facial features, each followed by its Action Unit id in parentheses, e.g. "brows pulled together (AU4)", reason from them to the emotion, and avoid negative or uncertain words. {answer_rule}
Respond as <think>your analysis</think><answer>{answer_slot}</answer>"""

_RETRY_HEAD = "Your previous response had these problems:"
_RETRY_TAIL = "Write a new response that fixes them, in exactly the same <think>...</think><answer>...</answer> format."


def prompt_label_set(sample: Sample) -> tuple[str, ...]:
    """The labels the answer may use: the dataset's set; all eight emotions for a labelled sample of
    an unlisted dataset; () for AU-only samples."""
    labels = label_set_for(sample.dataset)
    if not labels and sample.labels:
        return EMOTIONS
    return labels or ()


def _answer_rule(label_set: Sequence[str]) -> str:
    if label_set:
        return f"Answer with exactly one word from this label set: {', '.join(label_set)}."
    return ("This face has no emotion label to check: finish with the one emotion these Action Units "
            f"suggest most, as one word from: {', '.join(EMOTIONS)}.")


def _au_list(aus: Iterable[str]) -> str:
    return ", ".join(f"{au} ({AU_DESCRIPTIONS.get(au, 'unknown')})" for au in aus)


def hint_block(sample: Sample) -> str:
    """The paper's label-conditioned block: the AUs the analysis must identify and the label the
    answer must give (AUs only for samples without an emotion label)."""
    lines = ["Ground Truth (use it to guide your analysis; describe the face as if you observed it "
             "yourself and do not mention this information):"]
    if sample.aus:
        lines.append(f"- The analysis MUST identify these Action Units: {_au_list(sample.aus)}.")
    else:
        lines.append("- The face is at rest: the analysis MUST NOT name any Action Unit id.")
    if sample.labels:
        lines.append(f"- The final answer MUST be this emotion: {sample.labels[0]}.")
    return "\n".join(lines)


def prompt_text(sample: Sample, *, hint: bool, style: PromptStyle = "full") -> str:
    return "".join(_prompt_parts(sample, hint=hint, style=style))


def _prompt_parts(sample: Sample, *, hint: bool, style: PromptStyle) -> tuple[str, str]:
    """(instructions, per-sample tail): the instructions are shared by every sample with the same
    question and label set, which lets make_request hash them once."""
    text = _instructions(style, sample.question.strip(), tuple(prompt_label_set(sample)))
    return text, (f"\n\n{hint_block(sample)}" if hint else "")


@functools.lru_cache(maxsize=64)
def _instructions(style: PromptStyle, question: str, label_set: tuple[str, ...]) -> str:
    template = _INSTRUCTIONS if style == "full" else _COMPACT_INSTRUCTIONS
    return template.format(
        question=question or "What is the emotion of this face?",
        answer_rule=_answer_rule(label_set),
        definitions=AU_DEFINITIONS_TEXT,
        example=EXAMPLE_COMPLETION,
        answer_slot="one word" if label_set else "one emotion word",
    )


_REASON_TEXT = {
    "format": "The response did not follow the format <think>...</think><answer>...</answer> exactly.",
    "no_think": "The <think>...</think> analysis was missing.",
    "no_answer": "The <answer>...</answer> was missing or empty.",
    "too_short": "The analysis was too short; describe each facial feature and how it leads to the emotion.",
    "too_long": "The analysis was too long; keep to the observable features and the reasoning.",
}


def describe_reasons(reasons: Iterable[str]) -> str:
    """Verifier reasons -> a human-readable problem list, one "- " line per problem; AU reasons of
    one kind are grouped into one line."""
    grouped: dict[str, list[str]] = {}
    lines: list[str] = []
    for reason in reasons:
        code, _, detail = reason.partition(":")
        if code in ("au_missing", "au_extra", "au_unknown"):
            if code not in grouped:
                grouped[code] = []
                lines.append(code)  # placeholder, filled below in first-seen order
            grouped[code].append(detail)
        elif code in _REASON_TEXT:
            lines.append(_REASON_TEXT[code])
        elif code == "label_mismatch":
            given, _, expected = detail.partition("!=")
            lines.append(f'The final answer "{given}" is wrong; the expected emotion is {expected}.')
        elif code == "forbidden_word":
            lines.append(f'The analysis used the word "{detail}"; describe only what is present, avoiding negations and hedges.')
        elif code == "hint_echo":
            lines.append(f'The analysis referred to the given information ("{detail}"); describe the face as observed.')
        else:
            lines.append(f"Problem: {reason}.")
    group_text = {
        "au_missing": lambda aus: f"These Action Units are present but were not identified: {_au_list(aus)}.",
        "au_extra": lambda aus: f"These Action Units were named but are not present: {_au_list(aus)}.",
        "au_unknown": lambda aus: f"These ids are not valid Action Units: {', '.join(aus)}.",
    }
    return "\n".join("- " + (group_text[line](grouped[line]) if line in grouped else line) for line in lines)


def retry_text(reasons: Sequence[str]) -> str:
    return f"{_RETRY_HEAD}\n{describe_reasons(reasons)}\n{_RETRY_TAIL}"


def build_messages(sample: Sample, *, hint: bool, history: History = (),
                   style: PromptStyle = "full") -> tuple[Message, ...]:
    return _messages(prompt_text(sample, hint=hint, style=style), history)


def _messages(text: str, history: History) -> tuple[Message, ...]:
    messages: list[Message] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    for completion, reasons in history:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": completion}]})
        messages.append({"role": "user", "content": [{"type": "text", "text": retry_text(reasons)}]})
    return tuple(messages)


def _without_image_data(messages: Iterable[Message]) -> list[Message]:
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [{"type": "image"} if isinstance(part, dict) and part.get("type") == "image" else part
                       for part in content]
        out.append({**message, "content": content})
    return out


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prompt_hash(messages: Iterable[Message]) -> str:
    """sha256 of the canonical JSON of the messages; image parts count only as {"type": "image"}, so
    the hash names the prompt, not the picture."""
    return sha256_hex(_canonical_json(_without_image_data(messages)).encode("utf-8"))


# Stands in for the first user text while the rest of the messages is encoded (see _fast_prompt_hash).
_TEXT_SLOT = "\x00prompt-text\x00"
_ESCAPED_SLOT = _canonical_json(_TEXT_SLOT)[1:-1]


@functools.lru_cache(maxsize=64)
def _digest_through(head: str) -> Any:
    """sha256 state after the canonical JSON up to and including `head`, the start of the first text."""
    opening = _canonical_json(_without_image_data(_messages(_TEXT_SLOT, ())))
    return hashlib.sha256(opening[:opening.index(_ESCAPED_SLOT)].encode("utf-8")
                          + _canonical_json(head)[1:-1].encode("utf-8"))


def _after_text(history: History) -> str:
    """The canonical JSON that follows the first user text: the retry turns, the closing brackets."""
    skeleton = _canonical_json(_without_image_data(_messages(_TEXT_SLOT, history)))
    return skeleton[skeleton.index(_ESCAPED_SLOT) + len(_ESCAPED_SLOT):]  # the slot's first use is the text's


_AFTER_TEXT_ALONE = _after_text(())


def _fast_prompt_hash(head: str, tail: str, history: History) -> str:
    """prompt_hash(_messages(head + tail, history)) without encoding and hashing the long shared
    instructions again for every request: JSON escapes character by character, so the encoding of
    head + tail is the encoding of head followed by that of tail, and the digest of everything up
    to the end of head is kept per head."""
    rest = _after_text(history) if history else _AFTER_TEXT_ALONE
    digest = _digest_through(head).copy()
    digest.update((_canonical_json(tail)[1:-1] + rest).encode("utf-8"))
    return digest.hexdigest()


def make_request(sample: Sample, attempt: int, *, hint: bool, history: History = (),
                 style: PromptStyle = "full") -> GenerationRequest:
    head, tail = _prompt_parts(sample, hint=hint, style=style)
    messages = _messages(head + tail, history)
    return GenerationRequest(key=f"{sample.id}#{attempt}", sample_id=sample.id, attempt=attempt,
                             messages=messages, image=sample.image,
                             prompt_hash=_fast_prompt_hash(head, tail, history))
