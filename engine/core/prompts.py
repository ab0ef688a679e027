"""The Facial-R1 prompt: instructions and the exact <think>/<answer> format; optionally the
label-conditioned "Ground Truth" block used for synthesis (rationalisation, as STaR), and the retry
feedback that shows the model its previous answer and what the verifier found wrong with it. The
wording comes from a template set (engine.core.templates: "facial-r1", "full", "compact" or a file).

Unknown is not absent: the hint names only what the record knows. An empty AU list (unknown AUs)
gets no AU line, an empty label list no label line; the explicit NO_AU form gets the "no Action
Unit" line. The question has "<image>" removed and falls back to the official default when empty.

Messages are backend-neutral chat messages: the first user turn holds one {"type": "image"} part
(the image bytes travel beside the messages) and the text. A retry appends the previous completion
as an assistant turn and the problem list as a user turn ("turns" sets), or appends both to the
first user text as the official script does ("append" sets); either way the prompt grows.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from engine.core.facs import AU_DESCRIPTIONS, EMOTIONS, NO_AU, au_name, label_set_for, present_aus
from engine.core.templates import EXAMPLE_AUS, EXAMPLE_COMPLETION, EXAMPLE_LABEL, PromptTemplates, render_labels, resolve
from engine.core.types import GenerationRequest, Sample

__all__ = ["EXAMPLE_AUS", "EXAMPLE_COMPLETION", "EXAMPLE_LABEL", "build_messages", "describe_reasons", "hint_block",
           "make_request", "prompt_label_set", "prompt_text", "retry_text"]

Message = dict[str, Any]
# A template set's name ("full", "compact", "facial-r1") or a YAML template file; see engine.core.templates.
PromptStyle = str
History = Sequence[tuple[str, Sequence[str]]]  # (previous completion, its verifier reasons)

AU_DEFINITIONS_TEXT = "\n".join(f"{au}: {name}" for au, name in AU_DESCRIPTIONS.items())


def prompt_label_set(sample: Sample) -> tuple[str, ...]:
    """The labels the answer may use: the source's own set as imported (Sample.label_set), else the
    dataset's listed set; either widened by the sample's own labels where a source uses labels
    beyond it (open label sets); all eight emotions plus the sample's labels for a labelled sample of
    an unlisted dataset; () when the emotion is unknown and no set is known."""
    known = sample.label_set or label_set_for(sample.dataset)
    if not sample.labels:
        return known or ()
    base = known or EMOTIONS
    return base + tuple(label for label in sample.labels if label not in base)


def _answer_parts(templates: PromptTemplates, label_set: tuple[str, ...]) -> dict[str, str]:
    if label_set:
        labels = render_labels(label_set, templates.label_list)
        return {"labels": labels, "answer_rule": templates.answer_rule.format(labels=labels),
                "answer_slot": templates.answer_slot}
    labels = render_labels(templates.unlabelled_labels, templates.unlabelled_label_list)
    return {"labels": labels, "answer_rule": templates.answer_rule_unlabelled.format(labels=labels),
            "answer_slot": templates.answer_slot_unlabelled}


def _au_list(aus: Iterable[str], form: str = "named") -> str:
    """AU ids as a template set names them: "AU4 (brow lowerer), AU33" (an id without wording is
    named by its id) or the official Python list of the string-sorted ids."""
    aus = tuple(aus)
    if form == "python":
        return repr(sorted(set(aus)))
    return ", ".join(f"{au} ({au_name(au)})" if au_name(au) else au for au in aus)


def hint_block(sample: Sample, templates: PromptTemplates | None = None) -> str:
    """The label-conditioned block: a line for what is known, nothing for what is unknown (an empty
    AU list, an empty label list); "" when neither is known. NO_AU gets its own line."""
    templates = templates or resolve("full")
    lines = []
    if sample.aus == (NO_AU,):
        lines.append(templates.hint_no_aus)
    elif sample.aus:
        lines.append(templates.hint_aus.format(aus=_au_list(present_aus(sample.aus), templates.au_list)))
    if sample.labels:
        lines.append(templates.hint_label.format(label=sample.labels[0], labels=repr(sorted(set(sample.labels)))))
    return "\n".join([templates.hint_head, *lines]) if lines else ""


def prompt_text(sample: Sample, *, hint: bool, style: PromptStyle = "full") -> str:
    return _first_user_text(sample, hint=hint, style=style)


def _first_user_text(sample: Sample, *, hint: bool, style: PromptStyle, history: History = ()) -> str:
    """Instructions, the hint block when asked for, and the retries of a set that appends them to
    the prompt (facial-r1)."""
    templates = resolve(style)
    text = _instructions(style, _question(sample.question), tuple(prompt_label_set(sample)))
    block = hint_block(sample, templates) if hint else ""
    if block:
        text += f"\n\n{block}"
    if templates.retry_mode == "append":
        text += "".join("\n\n" + templates.retry.format(previous=completion, issues=_issues(templates, reasons, sample))
                        for completion, reasons in history)
    return text


def _question(question: str | None) -> str:
    """The official scripts' question handling: "<image>" removed, stripped, a default when empty."""
    cleaned = (question or "").replace("<image>", "").strip()
    return cleaned or "What is the emotion of this face?"


@functools.lru_cache(maxsize=64)
def _instructions(style: PromptStyle, question: str, label_set: tuple[str, ...]) -> str:
    templates = resolve(style)
    return templates.instructions.format(question=question, **_answer_parts(templates, label_set))


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


def official_issues(reasons: Iterable[str], sample: Sample) -> str:
    """The official retry's issue list (infer_emotion.py: get_error_messages), joined by ", ": the
    gold AU and label lists in full when they mismatch, and the missing-tag lines; reasons the
    official filter has no words for are described in this project's words."""
    codes = [reason.partition(":")[0] for reason in reasons]
    issues = []
    if any(code in ("au_missing", "au_extra") for code in codes):
        issues.append(f"The predicted AUs must be: {sorted(set(present_aus(sample.aus)))}")
    if "label_mismatch" in codes:
        issues.append(f"The predicted labels must be: {sorted(set(sample.labels))}")
    if "no_think" in codes:
        issues.append("Missing or empty <think>...</think> tag.")
    if "no_answer" in codes:
        issues.append("Missing or empty <answer>...</answer> tag.")
    rest = [r for r in reasons if r.partition(":")[0] not in ("au_missing", "au_extra", "label_mismatch", "no_think",
                                                               "no_answer", "format")]
    if rest:
        issues.append(describe_reasons(rest).replace("\n", " "))
    return ", ".join(issues)


def _issues(templates: PromptTemplates, reasons: Sequence[str], sample: Sample) -> str:
    return official_issues(reasons, sample) if templates.issues == "official" else describe_reasons(reasons)


def retry_text(reasons: Sequence[str], sample: Sample | None = None, style: PromptStyle = "full") -> str:
    """The feedback turn of a retry under a template set ("turns" sets)."""
    templates = resolve(style)
    issues = official_issues(reasons, sample) if templates.issues == "official" and sample else describe_reasons(reasons)
    return templates.retry.format(previous="", issues=issues)


def build_messages(sample: Sample, *, hint: bool, history: History = (),
                   style: PromptStyle = "full") -> tuple[Message, ...]:
    return _messages(_first_user_text(sample, hint=hint, style=style, history=history),
                     _turns(history, sample, style))


def _turns(history: History, sample: Sample, style: PromptStyle) -> tuple[tuple[str, str], ...]:
    """The retry turns (previous completion, feedback text); none for sets that append retries."""
    if resolve(style).retry_mode == "append":
        return ()
    return tuple((completion, retry_text(reasons, sample, style)) for completion, reasons in history)


def _messages(text: str, turns: Sequence[tuple[str, str]]) -> tuple[Message, ...]:
    messages: list[Message] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    for completion, feedback in turns:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": completion}]})
        messages.append({"role": "user", "content": [{"type": "text", "text": feedback}]})
    return tuple(messages)


def make_request(sample: Sample, attempt: int, *, hint: bool, history: History = (),
                 style: PromptStyle = "full") -> GenerationRequest:
    messages = build_messages(sample, hint=hint, history=history, style=style)
    return GenerationRequest(key=f"{sample.id}#{attempt}", sample_id=sample.id, attempt=attempt,
                             messages=messages, image=sample.image)
