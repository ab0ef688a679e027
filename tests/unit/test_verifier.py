"""The verifier: parsing, the paper's rewards on hand-worked cases, both acceptance policies, and
properties that must hold for any completion."""
from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.config import VerifierConfig
from engine.core.facs import AU_IDS, DATASET_LABELS
from engine.core.verifier import (
    PAPER_FORMAT_RE,
    VERIFIER_VERSION,
    VerifyItem,
    au_mentions,
    compute_scores,
    format_ok,
    forbidden_words_in,
    parse_completion,
    r_acc,
    r_au,
    r_format,
    raw_au_ids,
    verify,
    verify_batch,
)

CFG = VerifierConfig()
PAPER = VerifierConfig(policy="paper")
RAF_DB = DATASET_LABELS["RAF-DB"]
GOOD_THINK = ("The inner corners of the brows are raised (AU1) and drawn together (AU4), while the lip "
              "corners are pulled down (AU15), a pattern of sorrow.")
GOOD = f"<think>{GOOD_THINK}</think>\n<answer>sadness</answer>"
GOLD_AUS = ("AU1", "AU4", "AU15")


def completion(think: str, answer: str = "sadness") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


# ---------------------------------------------------------------- parsing
def test_parse_splits_think_answer_and_aus():
    parsed = parse_completion(GOOD)
    assert parsed.think == GOOD_THINK
    assert parsed.answer == "sadness"
    assert parsed.think_aus == GOLD_AUS
    assert parsed.all_aus == GOLD_AUS
    assert parsed.unknown_aus == ()
    assert parsed.format_ok


def test_parse_takes_the_last_answer_and_normalises_mentions():
    text = "<think>Brows lowered (au 04) and lips pressed (AU24B), AU99 too.</think><answer>anger</answer> AU9 <answer> fear </answer>"
    parsed = parse_completion(text)
    assert parsed.answer == "fear"
    assert parsed.think_aus == ("AU4", "AU24")
    assert parsed.unknown_aus == ("AU99",)
    assert parsed.all_aus == ("AU4", "AU9", "AU24")
    # the paper's regex passes this: its lazy answer group may run on to the final </answer>
    assert parsed.format_ok and PAPER_FORMAT_RE.fullmatch(text)


def test_parse_without_tags():
    parsed = parse_completion("The brows are lowered (AU4). Anger.")
    assert parsed.think is None and parsed.answer is None
    assert parsed.think_aus == () and parsed.all_aus == ("AU4",)
    assert not parsed.format_ok


@pytest.mark.parametrize("text,expected", [
    ("the brow (AU4) and (AU 12L) and LAU14, AU5s", {"AU4", "AU12", "AU14", "AU5"}),
    ("beau 4, XAU6, 3AU5", set()),  # glued to a preceding letter or digit: no mention
    ("AU1/AU2+AU26", {"AU1", "AU2", "AU26"}),
])
def test_au_mentions_in_free_text(text, expected):
    assert au_mentions(text)[0] == expected


def test_raw_au_ids_are_the_paper_regex():
    text = "AU04 and au4 and AU4 and AU12B"
    assert raw_au_ids(text) == {"AU04", "AU4", "AU12"}
    assert raw_au_ids(text, ignore_case=True) == {"AU04", "AU4", "AU12"}
    assert raw_au_ids("au4") == set()
    assert raw_au_ids("au4", ignore_case=True) == {"AU4"}


@pytest.mark.parametrize("text,expected", [
    (GOOD, True),
    ("<think></think><answer></answer>", True),
    ("<think>a</think>  \n\t<answer>b</answer>", True),
    (" <think>a</think><answer>b</answer>", False),
    ("<think>a</think><answer>b</answer>\n", False),
    ("<think>a</think>x<answer>b</answer>", False),
    ("<think>a</think><answer>b", False),
    ("<answer>b</answer>", False),
    ("<think>a</think>x</think><answer>b</answer>", True),  # the lazy .*? may run past the first </think>
])
def test_format_matches_the_paper_regex(text, expected):
    assert format_ok(text) is expected
    assert bool(PAPER_FORMAT_RE.fullmatch(text)) is expected
    assert r_format(text) == float(expected)


# ---------------------------------------------------------------- rewards, hand-worked
def test_r_au_hand_worked():
    assert r_au({"AU1", "AU4", "AU15"}, {"AU1", "AU4", "AU15"}) == 1.0
    # TP=2, |pred|=3, |gold|=3: F1 = 2/3, reward = 1/3
    assert r_au({"AU1", "AU4", "AU9"}, {"AU1", "AU4", "AU15"}) == pytest.approx(1 / 3)
    # TP=1, |pred|=3, |gold|=1: P=1/3, R=1, F1=1/2, reward = 0
    assert r_au({"AU1", "AU2", "AU4"}, {"AU1"}) == pytest.approx(0.0)
    assert r_au({"AU9"}, {"AU1"}) == -1.0


def test_r_au_edge_cases():
    assert r_au(set(), set()) == 0.0
    assert r_au({"AU4"}, set()) == 0.0  # no gold AUs: 0 whatever is predicted
    assert r_au(set(), {"AU4"}) == -1.0  # gold but nothing predicted


def test_r_acc_cases():
    assert r_acc("sadness", ["sadness"]) == 1.0
    assert r_acc(" Sad ", ["sadness"]) == 1.0  # normalised
    assert r_acc("anger", ["sadness"]) == 0.0
    assert r_acc(None, ["sadness"]) == 0.0
    assert r_acc("anger", []) == 0.5
    assert r_acc("anger", [], without_label=0.0) == 0.0
    assert r_acc("contempt", ["contempt"], label_set=RAF_DB) == 1.0  # labels are open: compared exactly
    assert r_acc("Bitter  Sweet.", ["bitter sweet"]) == 1.0


def test_scores_of_a_good_completion():
    s = compute_scores(GOOD, GOLD_AUS, ["sadness"], CFG)
    assert (s.au, s.acc, s.format, s.total) == (1.0, 1.0, 1.0, 3.0)


def test_au_only_outside_think_counts_as_nothing_predicted():
    text = "<think>The brows are drawn together and the lips are pulled down.</think><answer>sadness</answer> (AU4)"
    s = compute_scores(text, ["AU4"], ["sadness"], CFG)
    assert s.au == -1.0
    assert s.format == 0.0
    assert s.total == pytest.approx(0.0)


def test_no_tags_at_all():
    s = compute_scores("Sad face with AU1 and AU4.", ["AU1", "AU4"], ["sadness"], CFG)
    assert (s.au, s.acc, s.format, s.total) == (-1.0, 0.0, 0.0, -1.0)


def test_multiple_answers_score_the_last():
    text = "<think>Lowered brows (AU4).</think><answer>anger</answer><answer>sadness</answer>"
    assert compute_scores(text, ["AU4"], ["sadness"], CFG).acc == 1.0
    assert compute_scores(text, ["AU4"], ["anger"], CFG).acc == 0.0


def test_no_gold_label_gives_the_configured_acc():
    text = completion("Raised inner brows (AU1).", "sadness")
    assert compute_scores(text, ["AU1"], [], CFG).acc == 0.5
    assert compute_scores(text, ["AU1"], [], VerifierConfig(acc_without_label=0.0)).acc == 0.0
    assert compute_scores(text, ["AU1"], [], VerifierConfig(acc_without_label=1.0)).total == 3.0


def test_unknown_au_ids_are_false_positives():
    text = completion("Raised inner brows (AU1) and AU99.")
    assert compute_scores(text, ["AU1"], ["sadness"], CFG).au == pytest.approx(1 / 3)  # F1 = 2/3


def test_weights_and_clamp():
    text = completion("Raised inner brows (AU1) and a nose wrinkle (AU9).", "anger")
    # au: TP=1, |pred|=2, |gold|=1 -> F1=2/3 -> 1/3; acc 0; format 1
    weighted = VerifierConfig(au_weight=3.0, acc_weight=2.0, format_weight=0.5)
    s = compute_scores(text, ["AU1"], ["sadness"], weighted)
    assert s.au == pytest.approx(1 / 3) and s.acc == 0.0 and s.format == 1.0
    assert s.total == pytest.approx(3.0 * (1 / 3) + 0.5)
    clamped = VerifierConfig(au_weight=10.0, acc_weight=10.0, total_clamp=5.0)
    assert compute_scores(GOOD, GOLD_AUS, ["sadness"], clamped).total == 5.0
    low = VerifierConfig(au_weight=10.0, format_weight=0.0, total_clamp=4.0)
    assert compute_scores("nothing", ["AU1"], ["sadness"], low).total == -4.0


# ---------------------------------------------------------------- strict policy
def strict(text, aus=GOLD_AUS, labels=("sadness",), cfg=CFG, label_set=RAF_DB):
    return verify(text, aus, labels, cfg, sample_id="s1", attempt=2, label_set=label_set)


def test_strict_accepts_a_clean_completion():
    v = strict(GOOD)
    assert v.accepted and v.reasons == ()
    assert v.predicted_aus == GOLD_AUS and v.predicted_label == "sadness"
    assert (v.sample_id, v.attempt, v.policy, v.verifier_version) == ("s1", 2, "strict", VERIFIER_VERSION)
    assert v.scores.total == 3.0


def test_strict_accepts_normalised_forms():
    text = completion("The inner brows rise (au 01) and knit together (AU4B) while the lip corners drop (AU15L).", "Sad")
    v = strict(text)
    assert v.accepted, v.reasons
    assert v.predicted_label == "sadness"


def test_strict_reports_au_differences():
    v = strict(completion("The inner brows rise (AU1) and the nose wrinkles (AU9) while AU99 shows, a pattern of sorrow."))
    assert not v.accepted
    assert v.reasons == ("au_missing:AU4", "au_missing:AU15", "au_extra:AU9", "au_unknown:AU99")


def test_strict_au_only_outside_think_is_missing():
    text = completion("The inner brows rise and knit together while the lip corners are pulled down.") + " AU1 AU4 AU15"
    v = strict(text)
    assert set(v.reasons) >= {"au_missing:AU1", "au_missing:AU4", "au_missing:AU15", "format"}


def test_strict_label_mismatch_and_label_set():
    assert strict(completion(GOOD_THINK, "anger")).reasons == ("label_mismatch:anger!=sadness",)
    assert strict(completion(GOOD_THINK, "a sad face")).reasons == ("label_mismatch:a sad face!=sadness",)
    # labels are open: a gold label outside the dataset's set is compared exactly after normalisation
    assert strict(completion(GOOD_THINK, "Contempt"), labels=("contempt",)).accepted
    assert strict(completion(GOOD_THINK, "confusion"), labels=("confusion",)).accepted


def test_strict_no_answer_and_no_think():
    v = strict(f"<think>{GOOD_THINK}</think>")
    assert v.reasons == ("format", "no_answer")
    v = strict("<answer>sadness</answer>")
    assert v.reasons[:2] == ("format", "no_think")
    assert "too_short" in v.reasons


@pytest.mark.parametrize("sentence,word", [
    ("There is no tension around the eyes.", "no"),
    ("The mouth is NOT smiling.", "not"),
    ("The mouth isn't smiling.", "not"),
    ("The mouth doesn’t curve upward.", "not"),
    ("The cheeks cannot rise.", "not"),
    ("Maybe the cheeks rise.", "maybe"),
    ("The lips part without strain.", "without"),
])
def test_strict_forbidden_words(sentence, word):
    v = strict(completion(f"{GOOD_THINK} {sentence}"))
    assert v.reasons == (f"forbidden_word:{word}",)


def test_forbidden_words_are_whole_words():
    # "nose", "another", "knot", "piano", "nothing", "cannonball" contain forbidden letters but are other words
    think = f"{GOOD_THINK} The nose and another knot, a piano of nothing, a cannonball."
    assert strict(completion(think)).accepted


def test_forbidden_words_follow_the_config():
    cfg = VerifierConfig(forbidden_words=("slightly", "perhaps"))
    assert forbidden_words_in("Perhaps it is slightly raised; it isn't.", cfg) == ["slightly", "perhaps"]
    assert strict(completion(f"{GOOD_THINK} It isn't odd."), cfg=cfg).accepted  # "not" is not forbidden here


def test_strict_hint_echo():
    v = strict(completion(f"As required by the ground truth, {GOOD_THINK}"))
    assert v.reasons == ("hint_echo:ground truth", "hint_echo:as required")


def test_strict_length_bounds():
    assert strict(completion("Brows (AU1) (AU4) (AU15).")).reasons == ("too_short",)
    cfg = VerifierConfig(max_think_words=10)
    assert strict(GOOD, cfg=cfg).reasons == ("too_long",)
    assert strict(GOOD, cfg=VerifierConfig(min_think_words=0, max_think_words=len(GOOD_THINK.split()))).accepted


def test_strict_without_gold_label_checks_no_answer():
    text = completion("The brows are drawn together (AU4) and the lids tighten (AU7), a tense look.", "anger")
    assert verify(text, ["AU4", "AU7"], [], CFG, label_set=()).accepted
    other = completion("The brows are drawn together (AU4) and the lids tighten (AU7), a tense look.", "determination")
    assert verify(other, ["AU4", "AU7"], [], CFG, label_set=()).accepted


def test_strict_no_au_form_requires_no_au_mention():
    calm = completion("The face is relaxed and the features rest in their natural positions.", "neutral")
    assert verify(calm, ["AU0"], ["neutral"], CFG).accepted
    assert verify(calm.replace("relaxed", "relaxed (AU25)"), ["AU0"], ["neutral"], CFG).reasons == ("au_extra:AU25",)
    # an empty list is unknown, not "no AU": any AU mention passes
    assert verify(calm.replace("relaxed", "relaxed (AU25)"), [], ["neutral"], CFG).accepted


# ---------------------------------------------------------------- paper policy
def paper(text, aus=GOLD_AUS, labels=("sadness",)):
    return verify(text, aus, labels, PAPER)


def test_paper_accepts_exact_sets_over_the_whole_output():
    v = paper(GOOD)
    assert v.accepted and v.reasons == () and v.policy == "paper"
    # AUs outside <think> count for the paper's filter
    outside = completion("Brows raised and drawn together, lip corners down.") + " AU1 AU4 AU15"
    v = paper(outside)
    assert v.accepted
    assert v.reasons == ()  # the format regex is no part of the paper's filter
    assert v.predicted_aus == GOLD_AUS


def test_paper_is_case_sensitive_and_unnormalised():
    v = paper(completion("Brows (AU01) (AU4) (au15), with no doubt."))
    assert not v.accepted
    assert v.reasons == ("au_missing:AU1", "au_missing:AU15", "au_extra:AU01")
    assert not paper(completion(GOOD_THINK, "Sadness")).accepted  # the label compare is exact
    assert paper(completion(f"{GOOD_THINK} It is not anger, maybe.")).accepted  # no word checks


def test_paper_label_sets_and_missing_tags():
    assert paper(completion(GOOD_THINK, "sadness, fear"), labels=("fear", "sadness")).accepted
    v = paper(completion(GOOD_THINK, "sadness, fear"))
    assert v.reasons == ("label_mismatch:fear,sadness!=sadness",)
    v = paper(f"<think>{GOOD_THINK}</think> sadness")
    assert not v.accepted
    assert v.reasons == ("label_mismatch:!=sadness", "no_answer")
    no_tags = "Brows AU1 AU4 AU15 <answer>sadness</answer>"
    v = paper(no_tags)
    assert v.accepted and v.reasons == ("no_think",)


def test_paper_and_strict_share_the_rewards():
    text = completion("Brows (AU1) (AU4), nose (AU9).", "anger")
    assert verify(text, GOLD_AUS, ["sadness"], PAPER).scores == verify(text, GOLD_AUS, ["sadness"], CFG).scores


def test_verify_batch_matches_verify():
    items = [VerifyItem(GOOD, GOLD_AUS, ("sadness",), "a", 0, RAF_DB),
             (completion("Brows (AU4).", "anger"), ("AU4",), ("anger",)),
             ("garbage", ("AU1",), ())]
    batch = verify_batch(items, CFG)
    assert [v.sample_id for v in batch] == ["a", "", ""]
    assert batch[0] == verify(GOOD, GOLD_AUS, ("sadness",), CFG, sample_id="a", label_set=RAF_DB)
    assert batch[2] == verify("garbage", ("AU1",), (), CFG)


# ---------------------------------------------------------------- properties
_au = st.sampled_from(AU_IDS)
_au_sets = st.sets(_au, max_size=6)
_written = st.sampled_from(["{au}", "({au})", "{au}B", "au {n}", "AU0{n}", "{au}L"])


def _mention(au: str, form: str) -> str:
    return form.format(au=au, n=au[2:])


@given(_au_sets, _au_sets, st.data())
def test_r_au_is_bounded_and_order_free(pred, gold, data):
    value = r_au(pred, gold)
    assert -1.0 <= value <= 1.0
    mentions = [_mention(au, data.draw(_written)) for au in pred for _ in range(data.draw(st.integers(1, 3)))]
    random.Random(data.draw(st.integers(0, 10_000))).shuffle(mentions)
    think = "The face shows " + ", ".join(mentions) + "."
    s = compute_scores(completion(think), sorted(gold), ["sadness"], CFG)
    assert s.au == pytest.approx(value)


_pieces = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "\t", "a", "AU4", "<", ">",
                           "\u2003", "think"])


@settings(max_examples=400)
@given(st.lists(_pieces, max_size=12).map("".join))
def test_format_ok_equals_the_paper_regex(text):
    assert format_ok(text) == bool(PAPER_FORMAT_RE.fullmatch(text))


@given(st.lists(_pieces, max_size=12).map("".join))
def test_all_aus_equals_a_scan_of_the_whole_text(text):
    parsed = parse_completion(text)
    assert set(parsed.all_aus) == au_mentions(text)[0]
    assert set(parsed.think_aus) <= set(parsed.all_aus)


_words = st.sampled_from(["no", "not", "No", "NOT", "isn't", "cannot", "without", "maybe", "nose", "knot", "piano",
                          "n't", "'no'", "no_", "_not", "not's", "nothing", "a", "(no)", "—", ",", "don’t", "é"])


@settings(max_examples=300)
@given(st.lists(_words, max_size=10), st.sampled_from([" ", "", "-", "\n"]))
def test_forbidden_words_equal_a_word_boundary_regex(words, sep):
    think = sep.join(words)
    reference = {m.group().lower() for m in re.finditer(r"\b(?:no|not|without|maybe)\b", think, re.IGNORECASE)}
    if re.search(r"n['’]t\b|\bcannot\b", think, re.IGNORECASE):
        reference.add("not")
    found = forbidden_words_in(think, CFG)
    assert set(found) == reference
    assert found == [w for w in CFG.forbidden_words if w in reference]  # configured order


def test_gold_ids_that_are_no_number_sort_last_in_reasons():
    # "AU²" is a digit but no decimal: int() cannot read it, so it sorts after the real ids
    v = strict(completion(GOOD_THINK), aus=("AU²", "AU15", "AU4", "AU1", "AU9"))
    assert v.reasons == ("au_missing:AU9", "au_missing:AU²")
