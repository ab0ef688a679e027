"""The verifier's fast path against a plain reference.

`verify`, `verify_batch` and `compute_scores` locate tags once, scan one lower-cased copy of the
think text, match forbidden words in a space-padded byte copy and cache per-config and per-gold
preparation. The reference below shares none of that code: it follows the rules as documented,
step by step: the paper's format regex, a character-by-character reading of the AU mention rule over
upper-cased text, one word-boundary regex per forbidden word, `str.split` for the length. Only the
vocabularies (FACS ids, label normalisation) come from the engine. Hypothesis checks they agree on
generated completions, golds and configs, so the speed-ups are checked, not assumed.
"""
from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.config import VerifierConfig
from engine.core.facs import DATASET_LABELS, EMOTIONS, FACS_IDS, NO_AU, normalize_au, normalize_label
from engine.core.types import Scores, Verdict
from engine.core.verifier import (
    VERIFIER_VERSION,
    VerifyItem,
    _forbidden_ascii,
    _rules,
    _spaced,
    _think_mentions,
    au_mentions,
    compute_scores,
    verify,
    verify_batch,
)

# ---------------------------------------------------------------- the reference
THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)  # the first complete think block
ANSWER_RE = re.compile(r".*<answer>(.*)</answer>", re.DOTALL)  # the last complete answer block
FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)  # the paper's format_reward


def _glued(text: str, i: int) -> bool:
    """Whether position i holds a letter or digit (what re calls a word character, less "_")."""
    return i >= 0 and text[i].isalnum()


def ref_mention_numbers(upper: str) -> list[str]:
    """The documented rule, read character by character: "AU" not glued to a preceding letter or digit
    (a side mark "L"/"R" may precede it, itself not glued), one optional separator (space, "_", "-"),
    then decimal digits; the number drops its leading zeros. Any suffix ("B", "L", "s") is ignored."""
    numbers = []
    for i in range(len(upper) - 1):
        if upper[i:i + 2] != "AU":
            continue
        side_mark = i >= 1 and upper[i - 1] in "LR" and not _glued(upper, i - 2)
        if _glued(upper, i - 1) and not side_mark:
            continue
        j = i + 2
        if j < len(upper) and upper[j] in " _-":
            j += 1
        k = j
        while k < len(upper) and upper[k].isdecimal():
            k += 1
        if k > j:
            numbers.append(upper[j:k].lstrip("0") or "0")
    return numbers


def ref_mentions(text: str) -> tuple[set[str], list[str]]:
    known, unknown = set(), []
    for number in ref_mention_numbers(text.upper()):
        au = f"AU{number}"
        if au in FACS_IDS:
            known.add(au)
        elif au not in unknown:
            unknown.append(au)
    return known, unknown


def ref_forbidden(think: str, forbidden_words) -> list[str]:
    lower = think.lower()
    words = list(dict.fromkeys(w.strip().lower() for w in forbidden_words if w.strip()))
    found = {w for w in words if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", lower)}
    # contractions count as "not"; so does "cannot" unless it is configured itself
    contraction = r"n['’]t(?!\w)" + ("" if "cannot" in words else r"|(?<!\w)cannot(?!\w)")
    if "not" in words and re.search(contraction, lower):
        found.add("not")
    return [w for w in words if w in found]


def ref_sorted(aus) -> tuple[str, ...]:
    return tuple(sorted(aus, key=lambda au: (int(au[2:]), au) if au[2:].isdigit() else (1 << 30, au)))


def ref_au_reasons(pred, gold) -> list[str]:
    pred, gold = set(pred), set(gold)
    return [f"au_missing:{au}" for au in ref_sorted(gold - pred)] + [f"au_extra:{au}" for au in ref_sorted(pred - gold)]


def ref_verdict(completion, gold_aus, gold_labels, cfg, label_set=None, sample_id="", attempt=0) -> Verdict:
    think_match, answer_match = THINK_RE.search(completion), ANSWER_RE.match(completion)
    think = think_match.group(1) if think_match else None
    answer = answer_match.group(1).strip() if answer_match else None
    format_ok = FORMAT_RE.fullmatch(completion) is not None
    known, unknown = ref_mentions(think) if think is not None else (set(), [])
    gold = {au if au in FACS_IDS else (normalize_au(au) or au) for au in gold_aus} - {NO_AU}
    expected = (normalize_label(gold_labels[0]) or gold_labels[0].strip().lower()) if gold_labels else None

    pred = known | set(unknown)
    if not gold_aus:  # unknown AUs
        au = 0.0
    elif not gold:  # the explicit "no AU" form
        au = -1.0 if pred else 1.0
    else:
        au = -1.0 if not pred else 2 * (2 * len(pred & gold) / (len(pred) + len(gold))) - 1
    if not gold_labels:
        acc = cfg.acc_without_label
    else:
        acc = float(answer is not None and normalize_label(answer) == expected)
    fmt = float(format_ok)
    total = cfg.au_weight * au + cfg.acc_weight * acc + cfg.format_weight * fmt
    scores = Scores(au, acc, fmt, max(-cfg.total_clamp, min(cfg.total_clamp, total)))

    if cfg.policy == "paper":
        raw = set(re.findall(r"AU\d+", completion))
        blocking = ref_au_reasons(raw, set(gold_aus) - {NO_AU}) if gold_aus else []
        first = re.search(r"<answer>(.*?)</answer>", completion, re.DOTALL)
        first_answer = first.group(1) if first else None
        labels = {part.strip() for part in re.split(r"[,、，]", first_answer or "") if part.strip()}
        if gold_labels and labels != set(gold_labels):
            blocking.append(f"label_mismatch:{','.join(sorted(labels))}!={','.join(sorted(set(gold_labels)))}")
        notes = ["no_think"] * (not (think or "").strip()) + ["no_answer"] * (not (first_answer or "").strip())
        return Verdict(sample_id, attempt, scores, not blocking, tuple(blocking + notes), ref_sorted(raw),
                       None if first_answer is None else first_answer.strip(), "paper", VERIFIER_VERSION)

    reasons = ["format"] * (not format_ok) + ["no_think"] * (think is None) + ["no_answer"] * (not answer)
    reasons += (ref_au_reasons(known, gold) if gold_aus else []) + [f"au_unknown:{au}" for au in unknown]
    shown = "" if answer is None else answer.strip().lower()[:40]
    predicted = None if answer is None else normalize_label(answer)
    if gold_labels and answer and predicted != expected:
        reasons.append(f"label_mismatch:{predicted or shown}!={expected}")
    text = think or ""
    reasons += [f"forbidden_word:{w}" for w in ref_forbidden(text, cfg.forbidden_words)]
    reasons += [f"hint_echo:{p.lower()}" for p in cfg.hint_phrases if p.strip() and p.lower() in text.lower()]
    words = len(text.split())
    if words < cfg.min_think_words:
        reasons.append("too_short")
    elif words > cfg.max_think_words:
        reasons.append("too_long")
    return Verdict(sample_id, attempt, scores, not reasons, tuple(reasons), ref_sorted(known), predicted, "strict",
                   VERIFIER_VERSION)


# ---------------------------------------------------------------- generated inputs
_MENTIONS = ["AU4", "(AU12)", "au 4", "AU04", "AU-6", "AU_1", "Au15L", "AU12B", "LAU14", "rau2", "AU99", "AU0",
             "AU3s", "AU1/AU2+AU26", "beau 4", "XAU6", "3AU5", "AU", "AU ", "au25e", "AU17LB", "AU٤"]
_WORDS = ["no", "not", "NOT", "o'clock", "isn't", "don’t", "cannot", "Cannot", "without", "maybe", "nose", "knot",
          "piano", "nothing", "cannonball", "no_", "_not", "not's", "n't", "(no)", "never", "slightly", "perhaps"]
_HINTS = ["ground truth", "Ground Truth", "as required", "has required", "must identify", "given labels",
          "the final answer must"]
_TEXT = ["the", "brows", "are", "raised", "lip", "corners", "sad", "happy", "anger", ",", ".", ";", "-", "'",
         "ß", "é", "İ", "\u212a", "ſ", "\u2003", "\x1c", "\t", "\n", "  ", "7", "_", "ı"]
_TAGS = ["<think>", "</think>", "<answer>", "</answer>", "\n"]
_ANSWERS = ["sadness", "Sad", " happiness ", "fear, sadness", "sadness, fear", "contempt", "AU4, AU7", "", "a sad face",
            "surprised!", "Neutral", "joy", "Confusion", "fear，sadness", "fear; sadness"]


def _piece() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(_MENTIONS), st.sampled_from(_WORDS), st.sampled_from(_HINTS),
                     st.sampled_from(_TEXT), st.sampled_from(_TAGS))


_separators = st.sampled_from([" ", "", "-"])  # "" glues pieces: mentions next to letters, tags inside words
_free_text = st.builds(str.join, _separators, st.lists(_piece(), max_size=30))
_think_piece = st.one_of(st.sampled_from(_MENTIONS), st.sampled_from(["AU99", "AU0", "au3s", "AU12"]),
                         st.sampled_from(_WORDS), st.sampled_from(_HINTS), st.sampled_from(_TEXT), st.just("word"))
_think_text = st.builds(str.join, _separators, st.lists(_think_piece, max_size=40))


@st.composite
def completions(draw) -> str:
    """Mostly well-formed completions (so the later checks are reached), and free text."""
    if draw(st.integers(0, 4)) == 0:
        return draw(_free_text)
    think = draw(_think_text)
    answer = draw(st.sampled_from(_ANSWERS))
    tail = draw(st.sampled_from(["", " AU9", "<answer>fear</answer>", " trailing", "\n"]))
    head = draw(st.sampled_from(["", " ", "AU1 "]))
    between = draw(st.sampled_from(["\n", "", " x ", "</think>"]))
    close = draw(st.sampled_from(["</answer>", "", "</answer>"]))
    return f"{head}<think>{think}</think>{between}<answer>{answer}{close}{tail}"


_gold_aus = st.one_of(
    st.lists(st.sampled_from(["AU1", "AU4", "AU6", "AU12", "AU15", "AU04", "AU99", "au 12", "AU2", "AU33"]), max_size=4),
    st.just([NO_AU]))
_gold_labels = st.sampled_from([(), ("sadness",), ("Sad",), ("happiness",), ("fear", "sadness"), ("contempt",),
                                ("confusion",)])
_label_sets = st.sampled_from([None, (), DATASET_LABELS["RAF-DB"], list(EMOTIONS)])
_configs = st.builds(
    VerifierConfig,
    policy=st.sampled_from(["strict", "paper"]),
    forbidden_words=st.sampled_from([("no", "not", "without", "maybe"), ("slightly", "perhaps"), (),
                                     ("maybe", "not", "cannot"), ("never", "no"), ("no", "o'clock"), ("NO ", " no")]),
    hint_phrases=st.sampled_from([VerifierConfig().hint_phrases, (), ("Ground Truth", " ")]),
    min_think_words=st.sampled_from([0, 1, 8]),
    max_think_words=st.sampled_from([8, 20, 400]),
    acc_without_label=st.sampled_from([0.5, 0.0]),
    au_weight=st.sampled_from([1.0, 3.0]),
    total_clamp=st.sampled_from([10.0, 1.5]),
)


# ---------------------------------------------------------------- properties
@settings(max_examples=600)
@given(completions(), _gold_aus, _gold_labels, _label_sets, _configs)
def test_verify_equals_the_reference(completion, gold_aus, gold_labels, label_set, cfg):
    expected = ref_verdict(completion, gold_aus, gold_labels, cfg, label_set, "s", 3)
    assert verify(completion, gold_aus, gold_labels, cfg, sample_id="s", attempt=3, label_set=label_set) == expected
    assert compute_scores(completion, gold_aus, gold_labels, cfg, label_set=label_set) == expected.scores


@settings(max_examples=100)
@given(st.lists(st.tuples(completions(), st.integers(0, 2)), min_size=1, max_size=8), _gold_aus, _gold_labels,
       _label_sets, _configs)
def test_verify_batch_equals_the_reference_with_shared_golds(attempts, gold_aus, gold_labels, label_set, cfg):
    # several attempts of one sample share its gold objects (as in synthesis), with a second sample between
    other = (["AU9"], ["disgust"])
    items = []
    for i, (text, form) in enumerate(attempts):
        if form == 0:
            items.append(VerifyItem(text, gold_aus, gold_labels, f"a{i}", i, label_set))
        elif form == 1:
            items.append((text, tuple(gold_aus), list(gold_labels), f"a{i}", i, label_set))
        else:
            items.append((text, *other))
    expected = [ref_verdict(text, gold_aus, gold_labels, cfg, label_set, f"a{i}", i) if form != 2
                else ref_verdict(text, *other, cfg)
                for i, (text, form) in enumerate(attempts)]
    assert verify_batch(items, cfg) == expected


@settings(max_examples=300)
@given(_free_text)
def test_think_mentions_from_lower_case_equal_the_documented_pattern(text):
    expected = ref_mentions(text)
    assert _think_mentions(text, text.lower()) == expected
    assert au_mentions(text) == expected


_plain_words = st.one_of(
    st.just(list(VerifierConfig().forbidden_words)),
    st.permutations(["no", "not", "without", "maybe", "cannot"]),
    st.lists(st.sampled_from(["no", "not", "without", "maybe", "cannot", "never", "slightly", "a", "nose", "x_1",
                              "perhaps"]), max_size=4))


@settings(max_examples=600)
@given(st.lists(st.sampled_from(_WORDS + ["a", "x_1", "never", "slightly", "-", "’", "'"]), max_size=12),
       st.sampled_from([" ", "", "-", "\n", ".", "_"]), _plain_words)
def test_forbidden_scan_of_the_spaced_copy_equals_a_regex_per_word(words, sep, forbidden):
    think = sep.join(words)
    lower = think.lower()
    rules = _rules(tuple(forbidden), ())
    expected = ref_forbidden(think, forbidden)
    if lower.isascii() and rules.spaced_re is not None:
        assert _forbidden_ascii(lower, _spaced(lower), rules) == expected
    cfg = VerifierConfig(forbidden_words=tuple(forbidden), hint_phrases=(), min_think_words=0)
    reasons = verify(f"<think>{think}</think><answer>sadness</answer>", [], ["sadness"], cfg).reasons
    assert [r.split(":", 1)[1] for r in reasons if r.startswith("forbidden_word:")] == expected


def test_verdicts_built_on_the_fast_path_are_ordinary_verdicts():
    import dataclasses
    import pickle

    from engine.core.verifier import _frozen, _verdict

    fast_scores = _frozen(Scores, au=1.0, acc=1.0, format=1.0, total=3.0)
    fields = ("s1", 2, fast_scores, True, (), ("AU1", "AU4"), "sadness", "strict")
    fast, plain = _verdict(*fields), Verdict(*fields[:2], Scores(1.0, 1.0, 1.0, 3.0), *fields[3:], VERIFIER_VERSION)
    assert fast == plain and hash(fast) == hash(plain)
    assert pickle.loads(pickle.dumps(fast)) == plain
    assert dataclasses.asdict(fast) == dataclasses.asdict(plain)
    # _frozen skips __init__, so it is only right while these classes have no validation of their own
    assert not hasattr(Verdict, "__post_init__") and not hasattr(Scores, "__post_init__")

