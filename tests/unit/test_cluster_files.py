"""The cluster files pass the checks `ray up` runs before it touches any machine.

`ray up` (ray.autoscaler._private.commands._bootstrap_config) merges the provider's defaults
(prepare_config), asks the cloud to fill node resources, validates against ray-schema.json
(validate_config), then bootstraps cloud resources. The cloud steps are left out here; the
merge and the schema are Ray's own code.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.local_cluster import RAY_WORKER_PORTS, REPO_ROOT, TEMPLATE, ClusterSetupError, render_cluster_file

CLUSTER_YAML = REPO_ROOT / "cluster.yaml"


def ray_up_checks(path: Path) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(path.read_text()))
    validate_config(config)
    return config


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [cmd for key in keys for cmd in config.get(key, [])]


def render_local(tmp_path: Path) -> Path:
    values = {name: f"/tmp/x/{name}" for name in re.findall(r"\{\{(\w+)\}\}", TEMPLATE.read_text())}
    values.update(cluster_name="fea-local-test", ssh_user="root", num_cpus=2,
                  **{name: 40100 + i for i, name in enumerate(sorted(values)) if name.endswith("_port")})
    return render_cluster_file(TEMPLATE, tmp_path / "cluster.yaml", values)


def test_cloud_cluster_passes_ray_validation():
    config = ray_up_checks(CLUSTER_YAML)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no GPU worker type"
    for name, node_type in gpu_types.items():
        assert node_type["min_workers"] == 0 < node_type["max_workers"], f"{name} does not autoscale from zero"
        assert node_type["node_config"]["IamInstanceProfile"], f"{name} has no instance role for object storage"
    assert any('pip install -e ".[gpu]"' in cmd for cmd in config["worker_setup_commands"])
    assert any('pip install -e ".[gpu]"' in cmd for cmd in config["head_setup_commands"])


def test_cloud_cluster_holds_no_credentials():
    text = CLUSTER_YAML.read_text()
    for secret in ("aws_secret_access_key", "aws_access_key_id", "aws_session_token"):
        assert secret not in text.lower()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "an AWS access key id is in cluster.yaml"


def test_local_cluster_template_passes_ray_validation(tmp_path):
    config = ray_up_checks(render_local(tmp_path))
    assert (config["provider"]["type"], config["provider"]["head_ip"]) == ("local", "127.0.0.1")
    assert config["max_workers"] == 0
    assert config["auth"]["ssh_proxy_command"].startswith("ssh ")  # the private sshd's high port


def test_local_cluster_never_runs_ray_stop(tmp_path):
    """`ray stop` kills every Ray process it can see; on a shared machine that means other people's."""
    config = ray_up_checks(render_local(tmp_path))
    assert config["head_start_ray_commands"], "empty start commands would fall back to Ray's (with `ray stop`)"
    assert not [cmd for cmd in all_commands(config) if "ray stop" in cmd]


def test_local_cluster_sets_every_fixed_default_port(tmp_path):
    start = " ".join(ray_up_checks(render_local(tmp_path))["head_start_ray_commands"])
    for flag in ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                 "--temp-dir"):
        assert f"{flag}=" in start, f"{flag} left to Ray's default, shared with every other Ray here"


def test_render_refuses_unfilled_placeholders(tmp_path):
    with pytest.raises(ClusterSetupError, match="ssh_port"):
        render_cluster_file(TEMPLATE, tmp_path / "c.yaml", {"cluster_name": "x"})


def test_free_ports_avoid_ray_worker_range():
    from tests.support.local_cluster import free_ports

    ports = free_ports(12)
    assert len(set(ports)) == 12
    assert not [p for p in ports if p in RAY_WORKER_PORTS]


def test_validation_catches_a_misspelt_key(tmp_path):
    """The schema check has teeth: a typo in a top-level key is refused, as `ray up` would."""
    import jsonschema

    bad = tmp_path / "cluster.yaml"
    bad.write_text(CLUSTER_YAML.read_text().replace("idle_timeout_minutes:", "idle_timeout_minute:"))
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        ray_up_checks(bad)


def test_gpu_synth_config_is_a_valid_synth_section():
    from engine.core.config import SynthConfig, load_config

    cfg = load_config(SynthConfig, REPO_ROOT / "configs" / "synth-gpu.yaml", section="synth")
    assert cfg.generation.backend == "vllm" and cfg.generator_num_gpus == 1
    assert cfg.generation.temperature == 0.0 and cfg.generation.max_new_tokens == 1024
    gpus = sum(t["resources"].get("GPU", 0) * t["max_workers"]
               for t in yaml.safe_load(CLUSTER_YAML.read_text())["available_node_types"].values()
               if "max_workers" in t)
    assert cfg.generators * cfg.generator_num_gpus <= gpus, "more generators than the cluster can hold"
