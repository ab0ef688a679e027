"""`fea score`: through engine.cli.main and through the installed `fea` command, on good and bad lines."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.core.scoring import score_jsonl

REPO = Path(__file__).resolve().parents[2]
GOOD = ("<think>The inner corners of the brows are raised (AU1) and drawn together (AU4), while the lip corners "
        "are pulled down (AU15), a pattern of sorrow.</think><answer>sadness</answer>")


def record(**fields):
    base = {"id": "r1", "dataset": "RAF-DB", "image": "a.jpg", "question": "What is the emotion of this face?",
            "AUs": ["AU1", "AU4", "AU15"], "labels": ["sadness"], "description": "", "meta_info": {},
            "is_valid": True, "completion": GOOD}
    base.update(fields)
    return json.dumps(base)


LINES = [
    record(id="good"),                                                     # 1 accepted
    record(id="wrong-label", completion=GOOD.replace(">sadness<", ">anger<")),  # 2 rejected
    "{not json",                                                           # 3 error
    record(id="no-completion", completion=None),                           # 4 error
    "",                                                                    # blank: skipped
    record(id="aus-not-list", AUs="AU1"),                                  # 6 error
    record(id="adjective-gold", labels=["sad"], AUs=["AU01", "au 4", "AU15B"]),  # 7 accepted (normalised gold)
    record(id="unknown-au", AUs=["AU99"]),                                 # 8 accepted: AU99 reported, AUs unknown
    record(id="bad-label", labels=["contempt"]),                           # 9 rejected: open labels, compared
    "[1, 2]",                                                              # 10 error
    record(id="au-only", dataset="DISFA", labels=[], AUs=["AU1", "AU4", "AU15"]),  # 11 accepted, acc 0.5
    record(id="paper-case", completion=GOOD.replace("(AU1)", "(AU01)")),   # 12 strict accepts, paper rejects
]


@pytest.fixture()
def scored_input(tmp_path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_strict_output(out: list[dict]) -> None:
    assert len(out) == 11  # every non-blank line, in order
    by_id = {o.get("id"): o for o in out if "id" in o}
    good = by_id["good"]
    assert good["accepted"] is True and good["reasons"] == []
    assert good["rewards"] == {"au": 1.0, "acc": 1.0, "format": 1.0, "total": 3.0}
    assert good["completion"] == GOOD and good["dataset"] == "RAF-DB"  # the record is carried through
    wrong = by_id["wrong-label"]
    assert wrong["accepted"] is False and wrong["reasons"] == ["label_mismatch:anger!=sadness"]
    assert wrong["rewards"]["acc"] == 0.0 and wrong["rewards"]["total"] == 2.0
    assert out[2]["line"] == 3 and out[2]["error"].startswith("bad JSON") and out[2]["raw"] == "{not json"
    assert by_id["no-completion"]["line"] == 4 and "completion" in by_id["no-completion"]["error"]
    assert by_id["aus-not-list"]["line"] == 6 and by_id["aus-not-list"]["error"].startswith("AUs")
    assert by_id["adjective-gold"]["accepted"] is True
    unknown_au = by_id["unknown-au"]  # a gold token that is no FACS id is a per-AU reason, not an error
    assert unknown_au["accepted"] is True and unknown_au["reasons"] == ["gold_au_invalid:AU99"]
    assert unknown_au["rewards"]["au"] == 0.0  # nothing valid is left: the AUs are unknown
    assert by_id["bad-label"]["reasons"] == ["label_mismatch:sadness!=contempt"]
    assert out[8]["line"] == 10 and out[8]["error"] == "not a JSON object" and out[8]["raw"] == "[1, 2]"
    au_only = by_id["au-only"]
    assert au_only["accepted"] is True and au_only["rewards"]["acc"] == 0.5 and au_only["rewards"]["total"] == 2.5
    assert by_id["paper-case"]["accepted"] is True
    for o in out:
        assert ("error" in o) != ("rewards" in o)


def test_score_jsonl_summary_and_lines(scored_input, tmp_path):
    out_path = tmp_path / "sub" / "out.jsonl"
    summary = score_jsonl(scored_input, out_path)
    assert summary == {"lines": 11, "scored": 7, "accepted": 5, "errors": 4}
    check_strict_output(read(out_path))


def test_paper_policy(scored_input, tmp_path):
    out_path = tmp_path / "out.jsonl"
    summary = score_jsonl(scored_input, out_path, policy="paper")
    by_id = {o.get("id"): o for o in read(out_path) if "id" in o}
    assert by_id["good"]["accepted"] is True
    assert by_id["paper-case"]["accepted"] is False
    assert by_id["paper-case"]["reasons"] == ["au_missing:AU1", "au_extra:AU01"]
    assert by_id["au-only"]["accepted"] is True  # labels unknown: the official filter skips that check
    assert summary["scored"] == 7 and summary["errors"] == 4


def test_fea_score_through_cli_main(scored_input, tmp_path, capsys):
    out_path = tmp_path / "out.jsonl"
    assert main(["score", str(scored_input), "--out", str(out_path)]) == 0
    assert json.loads(capsys.readouterr().out)["accepted"] == 5
    check_strict_output(read(out_path))


def test_fea_score_as_a_subprocess(scored_input, tmp_path):
    fea = REPO / ".venv" / "bin" / "fea"
    command = [str(fea)] if fea.exists() else [sys.executable, "-m", "engine.cli"]
    out_path = tmp_path / "out.jsonl"
    done = subprocess.run(command + ["score", str(scored_input), "--out", str(out_path), "--policy", "strict"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"lines": 11, "scored": 7, "accepted": 5, "errors": 4}
    check_strict_output(read(out_path))


def test_score_unknown_and_no_au_forms(tmp_path):
    calm = "<think>The face is relaxed, every feature resting in its natural place.</think><answer>neutral</answer>"
    lines = [record(id="emotion-only", AUs=[], dataset="RAF-DB"),
             record(id="no-au", AUs=["AU0"], labels=["neutral"], completion=calm),
             record(id="no-au-named", AUs=["AU0"], labels=["neutral"], completion=calm.replace("relaxed", "relaxed (AU25)")),
             record(id="null-lists", AUs=None, labels=None)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    score_jsonl(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    by_id = {o["id"]: o for o in read(tmp_path / "out.jsonl")}
    assert by_id["emotion-only"]["accepted"] and by_id["emotion-only"]["rewards"]["au"] == 0.0
    assert by_id["no-au"]["accepted"] and by_id["no-au"]["rewards"]["au"] == 1.0
    assert by_id["no-au-named"]["reasons"] == ["au_extra:AU25"] and by_id["no-au-named"]["rewards"]["au"] == -1.0
    assert by_id["null-lists"]["rewards"]["acc"] == 0.5 and by_id["null-lists"]["rewards"]["au"] == 0.0
