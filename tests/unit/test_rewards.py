"""GRPO reward callables: the verifier's scores, once per completion, recorded as computed."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.core.config import VerifierConfig
from engine.core.facs import label_set_for
from engine.core.verifier import compute_scores
from trainer.rewards import REWARD_NAMES, RewardRecorder, VerifierRewards, completion_text, read_reward_records

GOOD = "<think>The inner brows rise (AU1) and the brows lower (AU4).</think><answer>sadness</answer>"
BATCH = dict(
    completions=[[{"role": "assistant", "content": GOOD}],
                 [{"role": "assistant", "content": "<think>brows (AU4) (AU9)</think> <answer>Contempt</answer>"}],
                 [{"role": "assistant", "content": [{"type": "text", "text": "no tags (AU1)"}]}],
                 [{"role": "assistant", "content": "<think>x</think><answer>fear</answer>"}]],
    gold_aus=[["AU1", "AU4"], ["AU4"], ["AU1"], ["AU2"]],
    gold_labels=[["sadness"], ["contempt"], ["fear"], []],
    dataset=["RAF-DB", "RAF-DB", "AffectNet", "DISFA"],
)


def test_completion_text_reads_the_conversational_forms():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "s"}]) == "s"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]) == "ab"


def test_reward_functions_return_the_verifier_scores_named_as_trl_logs_them():
    cfg = VerifierConfig(au_weight=2.0, acc_weight=0.5, format_weight=1.5)
    rewards = VerifierRewards(cfg)
    functions = rewards.functions()
    assert [f.__name__ for f in functions] == list(REWARD_NAMES)
    assert rewards.reward_weights() == [2.0, 0.5, 1.5]
    expected = [compute_scores(completion_text(c), aus, labels, cfg, label_set=label_set_for(ds))
                for c, aus, labels, ds in zip(BATCH["completions"], BATCH["gold_aus"], BATCH["gold_labels"], BATCH["dataset"])]
    for function, name in zip(functions, REWARD_NAMES):
        assert function(prompts=[None] * 4, **BATCH) == [getattr(s, name) for s in expected]
    # hand-checked: perfect; F1 2/3 and "Contempt" equals the gold after normalisation (labels are
    # open, RAF-DB's set does not restrict them); no <think> so no AU and no format; AU-only sample: acc 0.5
    assert functions[0](**BATCH) == pytest.approx([1.0, 2 * (2 / 3) - 1, -1.0, -1.0])
    assert functions[1](**BATCH) == [1.0, 1.0, 0.0, 0.5]
    assert functions[2](**BATCH) == [1.0, 1.0, 0.0, 1.0]


def test_verifier_runs_once_per_batch_and_recorder_logs_each_completion(tmp_path, monkeypatch):
    calls = []
    import trainer.rewards as module

    real = module.compute_scores
    monkeypatch.setattr(module, "compute_scores", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    recorder = RewardRecorder(tmp_path / "rewards.jsonl")
    rewards = VerifierRewards(VerifierConfig(), recorder)
    state = SimpleNamespace(global_step=7)
    for function in rewards.functions():
        function(trainer_state=state, sample_id=["a", "b", "c", "d"], **BATCH)
    assert len(calls) == 4  # three reward functions, one verifier pass
    second = {k: list(v) for k, v in BATCH.items()}  # a new batch (new lists) is scored again
    rewards.functions()[0](trainer_state=SimpleNamespace(global_step=8), **second)
    recorder.close()
    assert len(calls) == 8
    rows = read_reward_records(tmp_path / "rewards.jsonl")
    assert [r["step"] for r in rows] == [7] * 4 + [8] * 4
    assert rows[0]["sample_id"] == "a" and rows[0]["completion"] == GOOD
    assert (rows[0]["au"], rows[0]["acc"], rows[0]["format"], rows[0]["total"]) == (1.0, 1.0, 1.0, 3.0)
    assert rows[3]["gold_labels"] == [] and rows[3]["acc"] == 0.5


def test_recorder_forgets_the_steps_a_resumed_run_redoes(tmp_path):
    recorder = RewardRecorder(tmp_path / "rewards.jsonl")
    recorder.write([{"step": s, "au": 0.0} for s in (0, 1, 2, 3)])
    recorder.close()
    assert recorder.drop_from_step(2) == 2
    recorder.write([{"step": 2, "au": 1.0}])
    recorder.close()
    assert [(r["step"], r["au"]) for r in read_reward_records(tmp_path / "rewards.jsonl")] == [(0, 0.0), (1, 0.0), (2, 1.0)]


def test_unknown_gold_gives_the_papers_neutral_rewards():
    rewards = VerifierRewards(VerifierConfig())
    au, acc, _ = rewards.functions()
    batch = dict(completions=[GOOD, GOOD], gold_aus=[[], ["AU0"]], gold_labels=[[], ["sadness"]],
                 dataset=["RAF-DB", "FABA"])
    assert au(**batch) == [0.0, -1.0]  # unknown AUs: 0 (grpo_jsonl.py au_reward); "no AU" but AUs named: -1
    assert acc(**batch) == [0.5, 1.0]  # unknown emotion: 0.5 (default_accuracy_reward)
