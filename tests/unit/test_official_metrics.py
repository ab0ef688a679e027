"""The official evaluation (eval_qwen.py + eval_utils.py), rule for rule, on hand-computed fixtures."""
from __future__ import annotations

import pytest

from trainer.metrics import EvalRecord
from trainer.official_metrics import (au_metrics, extract_au_pred_think, extract_label_pred_answer, label_metrics,
                                      official_metrics)


def rec(completion, labels=("sadness",), aus=("AU1", "AU4"), description=""):
    return EvalRecord("s", "X", tuple(aus), tuple(labels), description, completion)


def test_extraction_rules():
    # AUs from the first <think> only; the whole output when there is none; raw and case-sensitive
    assert extract_au_pred_think("<think>AU4 AU12 au6 AU04</think> AU9 <think>AU2</think>") == ["AU04", "AU4", "AU12"]
    assert extract_au_pred_think("AU9 then AU1") == ["AU1", "AU9"]
    # labels from the first <answer>, split on , ; full-width forms and whitespace
    assert extract_label_pred_answer("<answer> happiness, surprise</answer><answer>fear</answer>") == ["happiness", "surprise"]
    assert extract_label_pred_answer("<answer>bitter sweet；fear</answer>") == ["bitter", "sweet", "fear"]
    assert extract_label_pred_answer("plain sadness") == ["plain", "sadness"]  # no answer: the whole output


def test_label_accuracy_first_vs_first():
    gold = [["sadness"], ["anger"], ["fear", "sadness"], ["sadness"]]
    pred = [["sadness"], ["Anger"], ["fear"], []]  # right, case differs, right (first vs first), empty = wrong
    m = label_metrics(gold, pred)
    assert m["accuracy"] == pytest.approx(2 / 4) and m["n"] == 4
    assert m["per_class"]["sadness"]["acc"] == pytest.approx(1 / 2)  # 2 records with first gold "sadness", 1 right


def test_au_metrics_hand_computed():
    gold = [["AU1", "AU4"], ["AU4"], []]
    pred = [["AU1", "AU9"], ["AU4", "AU1"], ["AU4"]]
    m = au_metrics(gold, pred)
    # classes AU1, AU4 (gold); AU9 is ignored. AU1: tp1 fp1 fn0 -> F1 2/3, recall 1, acc 2/3.
    # AU4: tp1 fp1 (row 3) fn1 (row 1) -> F1 2/4, recall 1/2, acc 1/3.
    assert m["per_class"]["AU1"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["AU4"]["f1"] == pytest.approx(1 / 2)
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["macro"]["accuracy"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    # micro: TP 2, FP 2, FN 1 -> 4 / 7; exact rows: none of three
    assert m["micro"]["f1"] == pytest.approx(4 / 7)
    assert m["micro"]["recall"] == pytest.approx(2 / 3)
    assert m["micro"]["accuracy"] == 0.0


def test_official_metrics_skip_unknowns_and_report_n():
    records = [
        rec("<think>(AU1) (AU4)</think><answer>sadness</answer>"),
        rec("<think>(AU4)</think><answer>anger</answer>", labels=()),  # AU-only record: no accuracy
        rec("<think>(AU12)</think><answer>happiness</answer>", labels=("happiness",), aus=()),  # emotion-only
        rec("<think>calm</think><answer>neutral</answer>", labels=("neutral",), aus=("AU0",)),  # known: no AU
    ]
    m = official_metrics(records)
    assert (m["emotion_n"], m["au_n"], m["n"]) == (3, 3, 4)
    assert m["emotion_accuracy"] == pytest.approx(1.0)
    # classes AU1, AU4; AU12 of the emotion-only record never counts. AU1: tp1 fn1 (record 2) -> 2/3.
    # AU4: tp2, and the no-AU record is an all-zero row with nothing predicted.
    assert m["per_au_f1"] == pytest.approx({"AU1": 2 / 3, "AU4": 1.0})
    assert m["rouge"]["rougeL"] == 0.0  # no gold descriptions: every record scores 0, as the official mean
