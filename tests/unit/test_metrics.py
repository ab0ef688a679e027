"""Evaluation metrics against values computed by hand on small fixtures."""
from __future__ import annotations

import pytest

from trainer.metrics import (NO_ANSWER, EvalRecord, answer_label, au_f1, compute_metrics, confusion, per_dataset,
                             predict, rouge_l)


def rec(sid, completion, labels=("sadness",), aus=("AU1", "AU4"), dataset="RAF-DB", description="", error=None):
    return EvalRecord(sid, dataset, tuple(aus), tuple(labels), description, completion, error)


def done(think: str, answer: str) -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


# ---------------------------------------------------------------- emotion accuracy
def test_answer_label_reads_the_first_label_normalised():
    assert answer_label(done("x", "Sad."), "RAF-DB") == "sadness"
    assert answer_label(done("x", "happiness, surprise"), "RAF-DB") == "happiness"
    assert answer_label("<answer>angry</answer> later <answer>fear</answer>", "RAF-DB") == "fear"  # the last answer
    assert answer_label(done("x", ""), "RAF-DB") is None  # empty
    assert answer_label("<think>x</think>", "RAF-DB") is None  # missing
    assert answer_label(done("x", "Bewildered"), "RAF-DB") == "bewildered"  # open labels are kept
    assert answer_label(done("x", "contempt"), "RAF-DB") == "contempt"  # compared exactly, never restricted
    assert answer_label(done("x", "Bitter Sweet; fear"), "BP4D") == "bitter sweet"


def test_accuracy_counts_empty_missing_and_unknown_answers_as_wrong():
    records = [
        rec("a", done("x", "sadness")),  # right
        rec("b", done("x", "")),  # empty answer
        rec("c", "no tags at all"),  # missing answer
        rec("d", done("x", "bewildered")),  # unknown word
        rec("e", "", error="image_undecodable"),  # generation failed
        rec("f", done("x", "Happy"), labels=("happiness",)),  # right after normalisation
    ]
    m = compute_metrics(records)
    assert m.emotion_n == 6
    assert m.emotion_accuracy == pytest.approx(2 / 6)
    assert m.errors == 1
    assert m.format_rate == pytest.approx(4 / 6)  # a, b, d, f have the format


def test_au_only_dataset_has_no_accuracy_but_has_au_f1():
    records = [rec("a", done("brows up (AU1)", "surprise"), labels=(), aus=("AU1", "AU2"), dataset="DISFA"),
               rec("b", done("(AU2) (AU4)", "fear"), labels=(), aus=("AU2",), dataset="DISFA")]
    m = compute_metrics(records)
    assert m.emotion_accuracy is None and m.emotion_n == 0
    # AU1: tp1 -> F1 1. AU2: tp1 (b), fn1 (a) -> P 1, R 1/2, F1 2/3. AU4 is predicted but absent from gold.
    assert m.per_au_f1 == pytest.approx({"AU1": 1.0, "AU2": 2 / 3})
    assert m.au_macro_f1 == pytest.approx((1 + 2 / 3) / 2)
    # micro over AU1, AU2, AU4: TP 2, FP 1 (AU4), FN 1 (AU2 in a) -> 2*2 / (2*2 + 1 + 1)
    assert m.au_micro_f1 == pytest.approx(4 / 6)
    assert m.au_n == 2


# ---------------------------------------------------------------- AU F1
def test_au_f1_hand_computed():
    gold = [{"AU1", "AU4"}, {"AU12"}, {"AU1"}]
    pred = [{"AU1"}, {"AU12", "AU6"}, set()]
    macro, micro, per_au = au_f1(gold, pred)
    # AU1: tp 1, fn 1 -> 2/3; AU4: fn 1 -> 0; AU12: tp 1 -> 1. AU6 (not in gold) is left out of macro.
    assert list(per_au) == ["AU1", "AU4", "AU12"]  # numeric order
    assert per_au == pytest.approx({"AU1": 2 / 3, "AU4": 0.0, "AU12": 1.0})
    assert macro == pytest.approx((2 / 3 + 0 + 1) / 3)
    # micro: TP 2, FP 1 (AU6), FN 2 (AU4, AU1 in the third) -> 4 / (4 + 1 + 2)
    assert micro == pytest.approx(4 / 7)


def test_au_f1_without_gold_aus_is_none():
    assert au_f1([set(), set()], [{"AU1"}, set()]) == (None, None, {})
    m = compute_metrics([rec("a", done("(AU1)", "sadness"), aus=())])
    assert m.au_macro_f1 is None and m.au_n == 0


def test_predicted_aus_are_normalised_and_read_from_the_whole_output():
    p = predict(rec("a", "brows lowered (au04), cheeks (AU6B) <answer>anger</answer>"))
    assert p.aus == ("AU4", "AU6")
    assert not p.format_ok


# ---------------------------------------------------------------- ROUGE-L and splits
def test_rouge_l_uses_stemming_and_skips_samples_without_a_reference():
    # stemmed: the brow are rais / the brow is rais -> LCS 3 of 4 each side -> F 0.75 (0.5 without stemming)
    assert rouge_l("the brows are raising", "the brow is raised") == pytest.approx(0.75)
    records = [rec("a", "lips part", description="lips part"), rec("b", "", description="the lips part"),
               rec("c", "anything", description="")]
    m = compute_metrics(records)
    assert m.rouge_n == 2
    assert m.rouge_l_f == pytest.approx((1.0 + 0.0) / 2)


def test_per_dataset_split_and_confusion():
    records = [
        rec("a", done("x", "sadness"), dataset="RAF-DB"),
        rec("b", done("x", "anger"), dataset="RAF-DB"),
        rec("c", done("x", "happy"), labels=("happiness",), dataset="FER2013"),
        rec("d", done("x", ""), labels=("happiness",), dataset="FER2013"),
        rec("e", done("(AU1)", "fear"), labels=(), aus=("AU1",), dataset="DISFA"),
    ]
    predictions = [predict(r) for r in records]
    split = per_dataset(records, predictions)
    assert sorted(split) == ["DISFA", "FER2013", "RAF-DB"]
    assert split["RAF-DB"].emotion_accuracy == pytest.approx(0.5)
    assert split["FER2013"].emotion_accuracy == pytest.approx(0.5)
    assert split["DISFA"].emotion_accuracy is None
    assert split["DISFA"].per_au_f1 == {"AU1": 1.0}
    assert compute_metrics(records).emotion_accuracy == pytest.approx(2 / 4)

    cm = confusion(records, predictions)
    assert cm["rows"] == ["happiness", "sadness"]
    assert cm["columns"] == ["anger", "happiness", "sadness", NO_ANSWER]
    assert cm["matrix"] == [[0, 1, 0, 1], [1, 0, 1, 0]]
