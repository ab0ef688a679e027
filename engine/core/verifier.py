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

tests/unit/test_verifier_reference.py checks every verdict against a reference written
independently with plain string operations, on generated completions, golds and configs.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from engine.core.config import VerifierConfig
from engine.core.facs import FACS_IDS, NO_AU, normalize_au, normalize_label
from engine.core.types import Scores, Verdict

VERIFIER_VERSION = "1"

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
# The paper's regexes. The format one is the rule `format_ok` follows (a property test checks).
PAPER_FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
PAPER_AU_RE = re.compile(r"AU\d+")  # case-sensitive, unnormalised: "AU04" stays "AU04", "au4" is no id
PAPER_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)  # the filter reads the first of each
PAPER_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
PAPER_LABEL_SPLIT_RE = re.compile(r"[,\u3001\uff0c]")  # ASCII, ideographic and full-width commas

# An AU mention in upper-cased text. [^\W_] is a letter or digit. "AU" comes first in the pattern
# so the regex engine can skip ahead to it; the lookbehinds then say what may precede it.
_MENTION_RE = re.compile(r"""
    AU
    (?: (?<! [^\W_]AU )              # not glued to a preceding letter or digit ("BEAU 4", "3AU5"),
      | (?<= [LR]AU ) (?<! [^\W_][LR]AU )  # unless that is a side mark, itself not glued ("LAU12")
    )
    [ _-]?                           # one optional separator ("AU 4", "AU-4", "AU_4")
    0* (\d+)                         # the number, leading zeros dropped; any suffix ("12B") is ignored
""", re.VERBOSE)
_AU_BY_NUMBER = {au[2:]: au for au in FACS_IDS}
_CONTRACTIONS = ("n't", "n\u2019t")  # glued to their verb ("isn't", "don’t"): they count as "not"


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


# ---------------------------------------------------------------- reading a completion
def format_ok(text: str) -> bool:
    """PAPER_FORMAT_RE.fullmatch(text), read as: the text starts with <think> and ends with
    </answer>, and some </think> is followed by optional whitespace and an <answer> that opens
    before that final </answer>. (String search, because the regex backtracks over long texts.)"""
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return False
    last_close = len(text) - len(ANSWER_CLOSE)
    close = text.find(THINK_CLOSE, len(THINK_OPEN))
    while close != -1:
        rest = text[close + len(THINK_CLOSE):]
        answer = len(text) - len(rest.lstrip())  # \s* is str.isspace, which lstrip() skips
        if text.startswith(ANSWER_OPEN, answer) and answer + len(ANSWER_OPEN) <= last_close:
            return True
        close = text.find(THINK_CLOSE, close + 1)
    return False


def think_text(text: str) -> str | None:
    """The content of the first <think>...</think>."""
    start = text.find(THINK_OPEN)
    if start == -1:
        return None
    end = text.find(THINK_CLOSE, start + len(THINK_OPEN))
    return None if end == -1 else text[start + len(THINK_OPEN):end]


def answer_text(text: str) -> str | None:
    """The stripped content of the last complete <answer>...</answer>."""
    end = text.rfind(ANSWER_CLOSE)
    start = -1 if end == -1 else text.rfind(ANSWER_OPEN, 0, end)
    return None if start == -1 else text[start + len(ANSWER_OPEN):end].strip()


def au_mentions(text: str) -> tuple[set[str], list[str]]:
    """AU mentions in free text -> (canonical ids, unknown ids as "AU<n>" in first-seen order).

    Case-insensitive; "AU04", "au 4", "AU-4", "AU12B", "AU12L" and a side prefix ("LAU12") count.
    A mention glued to a preceding letter or digit ("BEAU 4", "XAU6") does not.
    """
    known: set[str] = set()
    unknown: list[str] = []
    for number in dict.fromkeys(_MENTION_RE.findall(text.upper())):  # each number once, first-seen order
        au = _AU_BY_NUMBER.get(number)
        if au is not None:
            known.add(au)
        else:
            unknown.append(f"AU{number}")
    return known, unknown


def raw_au_ids(text: str, *, ignore_case: bool = False) -> frozenset[str]:
    """The paper's AU extraction: `AU\\d+` as matched, no normalisation. With ignore_case the text
    is upper-cased first (the paper's reward variant), otherwise matching is case-sensitive (the
    paper's synthesis filter)."""
    return frozenset(PAPER_AU_RE.findall(text.upper() if ignore_case else text))


def sorted_aus(aus: Iterable[str]) -> tuple[str, ...]:
    """AU ids in numeric order (AU2 before AU10); ids without a number last."""
    def key(au: str) -> tuple[int, str]:
        return (int(au[2:]), au) if au[2:].isdecimal() else (1 << 30, au)  # int() reads any decimal digit
    return tuple(sorted(aus, key=key))


def parse_completion(text: str) -> Parsed:
    think = think_text(text)
    think_known, unknown = au_mentions(think) if think is not None else (set(), [])
    return Parsed(think, answer_text(text), sorted_aus(think_known), sorted_aus(au_mentions(text)[0]),
                  tuple(unknown), format_ok(text))


# ---------------------------------------------------------------- rewards
def r_au(pred_aus: Iterable[str], gold_aus: Iterable[str]) -> float:
    """2*F1 - 1 over AU id sets; 0 when the gold AUs are unknown (empty list); -1 when gold exists
    and nothing is predicted; for gold [NO_AU]: 1 when nothing is predicted, else -1."""
    pred, gold_list = set(pred_aus), set(gold_aus)
    gold = gold_list - {NO_AU}
    if not gold_list:
        return 0.0
    if not gold:
        return -1.0 if pred else 1.0
    if not pred:
        return -1.0
    f1 = 2 * len(pred & gold) / (len(pred) + len(gold))  # = 2PR/(P+R)
    return 2 * f1 - 1


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


def canonical_gold_aus(gold_aus: Iterable[str]) -> set[str]:
    """Gold ids as canonical ids (NO_AU kept). An id the vocabulary does not know stays as given: it
    can never be matched, so it shows up as au_missing instead of disappearing."""
    return {normalize_au(au) or au for au in gold_aus}


def _scores(parsed: Parsed, gold_aus: set[str], gold_labels: Sequence[str], cfg: VerifierConfig) -> Scores:
    """The weighted, clamped rewards; `gold_aus` as canonical_gold_aus gives them."""
    # hallucinated ids count as false positives, as in the paper's raw regex
    au = r_au((*parsed.think_aus, *parsed.unknown_aus), gold_aus)
    acc = r_acc(parsed.answer, gold_labels, without_label=cfg.acc_without_label)
    fmt = 1.0 if parsed.format_ok else 0.0
    total = cfg.au_weight * au + cfg.acc_weight * acc + cfg.format_weight * fmt
    return Scores(au=au, acc=acc, format=fmt, total=max(-cfg.total_clamp, min(cfg.total_clamp, total)))


def compute_scores(completion: str, gold_aus: Sequence[str], gold_labels: Sequence[str],
                   cfg: VerifierConfig, *, label_set: Sequence[str] | None = None) -> Scores:
    return _scores(parse_completion(completion), canonical_gold_aus(gold_aus), gold_labels, cfg)


# ---------------------------------------------------------------- wording (strict)
def _is_word_char(text: str, i: int) -> bool:
    """Whether text[i] exists and is what regex calls a word character (\\w)."""
    return 0 <= i < len(text) and (text[i].isalnum() or text[i] == "_")


def _has_whole_word(text: str, word: str) -> bool:
    """`word` occurs in `text` not as part of a longer word ("no" is not in "nose" or "piano")."""
    start = text.find(word)
    while start != -1:
        if not _is_word_char(text, start - 1) and not _is_word_char(text, start + len(word)):
            return True
        start = text.find(word, start + 1)
    return False


def _has_contraction(lower: str) -> bool:
    """A negative contraction ending a word ("isn't", "don’t")."""
    for contraction in _CONTRACTIONS:
        end = lower.find(contraction)
        while end != -1:
            if not _is_word_char(lower, end + len(contraction)):
                return True
            end = lower.find(contraction, end + 1)
    return False


def forbidden_words_in(think: str, cfg: VerifierConfig) -> list[str]:
    """Configured forbidden words found as whole words in `think` (case-insensitive), in configured
    order; contractions ("isn't") and "cannot" are reported as "not" when "not" is forbidden
    ("cannot" is reported as itself when it is configured itself)."""
    lower = think.lower()
    words = list(dict.fromkeys(w.strip().lower() for w in cfg.forbidden_words if w.strip()))
    found = {w for w in words if _has_whole_word(lower, w)}
    if "not" in words and "not" not in found and (
            _has_contraction(lower) or ("cannot" not in words and _has_whole_word(lower, "cannot"))):
        found.add("not")
    return [w for w in words if w in found]


def _wording_reasons(think: str, cfg: VerifierConfig) -> list[str]:
    """Forbidden words, hint echo and length: what strict checks in the think text's wording."""
    lower = think.lower()
    reasons = [f"forbidden_word:{w}" for w in forbidden_words_in(think, cfg)]
    reasons += [f"hint_echo:{p.lower()}" for p in cfg.hint_phrases if p.strip() and p.lower() in lower]
    words = len(think.split())
    if words < cfg.min_think_words:
        reasons.append("too_short")
    elif words > cfg.max_think_words:
        reasons.append("too_long")
    return reasons


# ---------------------------------------------------------------- acceptance
def _au_set_reasons(pred: Iterable[str], gold: Iterable[str]) -> list[str]:
    pred, gold = set(pred), set(gold)
    return ([f"au_missing:{au}" for au in sorted_aus(gold - pred)]
            + [f"au_extra:{au}" for au in sorted_aus(pred - gold)])


def _strict(parsed: Parsed, gold_aus: set[str], gold_labels: Sequence[str],
            cfg: VerifierConfig) -> tuple[list[str], tuple[str, ...], str | None]:
    """(reasons, predicted AUs, predicted label) under the strict policy; no reasons = accepted.
    `gold_aus` as canonical_gold_aus gives them (empty: unknown)."""
    answer = parsed.answer
    predicted = None if answer is None else normalize_label(answer)
    reasons = [] if parsed.format_ok else ["format"]
    if parsed.think is None:
        reasons.append("no_think")
    if not answer:
        reasons.append("no_answer")
    if gold_aus:
        reasons += _au_set_reasons(parsed.think_aus, gold_aus - {NO_AU})
    reasons += [f"au_unknown:{au}" for au in parsed.unknown_aus]
    if answer and gold_labels and predicted != gold_label(gold_labels):
        reasons.append(f"label_mismatch:{predicted or answer.lower()[:40]}!={gold_label(gold_labels)}")
    reasons += _wording_reasons(parsed.think or "", cfg)
    return reasons, parsed.think_aus, predicted


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


def _paper(completion: str, gold_aus: Sequence[str],
           gold_labels: Sequence[str]) -> tuple[list[str], list[str], tuple[str, ...], str | None]:
    """infer_emotion.py's rule: match_aus = True if not gold_aus else gold_aus == pred_aus, the same
    for labels. -> (blocking reasons, reported issues, predicted AUs, predicted label)."""
    raw = raw_au_ids(completion)
    blocking = _au_set_reasons(raw, set(gold_aus) - {NO_AU}) if gold_aus else []
    answer = paper_first_answer(completion)
    labels, gold = paper_answer_labels(answer), set(gold_labels)
    if gold and labels != gold:
        blocking.append(f"label_mismatch:{','.join(sorted(labels))}!={','.join(sorted(gold))}")
    return blocking, paper_issues(completion), sorted_aus(raw), None if answer is None else answer.strip()


def verify(completion: str, gold_aus: Sequence[str], gold_labels: Sequence[str], cfg: VerifierConfig, *,
           sample_id: str = "", attempt: int = 0, label_set: Sequence[str] | None = None) -> Verdict:
    """Scores and acceptance of one completion under cfg.policy. `label_set` (the dataset's labels)
    is accepted for compatibility: labels are open, so it changes nothing."""
    parsed, canonical = parse_completion(completion), canonical_gold_aus(gold_aus)
    scores = _scores(parsed, canonical, gold_labels, cfg)
    if cfg.policy == "paper":
        blocking, issues, predicted_aus, predicted_label = _paper(completion, gold_aus, gold_labels)
        accepted, reasons = not blocking, blocking + issues
    else:
        reasons, predicted_aus, predicted_label = _strict(parsed, canonical, gold_labels, cfg)
        accepted = not reasons
    return Verdict(sample_id=sample_id, attempt=attempt, scores=scores, accepted=accepted, reasons=tuple(reasons),
                   predicted_aus=predicted_aus, predicted_label=predicted_label, policy=cfg.policy,
                   verifier_version=VERIFIER_VERSION)


def verify_batch(items: Iterable[VerifyItem | tuple], cfg: VerifierConfig) -> list[Verdict]:
    """verify() over many items (VerifyItem or tuples in its field order)."""
    out = []
    for item in items:
        completion, gold_aus, gold_labels, sample_id, attempt, label_set = (
            item if isinstance(item, VerifyItem) else VerifyItem(*item))
        out.append(verify(completion, gold_aus, gold_labels, cfg, sample_id=sample_id, attempt=attempt,
                          label_set=label_set))
    return out
