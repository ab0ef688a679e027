"""The README's cluster recipe would come up as written: every `fea` command in it parses with the
real CLI parser, GPU work asks Ray for GPUs, the autoscaler role may resolve the workers' AMI and
hand them their role, DeepSpeed is installed where the accelerate configs name it, the region is one
setting, and every shell command of cluster.yaml is valid bash. (Ray's own schema check of
cluster.yaml is in test_cluster_files.py.)"""
from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from engine.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())


def cluster_section() -> str:
    start = README.index("## On a GPU cluster")
    end = README.index("\n## ", start + 1) if "\n## " in README[start + 1:] else len(README)
    return README[start:end]


def logical_lines(text: str) -> list[str]:
    """Shell lines of the section's code blocks, continuations joined, comments dropped."""
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def fea_commands(lines: list[str]) -> list[list[str]]:
    """The argument lists given to `fea` (or `python -m engine.cli`) in those lines."""
    found = []
    for line in lines:
        for match in re.finditer(r"(?:(?<=\s)|^)(?:fea|-m engine\.cli)\s+(?=[a-z])", line):
            rest = re.split(r"&&|\|\||[|;']", line[match.end():])[0]
            found.append(shlex.split(rest))
    return found


SECTION_LINES = logical_lines(cluster_section())
FEA_COMMANDS = fea_commands(SECTION_LINES)


def test_the_section_runs_every_kind_of_fea_command():
    assert {argv[0] for argv in FEA_COMMANDS} >= {"import", "synth", "export", "train", "loop"}


@pytest.mark.parametrize("argv", FEA_COMMANDS, ids=[" ".join(a[:2]) for a in FEA_COMMANDS])
def test_every_fea_command_in_the_cluster_section_parses(argv, capsys):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`fea {' '.join(argv)}` does not parse: {capsys.readouterr().err.strip()}")
    assert callable(args.handler)


def test_the_parser_refuses_a_misspelt_flag():
    """The check above has teeth: a wrong flag in the README would fail it."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["synth", "--num-gpus", "8"])


GPU_WORK = re.compile(r"--\s.*\b(fea (loop|train|eval)|-m engine\.cli (train|eval)|accelerate launch)\b")


def ray_job_submits() -> list[str]:
    headers = [REPO / "cluster.yaml", *sorted((REPO / "configs").glob("*.yaml"))]
    header_lines = [re.sub(r"^#\s?", "", line) for path in headers for line in path.read_text().splitlines()
                    if line.startswith("#")]
    lines = SECTION_LINES + logical_lines("```\n" + "\n".join(header_lines) + "\n```")
    return [with_quoted_script(lines, i) for i, line in enumerate(lines) if line.startswith("ray job submit")]


def with_quoted_script(lines: list[str], i: int) -> str:
    """Line i joined with the lines of a quoted script it opens (`-- bash -c '...'` spans lines)."""
    joined = lines[i]
    for following in lines[i + 1:]:
        if joined.count("'") % 2 == 0:
            break
        joined += " " + following
    return joined


def places_its_own_gpu_work(line: str) -> bool:
    """A `fea loop` whose config says `placement: ray`: its steps ask Ray for GPUs, its driver needs none."""
    match = re.search(r"\bfea loop .*--config (\S+)", line)
    return bool(match) and yaml.safe_load((REPO / match.group(1)).read_text())["loop"].get("placement") == "ray"


def asks_entrypoint_gpus(line: str) -> bool:
    return "--entrypoint-num-gpus" in line.split(" -- ")[0]


def test_gpu_work_submitted_to_ray_asks_for_gpus():
    submits = ray_job_submits()
    gpu_jobs = [line for line in submits if GPU_WORK.search(line) and not places_its_own_gpu_work(line)]
    assert len(gpu_jobs) >= 1, submits  # train (README 4)
    missing = [line for line in gpu_jobs if not asks_entrypoint_gpus(line)]
    assert not missing, f"GPU work submitted without --entrypoint-num-gpus: {missing}"


def test_a_loop_placing_its_gpu_work_on_ray_leaves_no_gpu_idle_under_its_driver():
    loops = [line for line in ray_job_submits() if places_its_own_gpu_work(line)]
    assert len(loops) >= 3, loops  # README 5 (twice) and the header of configs/loop-gpu.yaml
    assert not [line for line in loops if asks_entrypoint_gpus(line)]


def test_autoscaler_policy_lets_the_head_launch_gpu_workers():
    policy = json.loads((REPO / "configs" / "aws" / "autoscaler-policy.json").read_text())
    allowed = [(action, statement["Resource"]) for statement in policy["Statement"] if statement["Effect"] == "Allow"
               for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])]

    def grants(action: str, resource: str) -> bool:
        return any(a == action and fnmatch.fnmatch(resource, r) for a, r in allowed)

    for name, node_type in CLUSTER["available_node_types"].items():
        config = node_type["node_config"]
        image = config["ImageId"]
        if image.startswith("resolve:ssm:"):
            parameter = image[len("resolve:ssm:"):]
            arn = f"arn:aws:ssm:{CLUSTER['provider']['region']}::parameter{parameter}"
            assert grants("ssm:GetParameters", arn), f"{name}: the autoscaler cannot resolve {parameter}"
        if name != CLUSTER["head_node_type"]:
            role = config["IamInstanceProfile"]["Name"]
            assert grants("iam:PassRole", f"arn:aws:iam::123456789012:role/{role}"), f"{name}: cannot pass {role}"
    assert "--policy-document file://configs/aws/autoscaler-policy.json" in " ".join(SECTION_LINES)


def test_deepspeed_is_in_the_gpu_extra_when_a_config_names_it():
    named = [p.name for p in (REPO / "configs" / "accelerate").glob("*.yaml")
             if yaml.safe_load(p.read_text()).get("distributed_type") == "DEEPSPEED"]
    assert named, "no accelerate config uses DeepSpeed any more: drop this test and the dependency"
    gpu = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert any(re.match(r"deepspeed\b", requirement) for requirement in gpu), gpu


def test_the_region_is_one_setting():
    text = (REPO / "cluster.yaml").read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    regions = re.findall(r"\b(?:us|eu|ap|sa|ca|me|af|il)-[a-z]+-\d\b", code)
    assert regions == [CLUSTER["provider"]["region"]], regions
    assert "availability_zone" not in CLUSTER["provider"]


def test_every_cluster_command_is_valid_bash():
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    for command in (c for key in keys for c in CLUSTER.get(key, [])):
        checked = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert checked.returncode == 0, f"{command!r}: {checked.stderr}"
    region_setup = next(c for c in CLUSTER["setup_commands"] if "AWS_REGION" in c)
    assert "placement/region" in region_setup and "api/token" in region_setup  # IMDSv2
