"""The one verifier: parsing, rewards and acceptance for completions of the form
`<think>...</think><answer>...</answer>`. Filter actors, GRPO rewards, evaluation and `fea score`
all call this module, so a completion gets the same score everywhere.

Unknown is not absent. An empty gold AU list means the AUs are unknown (emotion-only sources):
R_AU = 0 and no policy checks AUs. An empty gold label list means the emotion is unknown (AU-only
sources): R_acc = cfg.acc_without_label (0.5, the paper's code) and no policy checks the answer. A
face known to show no AU has the gold list [NO_AU] ("AU0"): it must mention no AU id, and R_AU is
1 when it mentions none, -1 otherwise (2*F1 - 1 with F1 of two empty sets taken as 1).

Rewards follow the Facial-R1 public code (grpo_jsonl.py: au_reward, default_accuracy_reward,
format_reward), with one documented difference: AU mentions inside <think> are normalised ("AU04",
"au 4", "AU12B", "AU12L" -> "AU4"/"AU12") before the F1, and the answer is normalised ("Happy" ->
"happiness", "Bitter Sweet" -> "bitter sweet") before the comparison, because the filter, the reward
and evaluation must agree on what a correct mention is. AU-like mentions whose number is no FACS
code ("AU99", "AU47") stay in the predicted set as false positives, as in the paper's raw regex.

Acceptance policies (cfg.policy):
- "paper": the public code's synthesis filter (src/eval/infer_emotion.py: extract_aus,
  extract_labels, the match_aus / match_labels rules), exactly. Predicted AUs are the set of
  `AU\\d+` matches (case-sensitive, unnormalised) over the whole output; predicted labels are the
  first <answer>...</answer>, split on "," "、" "，", stripped, as a set. Each is compared with the
  gold set only when that gold list is known (`True if not gold else gold == pred`). A missing or
  empty <think> or first <answer> is reported (no_think, no_answer) but does not block acceptance.
  Gold lists are the imported ones (canonical ids, normalised labels): a source's "R12A" is "AU12".
- "strict": when the AUs are known, the normalised AUs inside <think> equal the gold set; no AU id
  there that is no FACS code; when the label is known, the normalised answer equals the normalised
  first gold label; the format passes, none of cfg.forbidden_words in the think text (contractions
  such as "isn't" and "cannot" count as "not"), no echo of the label hint (cfg.hint_phrases) in the
  think text, and the think length, in whitespace-separated words, within
  [min_think_words, max_think_words].

Reasons are stable machine-readable strings: "format", "no_think", "no_answer", "au_missing:AU4",
"au_extra:AU9", "au_unknown:AU99", "label_mismatch:sadness!=anger", "forbidden_word:not",
"hint_echo:ground truth", "too_short", "too_long".

This runs on every generated sample and every GRPO rollout, so `verify` and `compute_scores` take a
fast path (`_verify`, `_read`): tags located once, one lower() of the think text shared by the
AU mention scan and the word checks, all forbidden words found by one regex scan of a copy where
every non-word character is a space (engine/core/wording.py), and per-config and per-gold preparation cached. Non-ASCII
think text falls back to the plain matchers (`au_mentions`, `_forbidden_by_regex`), and
tests/unit/test_verifier_reference.py checks the fast path against a plain regex reference.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence, Set as AbstractSet
from functools import lru_cache
from typing import NamedTuple

from engine.core.config import VerifierConfig
from engine.core.facs import FACS_IDS, NO_AU, normalize_au, normalize_label
from engine.core.types import Scores, Verdict
from engine.core.wording import (  # noqa: F401  (re-exported: the verifier's public surface and its tests)
    _forbidden_ascii, _forbidden_by_regex, _forbidden_found, _rules, _Rules, _spaced, forbidden_words_in,
    think_words_exceed)

VERIFIER_VERSION = "1"

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
# The paper's format regex, kept as the reference that `format_ok` is tested against.
PAPER_FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
# The paper's AU regex: case-sensitive, no normalisation ("AU04" stays "AU04", "au4" is not found).
PAPER_AU_RE = re.compile(r"AU\d+")
# The paper's filter reads the first <think> and the first <answer> (re.search, lazy, DOTALL) and
# splits the answer on ASCII, ideographic and full-width commas (infer_emotion.py: extract_labels).
PAPER_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
PAPER_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
PAPER_LABEL_SPLIT_RE = re.compile(r"[,\u3001\uff0c]")
# An AU mention in upper-cased free text: "AU" (a literal first, so the scan is fast) not glued to a
# preceding letter or digit unless that is a side mark ("LAU12"), an optional separator, the number,
# then an intensity letter and/or side mark when the token ends there, otherwise just the number
# ("AU4s" -> AU4). [^\W_] is a letter or digit.
_MENTION_RE = re.compile(
    r"AU(?:(?<![^\W_]AU)|(?<=[LR]AU)(?<![^\W_][LR]AU))[ _-]?0*(\d+)(?:[A-E]?[LR]?(?![^\W_])|(?!\d))")
# The same pattern for lower-cased ASCII text, so the strict policy's single lower() serves both the
# mention scan and the word checks (upper and lower case map ASCII letters one to one; re.ASCII
# changes nothing on ASCII text and makes the scan a little faster).
_MENTION_LOWER_RE = re.compile(
    r"au(?:(?<![^\W_]au)|(?<=[lr]au)(?<![^\W_][lr]au))[ _-]?0*(\d+)(?:[a-e]?[lr]?(?![^\W_])|(?!\d))",
    re.ASCII)
_NUMBER_TO_AU = {au[2:]: au for au in FACS_IDS}
_AU_ORDER = {au: i for i, au in enumerate((NO_AU, *FACS_IDS))}


class Parsed(NamedTuple):
    think: str | None  # text of the first <think>...</think>; None when missing
    answer: str | None  # stripped text of the last <answer>...</answer>; None when missing
    think_aus: tuple[str, ...]  # canonical AU ids mentioned inside <think>, sorted numerically
    all_aus: tuple[str, ...]  # canonical AU ids mentioned anywhere in the completion
    unknown_aus: tuple[str, ...]  # AU-like mentions inside <think> that are no FACS code
    format_ok: bool  # the paper's format regex matches the whole completion


class VerifyItem(NamedTuple):
    """One completion to verify; a plain tuple (completion, gold_aus, gold_labels) also works."""

    completion: str
    gold_aus: Sequence[str]
    gold_labels: Sequence[str]
    sample_id: str = ""
    attempt: int = 0
    label_set: Sequence[str] | None = None


# ---------------------------------------------------------------- parsing
def format_ok(text: str) -> bool:
    """Same result as PAPER_FORMAT_RE.fullmatch(text) (a property test checks), without regex
    backtracking over the whole completion."""
    return text.startswith(THINK_OPEN) and _format_tail_ok(text, text.find(THINK_CLOSE, len(THINK_OPEN)))


def _format_tail_ok(text: str, close: int) -> bool:
    """format_ok for a text that starts with <think>, given `close`, its first </think> after that."""
    if not text.endswith(ANSWER_CLOSE):
        return False
    last_answer_close = len(text) - len(ANSWER_CLOSE)
    while close != -1:
        pos = close + len(THINK_CLOSE)
        while pos < last_answer_close and text[pos].isspace():  # \s* (str.isspace is re's \s)
            pos += 1
        if text.startswith(ANSWER_OPEN, pos) and pos + len(ANSWER_OPEN) <= last_answer_close:
            return True
        close = text.find(THINK_CLOSE, close + 1)
    return False


def answer_text(text: str) -> str | None:
    """The stripped content of the last complete <answer>...</answer>."""
    end = text.rfind(ANSWER_CLOSE)
    if end == -1:
        return None
    start = text.rfind(ANSWER_OPEN, 0, end)
    return None if start == -1 else text[start + len(ANSWER_OPEN):end].strip()


def au_mentions(text: str) -> tuple[set[str], list[str]]:
    """AU mentions in free text -> (canonical ids, unknown ids as "AU<n>" in first-seen order).

    Case-insensitive; "AU04", "au 4", "AU-4", "AU12B", "AU12L" and a side prefix ("LAU12") count.
    A mention glued to a preceding letter or digit ("BEAU 4", "XAU4") does not.
    """
    upper = text.upper()
    if "AU" not in upper:  # most text outside <think> has no mention: skip the regex
        return set(), []
    return _mentioned(_MENTION_RE.findall(upper))


def _think_mentions(think: str, lower: str) -> tuple[set[str], list[str]]:
    """au_mentions(think), scanning `lower` (= think.lower()) when the text is ASCII."""
    if not think.isascii():  # upper() and lower() are not mirror images beyond ASCII ("ß" -> "SS")
        return au_mentions(think)
    if "au" not in lower:
        return set(), []
    return _mentioned(_MENTION_LOWER_RE.findall(lower))


def _mentioned(numbers: Iterable[str]) -> tuple[set[str], list[str]]:
    """Mentioned AU numbers -> (canonical ids, unknown ids as "AU<n>" in first-seen order)."""
    known = set(map(_NUMBER_TO_AU.get, numbers))
    if None not in known:  # the usual case: every mention is one of the 30 AUs
        return known, []
    known.discard(None)
    return known, [f"AU{n}" for n in dict.fromkeys(numbers) if n not in _NUMBER_TO_AU]


def raw_au_ids(text: str, *, ignore_case: bool = False) -> frozenset[str]:
    """The paper's AU extraction: `AU\\d+` as matched, no normalisation. With ignore_case the text
    is upper-cased first (the paper's reward variant), otherwise matching is case-sensitive (the
    paper's synthesis filter)."""
    return frozenset(PAPER_AU_RE.findall(text.upper() if ignore_case else text))


def _sort_key(au: str) -> tuple[int, str]:
    digits = au[2:]
    return (int(digits), au) if digits.isdigit() else (1 << 30, au)


def _sorted(aus: Iterable[str]) -> tuple[str, ...]:
    try:  # canonical ids, the usual case: a dict lookup per id instead of a Python key function
        return tuple(sorted(aus, key=_AU_ORDER.__getitem__))
    except KeyError:
        return tuple(sorted(aus, key=_sort_key))


def parse_completion(text: str) -> Parsed:
    start = text.find(THINK_OPEN)
    end = -1 if start == -1 else text.find(THINK_CLOSE, start + len(THINK_OPEN))
    if end == -1:
        think = None
        think_known: set[str] = set()
        unknown: list[str] = []
        all_known, _ = au_mentions(text)
    else:
        think = text[start + len(THINK_OPEN):end]
        think_known, unknown = au_mentions(think)
        # The tags split words, so scanning the parts outside <think> separately finds the same
        # mentions as scanning the whole text, without a second pass over the long think text.
        all_known = think_known | au_mentions(text[:start])[0] | au_mentions(text[end:])[0]
    return Parsed(think, answer_text(text), tuple(sorted(think_known, key=_AU_ORDER.__getitem__)),
                  tuple(sorted(all_known, key=_AU_ORDER.__getitem__)), tuple(unknown), format_ok(text))


# ---------------------------------------------------------------- rewards
def r_au(pred_aus: Iterable[str], gold_aus: Iterable[str]) -> float:
    """2*F1 - 1 over AU id sets; 0 when the gold AUs are unknown (empty list); -1 when gold exists
    and nothing is predicted; for gold [NO_AU]: 1 when nothing is predicted, else -1."""
    gold = set(gold_aus)
    return _au_reward(set(pred_aus), gold - {NO_AU}, bool(gold))


def _au_reward(pred: AbstractSet[str], gold: AbstractSet[str], known: bool = True) -> float:
    """r_au for ids already in sets (the fast path keeps the gold set prepared); `gold` holds the
    present AUs, `known` whether the gold list stated them at all."""
    if not known:
        return 0.0
    if not gold:
        return -1.0 if pred else 1.0
    if not pred:
        return -1.0
    # F1 = 2PR/(P+R) = 2*TP/(|pred|+|gold|)
    return 4.0 * len(pred & gold) / (len(pred) + len(gold)) - 1.0


def r_acc(answer: str | None, gold_labels: Sequence[str], *, label_set: Sequence[str] | None = None,
          without_label: float = 0.5) -> float:
    """1 when the normalised last answer equals the normalised first gold label, else 0;
    `without_label` when the emotion is unknown (the paper's code returns 0.5). `label_set` is
    accepted for compatibility: labels are open, so it changes nothing."""
    if not gold_labels:
        return without_label
    if answer is None:
        return 0.0
    return 1.0 if normalize_label(answer) == gold_label(gold_labels) else 0.0


def r_format(text: str) -> float:
    return 1.0 if format_ok(text) else 0.0


def gold_label(gold_labels: Sequence[str]) -> str:
    """The label an answer is compared with: the first gold label, normalised (facs.normalize_label)."""
    first = gold_labels[0]
    return normalize_label(first) or first.strip().lower()


def compute_scores(completion: str, gold_aus: Sequence[str], gold_labels: Sequence[str],
                   cfg: VerifierConfig, *, label_set: Sequence[str] | None = None) -> Scores:
    plan, gold = _plan(cfg), _gold(gold_aus, gold_labels, label_set)
    think, lower, answer, known, unknown, fmt_ok = _read(completion)
    return _scores(plan, gold, known, unknown, _answer_label(answer, gold), fmt_ok)


# ---------------------------------------------------------------- acceptance
def _au_set_reasons(pred: Iterable[str], gold: Iterable[str]) -> list[str]:
    pred, gold = set(pred), set(gold)
    if pred == gold:
        return []
    return ([f"au_missing:{au}" for au in _sorted(gold - pred)]
            + [f"au_extra:{au}" for au in _sorted(pred - gold)])


def _shown(text: str | None) -> str:
    return "" if text is None else text.strip().lower()[:40]


def paper_first_answer(text: str) -> str | None:
    """The content of the first <answer>...</answer> as the paper's filter finds it (unstripped)."""
    match = PAPER_ANSWER_RE.search(text)
    return None if match is None else match.group(1)


def paper_answer_labels(answer: str | None) -> frozenset[str]:
    """The paper's filter reads the answer as labels split on , 、 ，, stripped, case-sensitive."""
    if answer is None:
        return frozenset()
    return frozenset(part.strip() for part in PAPER_LABEL_SPLIT_RE.split(answer) if part.strip())


def paper_issues(text: str) -> list[str]:
    """The tag problems the paper's filter reports without blocking: a missing or empty <think>, a
    missing or empty first <answer>."""
    think, answer = PAPER_THINK_RE.search(text), PAPER_ANSWER_RE.search(text)
    return ([] if think and think.group(1).strip() else ["no_think"]) + \
        ([] if answer and answer.group(1).strip() else ["no_answer"])


# ---------------------------------------------------------------- the fast path
class _Plan(NamedTuple):
    """What verification needs from a VerifierConfig, prepared once per config."""

    strict: bool
    au_weight: float
    acc_weight: float
    format_weight: float
    clamp: float
    acc_without_label: float
    rules: _Rules
    min_think_words: int
    max_think_words: int


@lru_cache(maxsize=64)
def _plan(cfg: VerifierConfig) -> _Plan:
    return _Plan(cfg.policy == "strict", cfg.au_weight, cfg.acc_weight, cfg.format_weight, cfg.total_clamp,
                 cfg.acc_without_label, _rules(cfg.forbidden_words, cfg.hint_phrases), cfg.min_think_words,
                 cfg.max_think_words)


class _Gold(NamedTuple):
    """What verification needs from one sample's gold, prepared once: the attempts of a sample, and
    the rollouts of a GRPO group, share it."""

    aus: frozenset[str]  # normalised gold AUs present (NO_AU removed: rewards, strict)
    aus_known: bool  # the gold list stated the AUs (non-empty); empty = unknown, no AU check
    raw_aus: frozenset[str]  # as given, NO_AU removed (the paper's filter compares these sets)
    has_label: bool
    label: str  # normalised first gold label ("" without labels)
    paper_labels: frozenset[str]
    paper_labels_shown: str


def _gold(gold_aus: Iterable[str], gold_labels: Iterable[str], label_set: Iterable[str] | None) -> _Gold:
    return _gold_prepared(tuple(gold_aus), tuple(gold_labels), None if label_set is None else tuple(label_set))


@lru_cache(maxsize=4096)
def _gold_prepared(gold_aus: tuple[str, ...], gold_labels: tuple[str, ...],
                   label_set: tuple[str, ...] | None) -> _Gold:
    # Gold ids the vocabulary does not know stay as given: they can never be matched, so they show
    # up as au_missing instead of disappearing.
    aus = frozenset(au if au in _AU_ORDER else (normalize_au(au) or au) for au in gold_aus) - {NO_AU}
    paper_labels = frozenset(gold_labels)
    return _Gold(aus, bool(gold_aus), frozenset(gold_aus) - {NO_AU}, bool(gold_labels),
                 gold_label(gold_labels) if gold_labels else "", paper_labels, ",".join(sorted(paper_labels)))


def _read(text: str) -> tuple[str | None, str, str | None, set[str], list[str], bool]:
    """One completion -> (think or None, think.lower() or "", answer, canonical AU ids mentioned in
    the think text, unknown AU ids there in first-seen order, format_ok): parse_completion without
    the mentions outside <think>, each tag searched once."""
    start = text.find(THINK_OPEN)
    end = -1 if start == -1 else text.find(THINK_CLOSE, start + len(THINK_OPEN))
    fmt_ok = start == 0 and _format_tail_ok(text, end)
    if end == -1:
        return None, "", answer_text(text), set(), [], fmt_ok
    think = text[start + len(THINK_OPEN):end]
    lower = think.lower()
    known, unknown = _think_mentions(think, lower)
    return think, lower, answer_text(text), known, unknown, fmt_ok


def _answer_label(answer: str | None, gold: _Gold) -> str | None:
    return None if answer is None else normalize_label(answer)


def _scores(plan: _Plan, gold: _Gold, known: set[str], unknown: list[str], predicted: str | None,
            fmt_ok: bool) -> Scores:
    # r_au, with hallucinated ids as false positives (as in the raw regex)
    au = _au_reward(known.union(unknown) if unknown else known, gold.aus, gold.aus_known)
    acc = (1.0 if predicted == gold.label else 0.0) if gold.has_label else plan.acc_without_label
    fmt = 1.0 if fmt_ok else 0.0
    total = plan.au_weight * au + plan.acc_weight * acc + plan.format_weight * fmt
    return _frozen(Scores, au=au, acc=acc, format=fmt, total=max(-plan.clamp, min(plan.clamp, total)))


def _wording_reasons(think: str, lower: str, plan: _Plan) -> list[str]:
    """Forbidden words, hint echo and length: everything strict checks in the think text's wording."""
    rules = plan.rules
    spaced = _spaced(lower) if lower.isascii() else None
    reasons = [f"forbidden_word:{w}" for w in _forbidden_found(lower, spaced, rules)]
    reasons += [f"hint_echo:{p}" for p in rules.hint_phrases if p in lower]
    # split(None, k) stops after k splits, so only the bound that matters is counted.
    minimum = plan.min_think_words
    if minimum and len(think.split(None, minimum - 1)) < minimum:
        reasons.append("too_short")
    elif think_words_exceed(think, plan.max_think_words, spaced=spaced):
        reasons.append("too_long")
    return reasons


def _frozen(cls, **fields):
    """The cls(**fields) its __init__ would build, without the one object.__setattr__ call per field
    that a frozen dataclass pays (Verdict and Scores together: about a tenth of a verification).
    Right while cls is a plain frozen dataclass without __post_init__; a test checks."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def _verdict(sample_id: str, attempt: int, scores: Scores, accepted: bool, reasons: tuple[str, ...],
             predicted_aus: tuple[str, ...], predicted_label: str | None, policy: str) -> Verdict:
    return _frozen(Verdict, sample_id=sample_id, attempt=attempt, scores=scores, accepted=accepted, reasons=reasons,
                   predicted_aus=predicted_aus, predicted_label=predicted_label, policy=policy,
                   verifier_version=VERIFIER_VERSION)


def _verify(completion: str, gold: _Gold, plan: _Plan, sample_id: str, attempt: int) -> Verdict:
    think, lower, answer, known, unknown, fmt_ok = _read(completion)
    predicted = _answer_label(answer, gold)
    scores = _scores(plan, gold, known, unknown, predicted, fmt_ok)
    if not plan.strict:
        return _paper_verdict(completion, gold, scores, sample_id, attempt)
    reasons = [] if fmt_ok else ["format"]
    if think is None:
        reasons.append("no_think")
    if not answer:
        reasons.append("no_answer")
    if gold.aus_known and known != gold.aus:
        reasons += _au_set_reasons(known, gold.aus)
    if unknown:
        reasons += [f"au_unknown:{au}" for au in unknown]
    if answer and gold.has_label and predicted != gold.label:
        reasons.append(f"label_mismatch:{predicted or _shown(answer)}!={gold.label}")
    reasons += _wording_reasons(think or "", lower, plan)
    return _verdict(sample_id, attempt, scores, not reasons, tuple(reasons),
                    _sorted(known), predicted, "strict")


def _paper_verdict(completion: str, gold: _Gold, scores: Scores, sample_id: str, attempt: int) -> Verdict:
    """infer_emotion.py's rule: match_aus = True if not gold_aus else gold_aus == pred_aus, the same
    for labels; only those two block acceptance."""
    raw = raw_au_ids(completion)
    blocking = _au_set_reasons(raw, gold.raw_aus) if gold.aus_known else []
    answer = paper_first_answer(completion)
    labels = paper_answer_labels(answer)
    if gold.has_label and labels != gold.paper_labels:
        blocking.append(f"label_mismatch:{','.join(sorted(labels))}!={gold.paper_labels_shown}")
    return _verdict(sample_id, attempt, scores, not blocking, tuple(blocking + paper_issues(completion)),
                    _sorted(raw), None if answer is None else answer.strip(), "paper")


def verify(completion: str, gold_aus: Sequence[str], gold_labels: Sequence[str], cfg: VerifierConfig, *,
           sample_id: str = "", attempt: int = 0, label_set: Sequence[str] | None = None) -> Verdict:
    """Scores and acceptance of one completion under cfg.policy. `label_set` (the dataset's labels)
    restricts which answer words count as emotions."""
    return _verify(completion, _gold(gold_aus, gold_labels, label_set), _plan(cfg), sample_id, attempt)


def verify_batch(items: Iterable[VerifyItem | tuple], cfg: VerifierConfig) -> list[Verdict]:
    """verify() over many items (VerifyItem or tuples in its field order)."""
    plan = _plan(cfg)
    out: list[Verdict] = []
    for item in items:
        completion, gold_aus, gold_labels, sample_id, attempt, label_set = (
            item if isinstance(item, VerifyItem) else VerifyItem(*item))
        out.append(_verify(completion, _gold(gold_aus, gold_labels, label_set), plan, sample_id, attempt))
    return out
