"""The verifier against a reference written independently of it.

The reference below follows the documented rules step by step and shares no code with the
verifier beyond the vocabularies (FACS ids, AU and label normalisation): tags are cut out with
str.partition, AU mentions are read character by character, the paper's AU ids and answer labels
with string scans, forbidden words with one lookaround regex per word, the format with the paper's
own regex (which the verifier does not run). Hypothesis checks that verdicts and scores agree on
many generated completions, golds and configs.
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
    au_mentions,
    compute_scores,
    forbidden_words_in,
    verify,
    verify_batch,
)


# ---------------------------------------------------------------- the reference
def ref_format_ok(text: str) -> bool:
    """The paper's format_reward, verbatim."""
    return re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.DOTALL) is not None


def ref_think(text: str) -> str | None:
    """The first complete <think> block."""
    _, opened, rest = text.partition("<think>")
    think, closed, _ = rest.partition("</think>")
    return think if opened and closed else None


def ref_last_answer(text: str) -> str | None:
    """The last complete <answer> block, stripped."""
    head, closed, _ = text.rpartition("</answer>")
    _, opened, answer = head.rpartition("<answer>")
    return answer.strip() if opened and closed else None


def ref_first_answer(text: str) -> str | None:
    """The paper filter's first <answer> block (lazy): the first <answer> that some </answer> follows."""
    _, opened, rest = text.partition("<answer>")
    answer, closed, _ = rest.partition("</answer>")
    return answer if opened and closed else None


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


def ref_raw_aus(text: str) -> set[str]:
    """The paper's `AU\\d+`, case-sensitive, scanned left to right without overlaps."""
    found, i = set(), 0
    while i < len(text):
        k = i + 2
        while text.startswith("AU", i) and k < len(text) and text[k].isdecimal():
            k += 1
        if k > i + 2:
            found.add(text[i:k])
            i = k
        else:
            i += 1
    return found


def ref_labels(answer: str | None) -> set[str]:
    text = (answer or "").replace("、", ",").replace("，", ",")
    return {part.strip() for part in text.split(",") if part.strip()}


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


def ref_scores(think, answer, format_ok, gold_aus, gold_labels, cfg) -> Scores:
    known, unknown = ref_mentions(think) if think is not None else (set(), [])
    gold = {normalize_au(au) or au for au in gold_aus} - {NO_AU}
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
        expected = normalize_label(gold_labels[0]) or gold_labels[0].strip().lower()
        acc = float(answer is not None and normalize_label(answer) == expected)
    fmt = float(format_ok)
    total = cfg.au_weight * au + cfg.acc_weight * acc + cfg.format_weight * fmt
    return Scores(au, acc, fmt, max(-cfg.total_clamp, min(cfg.total_clamp, total)))


def ref_paper(completion, gold_aus, gold_labels, think) -> tuple[bool, list[str], tuple[str, ...], str | None]:
    raw = ref_raw_aus(completion)
    blocking = ref_au_reasons(raw, set(gold_aus) - {NO_AU}) if gold_aus else []
    first_answer = ref_first_answer(completion)
    labels = ref_labels(first_answer)
    if gold_labels and labels != set(gold_labels):
        blocking.append(f"label_mismatch:{','.join(sorted(labels))}!={','.join(sorted(set(gold_labels)))}")
    notes = ["no_think"] * (not (think or "").strip()) + ["no_answer"] * (not (first_answer or "").strip())
    return not blocking, blocking + notes, ref_sorted(raw), None if first_answer is None else first_answer.strip()


def ref_strict(think, answer, format_ok, gold_aus, gold_labels, cfg) -> tuple[bool, list[str], tuple, str | None]:
    known, unknown = ref_mentions(think) if think is not None else (set(), [])
    gold = {normalize_au(au) or au for au in gold_aus} - {NO_AU}
    reasons = ["format"] * (not format_ok) + ["no_think"] * (think is None) + ["no_answer"] * (not answer)
    reasons += (ref_au_reasons(known, gold) if gold_aus else []) + [f"au_unknown:{au}" for au in unknown]
    predicted = None if answer is None else normalize_label(answer)
    if gold_labels and answer:
        expected = normalize_label(gold_labels[0]) or gold_labels[0].strip().lower()
        if predicted != expected:
            reasons.append(f"label_mismatch:{predicted or answer.lower()[:40]}!={expected}")
    text = think or ""
    reasons += [f"forbidden_word:{w}" for w in ref_forbidden(text, cfg.forbidden_words)]
    reasons += [f"hint_echo:{p.lower()}" for p in cfg.hint_phrases if p.strip() and p.lower() in text.lower()]
    words = len(text.split())
    if words < cfg.min_think_words:
        reasons.append("too_short")
    elif words > cfg.max_think_words:
        reasons.append("too_long")
    return not reasons, reasons, ref_sorted(known), predicted


def ref_verdict(completion, gold_aus, gold_labels, cfg, label_set=None, sample_id="", attempt=0) -> Verdict:
    think, answer, format_ok = ref_think(completion), ref_last_answer(completion), ref_format_ok(completion)
    scores = ref_scores(think, answer, format_ok, gold_aus, gold_labels, cfg)
    if cfg.policy == "paper":
        accepted, reasons, aus, label = ref_paper(completion, gold_aus, gold_labels, think)
    else:
        accepted, reasons, aus, label = ref_strict(think, answer, format_ok, gold_aus, gold_labels, cfg)
    return Verdict(sample_id, attempt, scores, accepted, tuple(reasons), aus, label, cfg.policy, VERIFIER_VERSION)


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
@settings(max_examples=1000, deadline=None)
@given(completions(), _gold_aus, _gold_labels, _label_sets, _configs)
def test_verify_equals_the_reference(completion, gold_aus, gold_labels, label_set, cfg):
    expected = ref_verdict(completion, gold_aus, gold_labels, cfg, label_set, "s", 3)
    assert verify(completion, gold_aus, gold_labels, cfg, sample_id="s", attempt=3, label_set=label_set) == expected
    assert compute_scores(completion, gold_aus, gold_labels, cfg, label_set=label_set) == expected.scores


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(completions(), st.integers(0, 2)), min_size=1, max_size=8), _gold_aus, _gold_labels,
       _label_sets, _configs)
def test_verify_batch_equals_the_reference(attempts, gold_aus, gold_labels, label_set, cfg):
    # several attempts of one sample (VerifyItem or plain tuples), with a second sample between
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


@settings(max_examples=500, deadline=None)
@given(_free_text)
def test_au_mentions_equal_the_character_reading(text):
    assert au_mentions(text) == ref_mentions(text)


_plain_words = st.one_of(
    st.just(list(VerifierConfig().forbidden_words)),
    st.permutations(["no", "not", "without", "maybe", "cannot"]),
    st.lists(st.sampled_from(["no", "not", "without", "maybe", "cannot", "never", "slightly", "a", "nose", "x_1",
                              "perhaps", "o'clock", "(no)"]), max_size=4))


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_WORDS + ["a", "x_1", "never", "slightly", "-", "’", "'", "ß", "é"]), max_size=12),
       st.sampled_from([" ", "", "-", "\n", ".", "_"]), _plain_words)
def test_forbidden_words_equal_a_regex_per_word(words, sep, forbidden):
    think = sep.join(words)
    expected = ref_forbidden(think, forbidden)
    assert forbidden_words_in(think, VerifierConfig(forbidden_words=tuple(forbidden))) == expected
    cfg = VerifierConfig(forbidden_words=tuple(forbidden), hint_phrases=(), min_think_words=0)
    reasons = verify(f"<think>{think}</think><answer>sadness</answer>", [], ["sadness"], cfg).reasons
    assert [r.split(":", 1)[1] for r in reasons if r.startswith("forbidden_word:")] == expected


def test_the_reference_reads_hand_worked_cases():
    """The reference itself on cases worked by hand, so a property test cannot pass on two equal bugs."""
    text = "<think>Brows down (au 04), LAU12 and beau 4; it isn't AU99.</think>\n<answer>anger</answer>"
    assert ref_think(text) == "Brows down (au 04), LAU12 and beau 4; it isn't AU99."
    assert ref_last_answer(text + "<answer> Fear </answer>") == "Fear"
    assert ref_first_answer(text + "<answer>fear</answer>") == "anger"
    assert ref_format_ok(text) and not ref_format_ok(" " + text)
    assert ref_mentions(ref_think(text)) == ({"AU4", "AU12"}, ["AU99"])
    assert ref_raw_aus("AU04 au4 AU12B AUAU5") == {"AU04", "AU12", "AU5"}
    assert ref_labels("fear，sadness、 anger,") == {"fear", "sadness", "anger"}
    assert ref_forbidden("It isn't a knot, perhaps.", ["no", "not", "perhaps"]) == ["not", "perhaps"]
    verdict = ref_verdict(text, ["AU4", "AU12"], ["anger"], VerifierConfig(min_think_words=0))
    assert verdict.reasons == ("au_unknown:AU99", "forbidden_word:not") and not verdict.accepted
