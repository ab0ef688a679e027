"""The one verifier: parsing, rewards and acceptance for completions of the form
`<think>...</think><answer>...</answer>`. Filter actors, GRPO rewards, evaluation and `fea score`
all call this module, so a completion gets the same score everywhere.

Rewards follow the Facial-R1 public code, with one documented difference: AU mentions inside
<think> are normalised ("AU04", "au 4", "AU12B", "AU12L" -> "AU4"/"AU12") before the F1, and the
answer word is normalised ("Happy" -> "happiness") before the comparison, because the filter, the
reward and evaluation must agree on what a correct mention is. AU-like mentions whose number is not
one of the 30 AUs ("AU99", "AU3") stay in the predicted set as false positives, as in the paper's
raw regex. The paper's raw, case-sensitive matching is kept in `raw_au_ids` and drives the `paper`
acceptance policy.

Acceptance policies (cfg.policy):
- "paper": the public code's filter. The set of raw AU ids (`AU\\d+`, case-sensitive) over the whole
  output equals the gold set, and the set of comma-separated labels in the answer equals the gold
  label set (so an answer given for a sample without labels is a mismatch). Format problems are
  reported in `reasons` but do not block acceptance.
- "strict": normalised AUs inside <think> equal the gold set, no unknown AU ids there, the normalised
  answer equals the gold label (within the dataset's label set; for a sample without a label it
  must still name one of the eight emotions), the format passes, none of
  cfg.forbidden_words in the think text (contractions such as "isn't" and "cannot" count as "not"), no
  echo of the label hint (cfg.hint_phrases) in the think text, and the think length, in
  whitespace-separated words, within [min_think_words, max_think_words].

Reasons are stable machine-readable strings: "format", "no_think", "no_answer", "au_missing:AU4",
"au_extra:AU9", "au_unknown:AU99", "label_mismatch:sadness!=anger", "forbidden_word:not",
"hint_echo:ground truth", "too_short", "too_long".

Hot paths use str methods and precompiled regexes: this runs on every generated sample and every
GRPO rollout.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple

from engine.config import VerifierConfig
from engine.facs import AU_DESCRIPTIONS, EMOTIONS, normalize_au, normalize_emotion
from engine.types import Scores, Verdict

VERIFIER_VERSION = "1"

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
# The paper's format regex, kept as the reference that `format_ok` is tested against.
PAPER_FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
# The paper's AU regex: case-sensitive, no normalisation ("AU04" stays "AU04", "au4" is not found).
PAPER_AU_RE = re.compile(r"AU\d+")
# An AU mention in upper-cased free text: "AU" (a literal first, so the scan is fast) not glued to a
# preceding letter or digit unless that is a side mark ("LAU12"), an optional separator, the number,
# then an intensity letter and/or side mark when the token ends there, otherwise just the number
# ("AU4s" -> AU4). [^\W_] is a letter or digit.
_MENTION_RE = re.compile(
    r"AU(?:(?<![^\W_]AU)|(?<=[LR]AU)(?<![^\W_][LR]AU))[ _-]?0*(\d+)(?:[A-E]?[LR]?(?![^\W_])|(?!\d))")
_NUMBER_TO_AU = {au[2:]: au for au in AU_DESCRIPTIONS}
_AU_ORDER = {au: i for i, au in enumerate(AU_DESCRIPTIONS)}


class Parsed(NamedTuple):
    think: str | None  # text of the first <think>...</think>; None when missing
    answer: str | None  # stripped text of the last <answer>...</answer>; None when missing
    think_aus: tuple[str, ...]  # canonical AU ids mentioned inside <think>, sorted numerically
    all_aus: tuple[str, ...]  # canonical AU ids mentioned anywhere in the completion
    unknown_aus: tuple[str, ...]  # AU-like mentions inside <think> that are not one of the 30 AUs
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
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return False
    last_answer_close = len(text) - len(ANSWER_CLOSE)
    close = text.find(THINK_CLOSE, len(THINK_OPEN))
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
    known: set[str] = set()
    unknown: list[str] = []
    upper = text.upper()
    if "AU" not in upper:  # most text outside <think> has no mention: skip the regex
        return known, unknown
    for number in _MENTION_RE.findall(upper):
        au = _NUMBER_TO_AU.get(number)
        if au is not None:
            known.add(au)
        elif f"AU{number}" not in unknown:
            unknown.append(f"AU{number}")
    return known, unknown


def raw_au_ids(text: str, *, ignore_case: bool = False) -> frozenset[str]:
    """The paper's AU extraction: `AU\\d+` as matched, no normalisation. With ignore_case the text
    is upper-cased first (the paper's reward variant), otherwise matching is case-sensitive (the
    paper's synthesis filter)."""
    return frozenset(PAPER_AU_RE.findall(text.upper() if ignore_case else text))


def _sort_key(au: str) -> tuple[int, str]:
    digits = au[2:]
    return (int(digits), au) if digits.isdigit() else (1 << 30, au)


def _sorted(aus: Iterable[str]) -> tuple[str, ...]:
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
    """2*F1 - 1 over AU id sets; 0 without gold AUs; -1 when gold exists and nothing is predicted."""
    gold = set(gold_aus)
    if not gold:
        return 0.0
    pred = set(pred_aus)
    if not pred:
        return -1.0
    # F1 = 2PR/(P+R) = 2*TP/(|pred|+|gold|)
    return 4.0 * len(pred & gold) / (len(pred) + len(gold)) - 1.0


def r_acc(answer: str | None, gold_labels: Sequence[str], *, label_set: Sequence[str] | None = None,
          without_label: float = 0.5) -> float:
    """1 when the normalised last answer equals the gold label, else 0; `without_label` when the
    sample has no gold label (the paper's code returns 0.5)."""
    if not gold_labels:
        return without_label
    if answer is None:
        return 0.0
    return 1.0 if normalize_emotion(answer, label_set) == _gold_label(gold_labels) else 0.0


def r_format(text: str) -> float:
    return 1.0 if format_ok(text) else 0.0


def _gold_label(gold_labels: Sequence[str]) -> str:
    first = gold_labels[0]
    return normalize_emotion(first) or first.strip().lower()


def _gold_au_set(gold_aus: Iterable[str]) -> set[str]:
    # Gold ids the vocabulary does not know stay as given: they can never be matched, so they show
    # up as au_missing instead of disappearing.
    return {au if au in AU_DESCRIPTIONS else (normalize_au(au) or au) for au in gold_aus}


def _scores(parsed: Parsed, gold: set[str], gold_labels: Sequence[str], cfg: VerifierConfig,
            label_set: Sequence[str] | None) -> Scores:
    pred = set(parsed.think_aus)
    pred.update(parsed.unknown_aus)  # hallucinated ids are false positives, as in the raw regex
    au = r_au(pred, gold)
    acc = r_acc(parsed.answer, gold_labels, label_set=label_set, without_label=cfg.acc_without_label)
    fmt = 1.0 if parsed.format_ok else 0.0
    total = cfg.au_weight * au + cfg.acc_weight * acc + cfg.format_weight * fmt
    clamp = cfg.total_clamp
    return Scores(au=au, acc=acc, format=fmt, total=max(-clamp, min(clamp, total)))


def compute_scores(completion: str, gold_aus: Sequence[str], gold_labels: Sequence[str],
                   cfg: VerifierConfig, *, label_set: Sequence[str] | None = None) -> Scores:
    return _scores(parse_completion(completion), _gold_au_set(gold_aus), gold_labels, cfg, label_set)


# ---------------------------------------------------------------- acceptance
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
# ASCII text -> bytes where every non-word character is a space, so " word " finds whole words
# with exactly the boundaries of regex \b (word characters are [a-z0-9_] once lower-cased).
_NON_WORD_TO_SPACE = bytes(c if chr(c) in _WORD_CHARS else 32 for c in range(256))


class _Rules(NamedTuple):
    words: tuple[str, ...]  # lower-cased forbidden words, in configured order
    words_re: re.Pattern[str] | None  # the reference matcher (any text)
    padded_words: tuple[tuple[str, bytes], ...] | None  # fast ASCII matcher; None if a word is not [a-z0-9_]+
    counts_contractions: bool  # "not" is forbidden, so "isn't", "don’t", "cannot" are too
    hint_phrases: tuple[str, ...]


def _alternation(words: Iterable[str]) -> str:
    """Literal alternatives grouped by first character ("n(?:ot|o)"): the regex engine then tries
    fewer branches at each position."""
    by_first: dict[str, list[str]] = {}
    for word in sorted(set(words), key=len, reverse=True):
        by_first.setdefault(word[0], []).append(word[1:])
    groups = [re.escape(first) + ("(?:" + "|".join(map(re.escape, rests)) + ")" if rests != [""] else "")
              for first, rests in by_first.items()]
    return "|".join(groups)


@lru_cache(maxsize=64)
def _rules(forbidden_words: tuple[str, ...], hint_phrases: tuple[str, ...]) -> _Rules:
    words = tuple(dict.fromkeys(w.strip().lower() for w in forbidden_words if w.strip()))
    counts_contractions = "not" in words
    alternatives = list(words) + (["n't", "n’t", "cannot"] if counts_contractions else [])
    words_re = re.compile(f"(?:{_alternation(alternatives)})\\b") if alternatives else None
    plain = all(set(w) <= _WORD_CHARS for w in words)
    padded = tuple((w, f" {w} ".encode()) for w in words) if plain else None
    return _Rules(words, words_re, padded, counts_contractions,
                  tuple(p.lower() for p in hint_phrases if p.strip()))


def _forbidden_by_regex(lower: str, rules: _Rules) -> set[str]:
    found: set[str] = set()
    if rules.words_re is None:
        return found
    for match in rules.words_re.finditer(lower):
        word, start = match.group(), match.start()
        if word in ("n't", "n’t"):
            found.add("not")  # a contraction is glued to its verb by design
        elif start and (lower[start - 1].isalnum() or lower[start - 1] == "_"):
            continue  # the tail of a longer word ("piano", "knot")
        else:
            found.add("not" if word == "cannot" and rules.counts_contractions and word not in rules.words
                      else word)
    return found


def _forbidden_ascii(lower: str, spaced: bytes, rules: _Rules) -> set[str]:
    assert rules.padded_words is not None
    found = {word for word, padded in rules.padded_words if padded in spaced}
    if rules.counts_contractions:
        if b" cannot " in spaced:
            found.add("cannot" if "cannot" in rules.words else "not")
        if "not" not in found and "n't" in lower and "not" in _forbidden_by_regex(lower, rules):
            found.add("not")
    return found


def _spaced(lower: str) -> bytes:
    return b" " + lower.encode("ascii").translate(_NON_WORD_TO_SPACE) + b" "


def _forbidden_found(lower: str, spaced: bytes | None, rules: _Rules) -> list[str]:
    found = (_forbidden_ascii(lower, spaced, rules) if spaced is not None and rules.padded_words is not None
             else _forbidden_by_regex(lower, rules))
    return [w for w in rules.words if w in found] + sorted(found.difference(rules.words))


def forbidden_words_in(think: str, cfg: VerifierConfig) -> list[str]:
    """Configured forbidden words found as whole words in `think` (case-insensitive), in configured
    order; contractions ("isn't") and "cannot" are reported as "not" when "not" is forbidden."""
    lower = think.lower()
    return _forbidden_found(lower, _spaced(lower) if lower.isascii() else None,
                            _rules(cfg.forbidden_words, cfg.hint_phrases))


def think_words_exceed(think: str, limit: int, *, spaced: bytes | None = None) -> bool:
    """len(think.split()) > limit, splitting only when a cheap upper bound cannot decide it."""
    if spaced is not None and spaced.count(b" ") - 1 <= limit:  # words <= separators + 1
        return False
    if (len(think) + 1) // 2 <= limit:  # each word takes a character and a separator
        return False
    return len(think.split(None, limit)) > limit


def _think_length_reason(think: str, cfg: VerifierConfig, spaced: bytes | None = None) -> str | None:
    # split(None, k) stops after k splits, so only the bound that matters is counted.
    if cfg.min_think_words and len(think.split(None, cfg.min_think_words - 1)) < cfg.min_think_words:
        return "too_short"
    if think_words_exceed(think, cfg.max_think_words, spaced=spaced):
        return "too_long"
    return None


def _au_set_reasons(pred: Iterable[str], gold: Iterable[str]) -> list[str]:
    pred, gold = set(pred), set(gold)
    if pred == gold:
        return []
    return ([f"au_missing:{au}" for au in _sorted(gold - pred)]
            + [f"au_extra:{au}" for au in _sorted(pred - gold)])


def _shown(text: str | None) -> str:
    return "" if text is None else text.strip().lower()[:40]


def _strict(parsed: Parsed, gold: set[str], gold_labels: Sequence[str], cfg: VerifierConfig,
            label_set: Sequence[str] | None) -> tuple[list[str], str | None]:
    reasons: list[str] = []
    if not parsed.format_ok:
        reasons.append("format")
    if parsed.think is None:
        reasons.append("no_think")
    if not parsed.answer:
        reasons.append("no_answer")
    reasons += _au_set_reasons(parsed.think_aus, gold)
    reasons += [f"au_unknown:{au}" for au in parsed.unknown_aus]
    if gold_labels:
        predicted = None if parsed.answer is None else normalize_emotion(parsed.answer, label_set)
        expected = _gold_label(gold_labels)
        if parsed.answer and predicted != expected:
            reasons.append(f"label_mismatch:{predicted or _shown(parsed.answer)}!={expected}")
    else:  # no gold label (AU-only data): the answer must still name an emotion
        predicted = None if parsed.answer is None else normalize_emotion(parsed.answer, label_set or EMOTIONS)
        if parsed.answer and predicted is None:
            reasons.append(f"label_mismatch:{_shown(parsed.answer)}!=<emotion>")
    reasons += _think_reasons(parsed.think or "", cfg)
    return reasons, predicted


def _think_reasons(think: str, cfg: VerifierConfig) -> list[str]:
    """Forbidden words, hint echo and length: everything strict checks in the think text's wording."""
    rules = _rules(cfg.forbidden_words, cfg.hint_phrases)
    lower = think.lower()
    spaced = _spaced(lower) if lower.isascii() else None
    reasons = [f"forbidden_word:{w}" for w in _forbidden_found(lower, spaced, rules)]
    reasons += [f"hint_echo:{p}" for p in rules.hint_phrases if p in lower]
    length_reason = _think_length_reason(think, cfg, spaced)
    if length_reason:
        reasons.append(length_reason)
    return reasons


def paper_answer_labels(answer: str | None) -> frozenset[str]:
    """The paper's filter reads the answer as comma-separated labels, stripped, case-sensitive."""
    if answer is None:
        return frozenset()
    return frozenset(part.strip() for part in answer.split(",") if part.strip())


def _paper(parsed: Parsed, completion: str, gold_aus: Sequence[str],
           gold_labels: Sequence[str]) -> tuple[list[str], list[str], tuple[str, ...]]:
    """-> (blocking reasons, reported-only reasons, raw predicted AU ids)."""
    raw = raw_au_ids(completion)
    blocking = _au_set_reasons(raw, gold_aus)
    labels = paper_answer_labels(parsed.answer)
    gold_label_set = frozenset(gold_labels)
    if labels != gold_label_set:
        blocking.append(f"label_mismatch:{','.join(sorted(labels))}!={','.join(sorted(gold_label_set))}")
    notes = ([] if parsed.format_ok else ["format"]) + ([] if parsed.think is not None else ["no_think"]) \
        + ([] if parsed.answer else ["no_answer"])
    return blocking, notes, _sorted(raw)


def verify(completion: str, gold_aus: Sequence[str], gold_labels: Sequence[str], cfg: VerifierConfig, *,
           sample_id: str = "", attempt: int = 0, label_set: Sequence[str] | None = None) -> Verdict:
    """Scores and acceptance of one completion under cfg.policy. `label_set` (the dataset's labels)
    restricts which answer words count as emotions."""
    parsed = parse_completion(completion)
    gold = _gold_au_set(gold_aus)
    scores = _scores(parsed, gold, gold_labels, cfg, label_set)
    if cfg.policy == "paper":
        blocking, notes, predicted_aus = _paper(parsed, completion, gold_aus, gold_labels)
        return Verdict(sample_id, attempt, scores, not blocking, tuple(blocking + notes), predicted_aus,
                       parsed.answer, "paper", VERIFIER_VERSION)
    reasons, predicted = _strict(parsed, gold, gold_labels, cfg, label_set)
    return Verdict(sample_id, attempt, scores, not reasons, tuple(reasons), parsed.think_aus, predicted,
                   "strict", VERIFIER_VERSION)


def verify_batch(items: Iterable[VerifyItem | tuple], cfg: VerifierConfig) -> list[Verdict]:
    """verify() over many items (VerifyItem or tuples in its field order)."""
    out: list[Verdict] = []
    for item in items:
        it = item if isinstance(item, VerifyItem) else VerifyItem(*item)
        out.append(verify(it.completion, it.gold_aus, it.gold_labels, cfg, sample_id=it.sample_id,
                          attempt=it.attempt, label_set=it.label_set))
    return out
