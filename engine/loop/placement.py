"""Where the loop's training and evaluation steps run, and what they find free when they start.

`loop.placement: driver` runs them in the loop's driver process (the CPU demo: no process start-up
per step). `loop.placement: ray` runs them as Ray work that asks for its own resources
(`loop.resources`): training through trainer/ray_launch.py (one `accelerate launch` per node, DDP or
DeepSpeed from the accelerate config), evaluation as a Ray task holding its GPUs. Each publishes its
outputs to the run folder from the node that wrote them, so the driver may sit on a CPU-only node.

Before either kind of step the generator fleet lets go of its actors whenever they hold what the
step needs; only CPU generators beside driver-placed steps (the CPU demo) stay for the next round.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from engine.core.config import EvalSection, GRPOSection, LoopConfig, SFTSection
from engine.data import storage

LAUNCH_CONFIG = "launch-config.yaml"  # the training step's section, as `fea train --config` reads it


def generators_must_go(cfg: LoopConfig) -> bool:
    """Ray work asks Ray for the CPUs/GPUs the generators hold; a driver-placed step on a GPU would
    find it taken by their vLLM engines (whose own start-up check refuses a GPU that is not free)."""
    return cfg.placement == "ray" or cfg.synth.generator_num_gpus > 0


def make_room(cfg: LoopConfig, fleet) -> None:
    """Release the generator fleet (engine.synth.pool.GeneratorFleet) before a training or evaluation
    step when it must go; the next synthesis starts new generators."""
    if generators_must_go(cfg):
        fleet.release()


def publish_model(local: Path, uri: str) -> str:
    """The merged model's location in the run folder (uploaded when the run folder is on S3)."""
    merged = local / "merged"
    if not storage.is_s3(uri):
        return str(merged)
    storage.upload_dir(merged, storage.join(uri, "merged"))
    return storage.join(uri, "merged")


def publish_eval(local: Path, uri: str) -> str:
    """The evaluation folder the run report reads (uploaded when the run folder is on S3)."""
    if not storage.is_s3(uri):
        return str(local)
    storage.upload_dir(local, uri)
    return uri


# ---------------------------------------------------------------- training
def train(cfg: LoopConfig, section: SFTSection | GRPOSection, local: Path, uri: str) -> dict[str, Any]:
    """Train `section` (its data, model and local `out` filled in); returns the published model, the
    training summary and where it ran."""
    if cfg.placement == "ray":
        return _train_on_ray(cfg, section, local, uri)
    return {**_train_here(section, local, uri), "placement": {"kind": "driver", **_this_process()}}


def _train_here(section: SFTSection | GRPOSection, local: Path, uri: str) -> dict[str, Any]:
    from trainer.grpo import run_grpo
    from trainer.sft import run_sft

    train = run_grpo if isinstance(section, GRPOSection) else run_sft
    summary = train(section, resume=True)  # resume: a step killed mid-training continues from its checkpoint
    return {"model": publish_model(local, uri), "train": summary}


def _train_on_ray(cfg: LoopConfig, section: SFTSection | GRPOSection, local: Path, uri: str) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from trainer.ray_launch import launch

    stage = "grpo" if isinstance(section, GRPOSection) else "sft"
    config = str(local / LAUNCH_CONFIG)
    res = cfg.resources
    nodes = launch(["train", stage, "--config", config, "--resume"], nodes=res.train_nodes,
                   gpus_per_node=res.train_gpus_per_node, cpus_per_node=res.train_cpus_per_node,
                   accelerate_config=res.accelerate_config,
                   files={config: yaml.safe_dump({stage: section.model_dump(mode="json")}, sort_keys=False)})
    rank0 = NodeAffinitySchedulingStrategy(nodes[0]["node_id"], soft=False)  # the node holding the model
    trained = ray.get(ray.remote(_published_training).options(num_cpus=0, scheduling_strategy=rank0)
                      .remote(str(local), uri))
    return {**trained, "placement": {"kind": "ray", "driver_pid": os.getpid(), "nodes": nodes}}


def _published_training(local: str, uri: str) -> dict[str, Any]:
    """On the training's rank-0 node: its summary, and its model published to the run folder."""
    return {"model": publish_model(Path(local), uri),
            "train": json.loads((Path(local) / "summary.json").read_text())}


# ---------------------------------------------------------------- evaluation
def evaluate(cfg: LoopConfig, section: EvalSection, local: Path, uri: str) -> dict[str, Any]:
    """Evaluate `section` (data, model and local `out` filled in); returns the metrics, the published
    evaluation folder and where it ran."""
    if cfg.placement == "driver":
        return {**_evaluate_here(section, str(local), uri), "placement": {"kind": "driver", **_this_process()}}
    import ray

    task = ray.remote(_evaluate_on_worker).options(num_cpus=cfg.resources.eval_cpus,
                                                   num_gpus=cfg.resources.eval_gpus)
    evaluated = ray.get(task.remote(section, str(local), uri))
    evaluated["placement"].update(kind="ray", driver_pid=os.getpid())
    return evaluated


def _evaluate_here(section: EvalSection, local: str, uri: str) -> dict[str, Any]:
    from trainer.eval import run_eval

    metrics = run_eval(section)
    return {"metrics": metrics, "eval_dir": publish_eval(Path(local), uri)}


def _evaluate_on_worker(section: EvalSection, local: str, uri: str) -> dict[str, Any]:
    return {**_evaluate_here(section, local, uri), "placement": _this_process()}


def _this_process() -> dict[str, Any]:
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {"pid": os.getpid(), "node_id": node}
