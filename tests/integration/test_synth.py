"""`fea synth` end to end on real parts: local Ray, the SeaweedFS S3 server, the tiny model, synthetic faces.

A random tiny model is rejected almost always, so the tests that need accepted samples use the
`replay` backend (stored completions: the faces' reference descriptions pass the verifier); the
hf and vllm runs assert the accounting instead.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from engine.data.commits import committed_shard_uris
from engine.data import shards, storage
from engine.core.config import SynthConfig
from engine.synth.input import JobMismatchError
from engine.synth.job import run_synth
from tests.support.processes import kill_driver_and_children

VENV_BIN = Path(sys.executable).parent
BAD_COMPLETION = "<think>The face looks calm.</think><answer>maybe</answer>"


# ---------------------------------------------------------------- helpers
def face_records(faces: Path, limit: int | None = None) -> list[dict]:
    lines = (faces / "samples.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:limit]]


def subset_jsonl(faces: Path, folder: Path, n: int) -> Path:
    """The first n face records as their own JSONL (images stay in the faces folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in face_records(faces, n)))
    return path


def write_replay(path: Path, plan: dict[str, list[str]]) -> Path:
    """Stored completions: sample id -> completion per attempt (0-based)."""
    with path.open("w") as f:
        for sample_id, completions in plan.items():
            for attempt, completion in enumerate(completions):
                f.write(json.dumps({"sample_id": sample_id, "attempt": attempt, "completion": completion,
                                    "completion_tokens": len(completion.split())}) + "\n")
    return path


def synth_config(**fields) -> SynthConfig:
    fields.setdefault("progress", "off")
    return SynthConfig.model_validate(fields)


def committed_rows(out: str, kind: str) -> list[dict]:
    return [row for uri in committed_shard_uris(out, kind, "parquet")
            for row in shards.iter_parquet_rows(uri)]


def input_ids(jsonl: Path) -> list[str]:
    return [json.loads(line)["id"] for line in jsonl.read_text().splitlines()]


def assert_accounted_once(out: str, expected_ids: list[str], quarantined_ids: list[str] = ()) -> dict[str, list]:
    """Every input id in exactly one of accepted / rejected / quarantined; no duplicates anywhere."""
    accepted = [r["id"] for r in committed_rows(out, "accepted")]
    rejected = [r["id"] for r in committed_rows(out, "rejected")]
    quarantined = [r["sample_id"] for r in committed_rows(out, "quarantine")]
    produced = accepted + rejected
    assert len(produced) == len(set(produced)), "an id appears twice in the committed shards"
    assert sorted(produced) == sorted(i for i in expected_ids if i not in set(quarantined_ids))
    assert not set(quarantined_ids) & set(produced)
    summary = json.loads(storage.read_text(storage.join(out, "summary.json")))
    assert summary["inputs"] == summary["accepted"] + summary["rejected"] + summary["quarantined"]
    assert summary["accepted"] == len(accepted) and summary["rejected"] == len(rejected)
    assert summary["quarantined"] == len(quarantined)
    assert sum(summary["attempts_histogram"].values()) == len(accepted) + len(rejected)
    return {"accepted": accepted, "rejected": rejected, "quarantined": quarantined}


def out_location(kind: str, tmp_path: Path) -> str:
    return f"s3://fea-test/synth-{uuid.uuid4().hex[:10]}" if kind == "s3" else str(tmp_path / "out")


# ---------------------------------------------------------------- replay: retries, shards, loaders, export
@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_replay_retry_then_accept(where, ray_local, faces, tmp_path, capsys, monkeypatch):
    from engine.core import prompts, verifier
    from engine.core.types import Sample, prompt_hash

    records = face_records(faces, 12)
    ids = [r["id"] for r in records]
    # 8 pass on the retry, 2 never pass (3 attempts, rejected), 1 has no stored first attempt, 1 passes at once
    plan = {rid: [BAD_COMPLETION, r["description"]] for rid, r in zip(ids[:8], records[:8])}
    plan.update({rid: [BAD_COMPLETION] * 3 for rid in ids[8:10]})
    plan[ids[11]] = [r["description"] for r in records[11:12]]
    replay = write_replay(tmp_path / "replay.jsonl", plan)
    with (tmp_path / "replay.jsonl").open("a") as f:  # ids[10]: attempt 0 missing, attempt 1 stored
        f.write(json.dumps({"sample_id": ids[10], "attempt": 1, "completion": records[10]["description"]}) + "\n")
    jsonl = subset_jsonl(faces, tmp_path / "in", 12)
    out = out_location(where, tmp_path)
    cfg = synth_config(input=str(jsonl), image_root=str(faces), out=out, partition_size=5, max_retries=2,
                       generation={"backend": "replay", "replay_path": str(replay), "batch_size": 4})

    summary = run_synth(cfg)

    assert summary["inputs"] == 12 and summary["partitions"] == 3
    assert (summary["accepted"], summary["rejected"], summary["quarantined"]) == (10, 2, 0)
    assert summary["attempts_histogram"] == {"1": 1, "2": 9, "3": 2}
    assert summary["samples_per_second"] > 0 and summary["wall_seconds"] > 0
    groups = assert_accounted_once(out, ids)
    assert sorted(groups["rejected"]) == sorted(ids[8:10])

    # the retry prompt carried the first answer and what was wrong with it
    accepted = {r["id"]: r for r in committed_rows(out, "accepted")}
    cfg_v = cfg.verifier
    first = records[0]
    sample = Sample(id=first["id"], dataset=first["dataset"], image=b"", image_sha256="", image_path=first["image"],
                    question=first["question"], aus=tuple(accepted[first["id"]]["aus"]),
                    labels=tuple(accepted[first["id"]]["labels"]))
    verdict = verifier.verify(BAD_COMPLETION, sample.aus, sample.labels, cfg_v)
    assert not verdict.accepted and verdict.reasons
    retry = prompts.build_messages(sample, hint=True, history=((BAD_COMPLETION, verdict.reasons),))
    assert any(BAD_COMPLETION in json.dumps(m) for m in retry[1:])
    provenance = accepted[first["id"]]["provenance"]
    assert provenance["prompt_hash"] == prompt_hash(retry)
    assert provenance["attempts"] == 2 and provenance["backend"] == "replay"
    assert provenance["job_id"] == summary["job_id"] and provenance["policy"] == "strict"
    assert accepted[first["id"]]["description"] == first["description"]
    # the missing stored completion counted as a failed attempt, with its reason
    assert accepted[ids[10]]["provenance"]["attempts"] == 2
    rejected = {r["id"]: r for r in committed_rows(out, "rejected")}
    assert [a["attempt"] for a in rejected[ids[8]]["attempts"]] == [0, 1, 2]
    assert all(a["reasons"] for a in rejected[ids[8]]["attempts"])

    _check_loaders(out, expected=sorted(accepted), monkeypatch=monkeypatch)
    _check_export(out, tmp_path, accepted_ids=sorted(accepted), rejected_ids=sorted(rejected))

    # a rerun after success does nothing and says so
    capsys.readouterr()
    again = run_synth(cfg)
    assert "nothing to do: 3 partitions already committed" in capsys.readouterr().err
    assert again == summary


def test_a_short_queue_is_spread_over_all_generators(ray_local, faces, tmp_path):
    """Two batches and two generators: each generator gets one, not one generator both (which its
    in-flight limit would allow)."""
    records = face_records(faces, 8)
    replay = write_replay(tmp_path / "replay.jsonl", {r["id"]: [r["description"]] for r in records})
    cfg = synth_config(input=str(subset_jsonl(faces, tmp_path / "in", 8)), image_root=str(faces),
                       out=str(tmp_path / "out"), partition_size=8, generators=2, generator_num_cpus=0.5,
                       inflight_batches_per_generator=2,
                       generation={"backend": "replay", "replay_path": str(replay), "batch_size": 4})

    summary = run_synth(cfg)

    assert summary["accepted"] == 8
    assert summary["run"]["generator_requests"] == [4, 4]


def _check_loaders(out: str, expected: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepted shards load with webdataset, polars and datasets, from disk and from S3."""
    import datasets
    import polars as pl
    import webdataset as wds

    tars = committed_shard_uris(out, "accepted", "webdataset")
    parquets = committed_shard_uris(out, "accepted", "parquet")
    assert len(tars) == len(parquets) == 3

    shards.register_webdataset_s3()  # webdataset has no s3:// opener of its own
    seen = []
    for record in wds.WebDataset(tars, shardshuffle=False):
        meta = json.loads(record["json"])
        assert shards.decode_key(record["__key__"]) == meta["id"]
        assert record["png"].startswith(b"\x89PNG")
        assert meta["provenance"]["attempts"] >= 1 and "total" in meta["rewards"]
        assert meta["description"].startswith("<think>")
        seen.append(meta["id"])
    assert sorted(seen) == expected

    frame = pl.scan_parquet(parquets, storage_options=storage.polars_storage_options(out)).select(
        "id", "provenance").collect()
    assert sorted(frame["id"].to_list()) == expected

    options = storage.fsspec_storage_options(out)
    # HF offline mode (no model hub here) makes `datasets` refuse every remote URL, s3:// included;
    # a user reading from object storage runs with HF_DATASETS_OFFLINE=0, which is this.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    as_parquet = datasets.load_dataset("parquet", data_files=parquets, split="train", storage_options=options)
    assert sorted(as_parquet["id"]) == expected
    as_wds = datasets.load_dataset("webdataset", data_files=tars, split="train", storage_options=options)
    assert sorted(json_row["id"] for json_row in as_wds["json"]) == expected


def _check_export(out: str, tmp_path: Path, accepted_ids: list[str], rejected_ids: list[str]) -> None:
    """`fea export` writes the committed samples as FEA-20K JSONL with their images beside it."""
    for flag, expected in (([], accepted_ids), (["--rejected"], rejected_ids)):
        target = tmp_path / f"export{''.join(flag)}" / "samples.jsonl"
        subprocess.run([str(VENV_BIN / "fea"), "export", out, "--out", str(target), *flag], check=True,
                       capture_output=True, text=True, timeout=120)
        rows = [json.loads(line) for line in target.read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == expected
        for row in rows:
            assert (target.parent / row["image"]).is_file()
            assert set(row) >= {"id", "dataset", "image", "question", "AUs", "labels", "description"}


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_are_quarantined(ray_local, faces, tmp_path):
    records = face_records(faces, 6)
    folder = tmp_path / "in"
    (folder / "images").mkdir(parents=True)
    for r in records:
        shutil.copy(faces / r["image"], folder / r["image"])
    png = (faces / records[0]["image"]).read_bytes()
    (folder / "images" / "corrupt.png").write_bytes(png[: len(png) // 2])  # truncated file
    corrupt = dict(records[0], id="corrupt-1", image="images/corrupt.png")
    missing = dict(records[0], id="missing-1", image="images/not-there.png")
    lines = [json.dumps(r) for r in records[:3]] + [json.dumps(corrupt), "{not json", json.dumps(missing)]
    lines += [json.dumps(r) for r in records[3:]] + [json.dumps(records[1])]  # the last repeats an id
    jsonl = folder / "samples.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    replay = write_replay(tmp_path / "replay.jsonl", {r["id"]: [r["description"]] for r in records})
    out = str(tmp_path / "out")

    summary = run_synth(synth_config(input=str(jsonl), out=out, partition_size=4, max_retries=1,
                                     generation={"backend": "replay", "replay_path": str(replay)}))

    assert (summary["inputs"], summary["accepted"], summary["quarantined"]) == (10, 6, 4)
    reasons = sorted(r["reason"].split(":")[0] for r in committed_rows(out, "quarantine"))
    assert reasons == ["bad_json", "duplicate_id", "image_missing", "image_undecodable"]
    quarantine = {r["sample_id"]: r for r in committed_rows(out, "quarantine")}
    assert "not-there.png" in quarantine["missing-1"]["reason"]
    assert_accounted_once(out, [r["id"] for r in records] + ["corrupt-1", "missing-1"], ["corrupt-1", "missing-1"])


def test_rerun_with_other_input_is_refused(ray_local, faces, tmp_path):
    records = face_records(faces, 4)
    replay = write_replay(tmp_path / "replay.jsonl", {r["id"]: [r["description"]] for r in records})
    out = str(tmp_path / "out")
    base = dict(out=out, partition_size=2, generation={"backend": "replay", "replay_path": str(replay)})
    run_synth(synth_config(input=str(subset_jsonl(faces, tmp_path / "a", 4)), image_root=str(faces), **base))
    with pytest.raises(JobMismatchError, match="input"):
        run_synth(synth_config(input=str(subset_jsonl(faces, tmp_path / "b", 3)), image_root=str(faces), **base))


# ---------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def answering_model(tiny_model, faces, tmp_path_factory) -> Path:
    """The tiny model trained to answer the first face's compact synthesis prompt with its reference
    reasoning, so that a real backend's run has accepted rows (a random model's never are)."""
    from engine.core.types import Sample
    from engine.data.dataset import load_input
    from tests.support.memorized import memorize

    first = next(iter(load_input(str(faces / "samples.jsonl"), str(faces))))
    assert isinstance(first, Sample)
    return memorize(tiny_model, first, tmp_path_factory.mktemp("answering-model"), style="compact")


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_hf_end_to_end(where, ray_local, answering_model, faces, tmp_path, caplog):
    model = str(answering_model)
    if where == "s3":  # the model itself comes from object storage too, copied once to a local cache
        model = f"s3://fea-test/models-{uuid.uuid4().hex[:8]}/tiny"
        for path in answering_model.rglob("*"):
            if path.is_file():
                storage.write_bytes(storage.join(model, str(path.relative_to(answering_model))), path.read_bytes())
    jsonl = subset_jsonl(faces, tmp_path / "in", 6)
    first = face_records(faces, 1)[0]
    out = out_location(where, tmp_path)
    caplog.set_level(logging.INFO)
    summary = run_synth(synth_config(input=str(jsonl), image_root=str(faces), out=out, model={"path": model},
                                     partition_size=3, max_retries=1, progress="log", prompt_style="compact",
                                     generation={"backend": "hf", "max_new_tokens": 96, "batch_size": 4}))
    assert summary["inputs"] == 6 and summary["partitions"] == 2 and summary["backend"] == "hf"
    assert summary["generated_tokens"] > 0 and summary["generated_tokens_per_second"] > 0
    groups = assert_accounted_once(out, input_ids(jsonl))
    for row in committed_rows(out, "rejected"):
        assert 1 <= len(row["attempts"]) <= 2 and all(a["reasons"] for a in row["attempts"])
    accepted = {row["id"]: row for row in committed_rows(out, "accepted")}
    assert first["id"] in accepted  # the answer it learned, at the first attempt
    assert accepted[first["id"]]["description"] == first["description"]
    assert accepted[first["id"]]["provenance"]["attempts"] == 1
    for row in accepted.values():
        assert row["provenance"]["model_id"] == summary["model_ids"][0]
        assert row["provenance"]["backend"] == "hf" and row["rewards"]["total"] > 0
    assert len(groups["accepted"]) + len(groups["rejected"]) == 6
    if where == "s3":  # no credential anywhere: logs, job record, summary, commits
        from tests.support.seaweed import SECRET_KEY

        assert SECRET_KEY not in caplog.text
        for uri in storage.list_files(out, recursive=True):
            if uri.endswith(".json"):
                assert SECRET_KEY not in storage.read_text(uri)


@pytest.mark.vllm
def test_vllm_end_to_end(ray_local, tiny_model, faces, tmp_path):
    """One vLLM engine start for the whole check (it costs ~30 s here): sampled, 2 completions per attempt."""
    jsonl = subset_jsonl(faces, tmp_path / "in", 8)
    out = str(tmp_path / "out")
    summary = run_synth(synth_config(input=str(jsonl), image_root=str(faces), out=out, model={"path": str(tiny_model)},
                                     partition_size=4, max_retries=1,
                                     generation={"backend": "vllm", "max_new_tokens": 16, "batch_size": 8,
                                                 "max_model_len": 4096, "temperature": 1.0, "n": 2}))
    assert summary["inputs"] == 8 and summary["backend"] == "vllm" and summary["generated_tokens"] > 0
    assert summary["model_ids"][0].startswith(tiny_model.name + "@")
    assert_accounted_once(out, input_ids(jsonl))
    for row in committed_rows(out, "rejected"):
        numbers = [a["attempt"] for a in row["attempts"]]
        assert numbers in ([0, 0], [0, 0, 1, 1])  # both completions of every attempt are kept
        assert all(a["completion"].strip() and a["reasons"] for a in row["attempts"])


# ---------------------------------------------------------------- failures
def test_generator_killed_mid_job(ray_local, tiny_model, faces, tmp_path, caplog):
    """A generator actor dies mid-job: Ray restarts it, its in-flight requests are re-queued."""
    import ray

    jsonl = subset_jsonl(faces, tmp_path / "in", 16)
    out = str(tmp_path / "out")
    cfg = synth_config(input=str(jsonl), image_root=str(faces), out=out, model={"path": str(tiny_model)},
                       partition_size=4, max_retries=2, job_id=f"kill-{uuid.uuid4().hex[:6]}",
                       generation={"backend": "hf", "max_new_tokens": 24, "batch_size": 2})
    caplog.set_level(logging.WARNING, logger="engine.synth.job")
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(summary=run_synth(cfg)))
    job.start()
    commits_at_kill = _wait_for(lambda: len(storage.list_files(storage.join(out, "commits"))) or None, timeout=300)
    ray.kill(ray.get_actor(f"fea-{cfg.job_id}-generator-0"), no_restart=False)
    job.join(timeout=600)

    assert "summary" in result, "the job did not finish after its generator was killed"
    assert commits_at_kill < 4, "the kill came after the job had finished"
    assert "re-queued" in caplog.text
    assert result["summary"]["inputs"] == 16
    assert_accounted_once(out, input_ids(jsonl))


def _wait_for(probe, timeout: float, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not reached")


def test_driver_sigkill_then_rerun(tiny_model, faces, tmp_path):
    """SIGKILL the `fea synth` driver after a commit; the same command finishes the job exactly once."""
    jsonl = subset_jsonl(faces, tmp_path / "in", 16)
    out = tmp_path / "out"
    command = [str(VENV_BIN / "fea"), "synth", "--input", str(jsonl), "--image-root", str(faces), "--out", str(out),
               "--model", str(tiny_model), "--backend", "hf", "--partition-size", "2", "--batch-size", "2",
               "--max-retries", "2", "--max-new-tokens", "24", "--progress", "log"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own private Ray
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        _wait_for(lambda: list((out / "commits").glob("*.json")) or driver.poll() is not None, timeout=300)
    finally:
        kill_driver_and_children(driver.pid)
        driver.wait(timeout=30)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "commits").glob("*.json")}
    assert 1 <= len(before) < 8, f"the kill should land mid-job, found {len(before)} commits of 8"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "commits").glob("*.json")}
    assert len(after) == 8
    assert all(after[name] == before[name] for name in before), "a commit made before the kill was touched"
    summary = json.loads(rerun.stdout)
    assert summary["inputs"] == 16 and summary["run"]["partitions"] == 8 - len(before)
    assert_accounted_once(str(out), input_ids(jsonl))

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert "nothing to do: 8 partitions already committed" in again.stderr
    assert json.loads(again.stdout) == summary


# ---------------------------------------------------------------- next round: reload with an adapter
def test_generator_reloads_with_lora_adapter(ray_local, tiny_model, faces, tmp_path):
    """The next round's generator swaps in base + LoRA adapter without restarting the actor."""
    import ray
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from actors.generator import GeneratorActor
    from engine.data.dataset import load_input
    from engine.core.prompts import make_request
    from engine.core.types import SamplingParams

    adapter = tmp_path / "adapter"
    base = AutoModelForImageTextToText.from_pretrained(tiny_model)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(adapter)

    actor = GeneratorActor.options(num_cpus=0).remote("hf", str(tiny_model), None, {"batch_size": 2})
    try:
        before = ray.get(actor.model_id.remote())
        sample = next(s for s in load_input(str(faces / "samples.jsonl")) if hasattr(s, "image"))
        params = SamplingParams(max_new_tokens=8)
        plain = ray.get(actor.generate.remote([make_request(sample, 0, hint=True)], params))
        after = ray.get(actor.reload.remote(str(tiny_model), str(adapter)))
        tuned = ray.get(actor.generate.remote([make_request(sample, 0, hint=True)], params))
    finally:
        ray.kill(actor)
    assert before != after and "+adapter@" in after
    assert tuned[0][0].model_id == after and plain[0][0].model_id == before
    assert tuned[0][0].completion != plain[0][0].completion  # the adapter changes what is generated


def test_fleet_keeps_generator_actors_across_jobs_and_reloads_the_model(ray_local, tiny_model, faces, tmp_path):
    """The loop's rounds: the second job runs on the same actors, with the next round's model."""
    import ray

    from engine.synth.pool import GeneratorFleet
    from engine.demo.tinymodel import build_tiny_model

    next_model = build_tiny_model(tmp_path / "next-round-model", seed=1)
    jsonl = subset_jsonl(faces, tmp_path / "in", 4)
    fleet = GeneratorFleet()
    try:
        summaries, actor_ids = [], []
        for round_, model in enumerate((tiny_model, next_model)):
            cfg = synth_config(input=str(jsonl), image_root=str(faces), out=str(tmp_path / f"out-{round_}"),
                               model={"path": str(model)}, max_retries=0, generation={"max_new_tokens": 4})
            summaries.append(run_synth(cfg, fleet=fleet))
            actor_ids.append([a._actor_id.hex() for a in fleet.actors])
            # the job left its generators running (and loaded with its model) for the next one
            assert ray.get([a.model_id.remote() for a in fleet.actors], timeout=60) == summaries[-1]["model_ids"]
    finally:
        fleet.release()
    assert actor_ids[0] == actor_ids[1]
    # release returns once the generators' processes are gone (their GPU memory back to the device)
    assert {ray._private.state.actors(actor_id=i)["State"] for i in actor_ids[0]} == {"DEAD"}
    assert summaries[0]["model_ids"] != summaries[1]["model_ids"]  # reloaded, not restarted
    for summary in summaries:
        assert summary["inputs"] == summary["accepted"] + summary["rejected"] == 4
