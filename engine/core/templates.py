"""Prompt template sets: the wording of the prompt, the label-conditioned hint block and the retry
feedback, by name.

- "facial-r1": the official repository's wording (RobitsG/Facial-R1,
  src/open-r1-multimodal/src/open_r1/prompts/emotion_prompt.py: GRPO_PROMPT; the Ground Truth block
  and the retry template of src/eval/infer_emotion.py). Label sets render as the official scripts
  render them: `dict_keys([...])` of the source's labels, and for a source without labels the
  default list of grpo_jsonl.py; the hint names the gold lists as Python lists; a retry appends
  the previous response and the issues to the same user text, as infer_emotion.py does.
- "full" (also "engine"): this project's wording, with the 30 AU definitions and a worked example;
  retries are chat turns. "compact": its rules and format only (small models, CPU runs).
- A path to a YAML file: a user's own set. Its keys are PromptTemplates' fields; `base:` names the
  set whose fields it starts from (default "full").

Placeholders: instructions {question} {answer_rule} {labels} {answer_slot}; answer rules and label
lists {labels}; hint_aus {aus}; hint_label {label} (first gold label) and {labels}; retry {previous}
and {issues}.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from engine.core.facs import AU_DESCRIPTIONS, EMOTIONS

_DEFINITIONS = "\n".join(f"{au}: {name}" for au, name in AU_DESCRIPTIONS.items())

# The worked example follows every rule it teaches: AU ids in parentheses, reasoning from the AUs to
# the emotion, no negative or uncertain words, one label word.
EXAMPLE_AUS: tuple[str, ...] = ("AU1", "AU4", "AU15")
EXAMPLE_LABEL = "sadness"
EXAMPLE_COMPLETION = (
    "<think>The inner corners of the eyebrows are raised (AU1) and drawn together (AU4), creating a "
    "slanted, worried brow. The corners of the lips are pulled downward (AU15), giving the mouth a "
    "drooping shape. Raised inner brows combined with lowered lip corners form the classic pattern of "
    "sorrow, so the face expresses sadness.</think>\n<answer>sadness</answer>")


class PromptTemplates(BaseModel):
    """One template set; see the module docstring for the placeholders."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    instructions: str
    answer_rule: str = "Answer with exactly one word from this label set: {labels}."
    answer_rule_unlabelled: str = ("This face has no emotion label to check: finish with the one emotion these "
                                   "Action Units suggest most, as one word from: {labels}.")
    answer_slot: str = "one word"
    answer_slot_unlabelled: str = "one emotion word"
    label_list: Literal["comma", "python", "dict_keys"] = "comma"
    unlabelled_labels: tuple[str, ...] = EMOTIONS
    unlabelled_label_list: Literal["comma", "python", "dict_keys"] = "comma"
    au_list: Literal["named", "python"] = "named"
    hint_head: str = ("Ground Truth (use it to guide your analysis; describe the face as if you observed it "
                      "yourself and do not mention this information):")
    hint_aus: str = "- The analysis MUST identify these Action Units: {aus}."
    hint_no_aus: str = "- The face shows no Action Unit: the analysis MUST NOT name any Action Unit id."
    hint_label: str = "- The final answer MUST be this emotion: {label}."
    retry_mode: Literal["turns", "append"] = "turns"
    retry: str = ("Your previous response had these problems:\n{issues}\n"
                  "Write a new response that fixes them, in exactly the same "
                  "<think>...</think><answer>...</answer> format.")
    issues: Literal["lines", "official"] = "lines"


_FULL = """You are an expert in facial expression analysis using the Facial Action Coding System (FACS).
{question}
Analyse the face in the image step by step:
1. Describe the observable facial features and write the Action Unit id in parentheses after each one, for example "the eyebrows are pulled together (AU4)".
2. Reason from these Action Units to the emotion they indicate.
3. Describe only what is present: avoid negative or uncertain words such as "no", "not", "without" and "maybe".
4. {answer_rule}

Action Unit definitions:
""" + _DEFINITIONS.replace("{", "{{").replace("}", "}}") + """

Example:
""" + EXAMPLE_COMPLETION + """

Respond in exactly this format:
<think>your analysis</think>
<answer>{answer_slot}</answer>"""

_COMPACT = """{question}
Describe the facial features, each followed by its Action Unit id in parentheses, e.g. "brows pulled together (AU4)", reason from them to the emotion, and avoid negative or uncertain words. {answer_rule}
Respond as <think>your analysis</think><answer>{answer_slot}</answer>"""

# GRPO_PROMPT of the official emotion_prompt.py, word for word; {labels} is its {Emotions}.
_FACIAL_R1 = """### Question
{question}

### Requirements
First, output the thinking process in <think>...</think> tags. 
    - Provide a concise and precise analysis as a continuous paragraph focusing on the critical Action Units (AUs).
    - Describe the observable facial features with AU numbers in parentheses (e.g., "eyebrows pulled together (AU4)").
    - After analyzing the possible AUs present in the face, explain how these AUs collectively indicate a specific emotion.
    - ⚠️Forbidden to use negative or uncertain expressions such as "no", "not", "without" or "maybe".
    - ⚠️Reduce unnecessary talk and be as concise as possible.
After the thinking process, output only the final emotion in <answer>...</answer> tags.
    - Use a single word from {labels}.

### AU Definition
The following are the definitions of Action Units:
    - AU1: Inner brow raiser;
    - AU2: Outer brow raiser;
    - AU4: Brow lowerer;
    - AU5: Upper lid raiser;
    - AU6: Cheek raiser;
    - AU7: Lid tightener;
    - AU9: Nose wrinkler;
    - AU10: Upper lip raiser;
    - AU11: Nasolabial Furrow Deepener;
    - AU12: Lip corner puller;
    - AU13: Cheek puffer;
    - AU14: Dimpler;
    - AU15: Lip corner depressor;
    - AU16: Lower lip depressor;
    - AU17: Chin raiser;
    - AU18: Lip pucker;
    - AU19: Tongue show;
    - AU20: Lip stretcher;
    - AU22: Lip funneler;
    - AU23: Lip tightener;
    - AU24: Lip pressor;
    - AU25: Lips parted;
    - AU26: Jaw drop;
    - AU27: Mouth stretch;
    - AU28: Lip suck;
    - AU29: Jaw thrust;
    - AU30: Jaw sideways;
    - AU31: Jaw clencher;
    - AU32: Lip bite;
    - AU43: Eyes closed.

### Example
This is an example that meets the requirements:
<think>In analyzing the facial expression, key Action Units include upper lip raising (AU10), chin raising (AU17), and lip funneling (AU22). The upper lip raised indicates a display of disdain or hostility, while the chin raised suggests a feeling of defiance or assertiveness. The lip funneling can indicate tension or frustration in the expression. Together, these AUs coalesce to portray a strong emotional state where the individual might feel anger or strong irritation. The combination of disdain, defiance, and tension clearly signifies an intense emotional reaction, thus pointing towards anger as the primary emotion.</think>
<answer>anger</answer>"""

# The retry template of the official infer_emotion.py, word for word.
_FACIAL_R1_RETRY = """### Previous Response Issues
Here is your previous response:
{previous}

Your previous response had the following issues:
{issues}

Please correct these issues in your new response. Make sure to:
1. Include all required Action Units in your analysis
2. Provide the correct emotion in your answer
3. Use proper <think>...</think> and <answer>...</answer> tags
4. Avoid negative expressions like "no", "not", "without"
5. Be concise and precise"""

BUILTIN: dict[str, PromptTemplates] = {
    "full": PromptTemplates(name="full", instructions=_FULL),
    "compact": PromptTemplates(name="compact", instructions=_COMPACT),
    "facial-r1": PromptTemplates(
        name="facial-r1", instructions=_FACIAL_R1, label_list="dict_keys",
        # grpo_jsonl.py's default for a source without emotions, in its order, rendered as a list
        unlabelled_labels=("anger", "happiness", "sadness", "neutral", "disgust", "surprise", "fear"),
        unlabelled_label_list="python", au_list="python", hint_head="### Ground Truth",
        hint_aus="Your analysis MUST identify these specific Action Units: {aus}",
        # the official block has no "no AU" line: this one follows its wording
        hint_no_aus="Your analysis MUST NOT name any Action Unit: this face shows none",
        hint_label="And your final answer MUST be this exact emotion: {labels}",
        retry_mode="append", retry=_FACIAL_R1_RETRY, issues="official"),
}
BUILTIN["engine"] = BUILTIN["full"]


def is_template_name(name: str) -> bool:
    """A built-in set's name or a path to a YAML template file."""
    return name in BUILTIN or name.endswith((".yaml", ".yml"))


@functools.lru_cache(maxsize=32)
def resolve(name: str) -> PromptTemplates:
    """The template set `name`: a built-in name or a YAML file (see the module docstring)."""
    if name in BUILTIN:
        return BUILTIN[name]
    if not name.endswith((".yaml", ".yml")):
        raise ValueError(f"unknown prompt template set {name!r}: use one of {sorted(BUILTIN)} or a .yaml file")
    raw = yaml.safe_load(Path(name).read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{name}: a template file is a mapping of PromptTemplates fields")
    base = resolve(str(raw.pop("base", "full")))
    return PromptTemplates.model_validate({**base.model_dump(), "name": name, **raw})


def render_labels(labels: tuple[str, ...], form: str) -> str:
    """A label list as the template set shows it: "a, b" | "['a', 'b']" | "dict_keys(['a', 'b'])"."""
    if form == "comma":
        return ", ".join(labels)
    return repr(list(labels)) if form == "python" else f"dict_keys({list(labels)!r})"
