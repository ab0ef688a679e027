"""The `paper` policy is the official synthesis filter (RobitsG/Facial-R1, src/eval/infer_emotion.py):
`extract_aus` = sorted(set(re.findall(r"AU\\d+", output))) over the whole output, case-sensitive;
`extract_labels` = the first <answer>(.*?)</answer> (DOTALL), split on "," "、" "，", stripped, as a
set; `match_aus = True if not gold_aus else gold_aus == pred_aus`, the same for labels; missing or
empty <think>/<answer> tags are reported and never block.

Each case below was worked out by hand from those rules; the expected column is what the official
script decides (accepted or not), followed by what this engine reports."""
from __future__ import annotations

import pytest

from engine.core.config import VerifierConfig
from engine.core.facs import NO_AU
from engine.core.verifier import compute_scores, verify

PAPER = VerifierConfig(policy="paper")
STRICT = VerifierConfig()
THINK = "The brows are lowered and drawn together (AU4), the lids tighten (AU7), a tense, hard look."

# (completion, gold AUs, gold labels, official accepts?, reasons reported here)
HAND_WORKED = [
    # 1. exact sets: accept
    (f"<think>{THINK}</think><answer>anger</answer>", ["AU4", "AU7"], ["anger"], True, ()),
    # 2. AU-only source (labels unknown): the answer is not checked at all, even a non-emotion
    (f"<think>{THINK}</think><answer>AU4, AU7</answer>", ["AU4", "AU7"], [], True, ()),
    # 3. emotion-only source (AUs unknown): any AU mention passes, only the label counts
    (f"<think>{THINK} Also AU12.</think><answer>anger</answer>", [], ["anger"], True, ()),
    # 4. emotion-only source, wrong label: rejected on the label alone
    (f"<think>{THINK}</think><answer>fear</answer>", [], ["anger"], False, ("label_mismatch:fear!=anger",)),
    # 5. the FIRST answer counts: "fear" first, "anger" second -> mismatch
    (f"<think>{THINK}</think><answer>fear</answer><answer>anger</answer>", ["AU4", "AU7"], ["anger"], False,
     ("label_mismatch:fear!=anger",)),
    # 6. labels split on the full-width and ideographic commas, stripped, as a set
    (f"<think>{THINK}</think><answer> fear，anger 、fear</answer>", ["AU4", "AU7"], ["anger", "fear"], True, ()),
    # 7. a semicolon does not split for the filter: "anger; fear" is one label
    (f"<think>{THINK}</think><answer>anger; fear</answer>", ["AU4", "AU7"], ["anger"], False,
     ("label_mismatch:anger; fear!=anger",)),
    # 8. AUs anywhere in the output count, also after the answer
    (f"<think>{THINK}</think><answer>anger</answer> AU9", ["AU4", "AU7"], ["anger"], False, ("au_extra:AU9",)),
    # 9. case-sensitive and unnormalised: "au7" is not found, "AU07" is its own id
    ("<think>Brows (AU4), lids (au7) and (AU07).</think><answer>anger</answer>", ["AU4", "AU7"], ["anger"], False,
     ("au_missing:AU7", "au_extra:AU07")),
    # 10. no tags at all: AUs from the whole text, no labels -> label mismatch; tags reported
    ("AU4 AU7 anger", ["AU4", "AU7"], ["anger"], False, ("label_mismatch:!=anger", "no_think", "no_answer")),
    # 11. no tags, labels unknown: accepted (only AUs are checked), tags reported but not blocking
    ("Brows AU4 and lids AU7.", ["AU4", "AU7"], [], True, ("no_think", "no_answer")),
    # 12. an empty think is reported, not blocking
    ("<think> </think><answer>anger</answer> AU4 AU7", ["AU4", "AU7"], ["anger"], True, ("no_think",)),
    # 13. the answer is compared case-sensitively
    (f"<think>{THINK}</think><answer>Anger</answer>", ["AU4", "AU7"], ["anger"], False,
     ("label_mismatch:Anger!=anger",)),
    # 14. both unknown: anything is accepted (the official script keeps such rows)
    ("whatever", [], [], True, ("no_think", "no_answer")),
]


@pytest.mark.parametrize("text,aus,labels,accepted,reasons", HAND_WORKED)
def test_paper_policy_matches_the_official_filter(text, aus, labels, accepted, reasons):
    verdict = verify(text, aus, labels, PAPER)
    assert verdict.accepted is accepted
    assert verdict.reasons == reasons


def test_paper_no_au_form_needs_an_output_without_au_ids():
    calm = "<think>The face is relaxed, every feature at rest.</think><answer>neutral</answer>"
    assert verify(calm, [NO_AU], ["neutral"], PAPER).accepted
    assert verify(calm + " AU25", [NO_AU], ["neutral"], PAPER).reasons == ("au_extra:AU25",)


# ---------------------------------------------------------------- rewards: unknown is not absent
def test_rewards_for_unknown_aus_and_labels():
    text = f"<think>{THINK}</think><answer>anger</answer>"
    # emotion-only record: R_AU = 0 whatever is mentioned (grpo_jsonl.py au_reward: `if not gt_aus_set`)
    assert compute_scores(text, [], ["anger"], STRICT).au == 0.0
    # AU-only record: R_acc = 0.5 (grpo_jsonl.py default_accuracy_reward: no ground truth)
    assert compute_scores(text, ["AU4", "AU7"], [], STRICT).acc == 0.5
    scores = compute_scores(text, [], [], STRICT)
    assert (scores.au, scores.acc, scores.format) == (0.0, 0.5, 1.0)


def test_rewards_for_the_no_au_form():
    calm = "<think>The face is relaxed, every feature at rest.</think><answer>neutral</answer>"
    assert compute_scores(calm, [NO_AU], ["neutral"], STRICT).au == 1.0
    named = calm.replace("relaxed", "relaxed (AU25)")
    assert compute_scores(named, [NO_AU], ["neutral"], STRICT).au == -1.0


def test_strict_skips_each_check_whose_gold_is_unknown():
    think = f"{THINK} The mouth is pressed (AU24)."
    assert verify(f"<think>{think}</think><answer>anger</answer>", [], ["anger"], STRICT).accepted
    assert verify(f"<think>{think}</think><answer>resolve</answer>", ["AU4", "AU7", "AU24"], [], STRICT).accepted
    # a known gold still rejects a wrong answer; an AU id that is no FACS code is still reported
    assert not verify(f"<think>{think}</think><answer>resolve</answer>", [], ["anger"], STRICT).accepted
    assert verify(f"<think>{think} AU99</think><answer>anger</answer>", [], ["anger"], STRICT).reasons == (
        "au_unknown:AU99",)


def test_facs_ids_beyond_the_thirty_are_matched():
    think = "The jaw clenches (AU31) and the cheeks blow out (AU33), the nostrils flare (AU38) in a tense face."
    text = f"<think>{think}</think><answer>determination</answer>"
    verdict = verify(text, ["AU31", "AU33", "AU38"], ["determination"], STRICT)
    assert verdict.accepted, verdict.reasons
    assert verdict.predicted_aus == ("AU31", "AU33", "AU38")
    assert verdict.scores.au == 1.0
