"""Run `fea train ...` under `accelerate launch` on every node of a Ray cluster.

Submitted as a Ray job, this reserves one bundle per node (STRICT_SPREAD placement group), asks the
first bundle's node for its IP (the rendezvous host), then starts one `accelerate launch` per node
with its machine rank; they form one torch.distributed group (DDP or DeepSpeed, from the accelerate
config), exactly as if launched by hand on each node:

    ray job submit --working-dir . -- python -m trainer.ray_launch --nodes 2 --gpus-per-node 8 \\
        --accelerate-config configs/accelerate/zero3.yaml -- train grpo --config configs/grpo.yaml --out runs/grpo

Every node must see the same --out path for checkpoints to be shared (a shared filesystem), or
rank 0's node holds them. With --nodes 1 --gpus-per-node 0 it runs on CPU (used by the tests).
The loop's `placement: ray` trains through `launch` (engine/loop/placement.py), which reports where each
node's part ran.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence


def accelerate_command(fea_args: Sequence[str], *, accelerate_config: str | None, nodes: int, rank: int,
                       processes_per_node: int, main_ip: str, port: int) -> list[str]:
    """The per-node command line: accelerate's launcher around `python -m engine.cli <fea_args>`."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", accelerate_config]
    cmd += ["--num_machines", str(nodes), "--machine_rank", str(rank),
            "--num_processes", str(nodes * processes_per_node),
            "--main_process_ip", main_ip, "--main_process_port", str(port)]
    return cmd + ["-m", "engine.cli", *fea_args]


def launch(fea_args: Sequence[str], *, nodes: int = 1, gpus_per_node: int = 0, cpus_per_node: float = 1.0,
           accelerate_config: str | None = None, port: int = 29500,
           files: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Runs the training on `nodes` Ray nodes, each first writing `files` (path -> text, e.g. a config
    file the nodes do not share). Returns one report per node, by rank (see `_run_node`); raises if
    a node failed."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from engine.cluster.connect import ensure_ray

    started = ensure_ray()  # joins the cluster of a submitted job (RAY_ADDRESS), else a local one
    bundle = {"CPU": cpus_per_node, **({"GPU": gpus_per_node} if gpus_per_node else {})}
    group = placement_group([bundle] * nodes, strategy="STRICT_SPREAD" if nodes > 1 else "PACK")
    ray.get(group.ready())

    def on(rank: int) -> dict:
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
                "num_cpus": cpus_per_node, "num_gpus": gpus_per_node}

    try:
        main_ip = ray.get(ray.remote(ray.util.get_node_ip_address).options(**on(0)).remote())
        processes = max(gpus_per_node, 1)
        reports = ray.get([
            ray.remote(_run_node).options(**on(rank)).remote(accelerate_command(
                fea_args, accelerate_config=accelerate_config, nodes=nodes, rank=rank,
                processes_per_node=processes, main_ip=main_ip, port=port), dict(files or {}))
            for rank in range(nodes)])
    finally:
        remove_placement_group(group)
        if started:
            ray.shutdown()
    codes = [report["exit_code"] for report in reports]
    if any(codes):
        raise RuntimeError(f"training failed on some node: exit codes by rank {codes}")
    return reports


def _run_node(cmd: list[str], files: dict[str, str]) -> dict[str, Any]:
    """One node's part, in a Ray worker: where it ran (node, the worker's pid, the launcher's), which
    actors the cluster held while it trained (what it shared the nodes with), and its exit code."""
    import ray

    for path, text in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    launcher = subprocess.Popen(cmd)
    report = {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
              "worker_pid": os.getpid(), "launcher_pid": launcher.pid, **cluster_actors()}
    report["exit_code"] = launcher.wait()
    return report


def cluster_actors() -> dict[str, dict[str, int]]:
    """Actor counts by class, alive and gone. Read from Ray's GCS: the state API (ray.util.state)
    would need the dashboard, which a local Ray here runs without."""
    import ray

    actors = ray._private.state.actors().values()
    alive = Counter(a["ActorClassName"] for a in actors if a["State"] != "DEAD")
    gone = Counter(a["ActorClassName"] for a in actors if a["State"] == "DEAD")
    return {"actors_alive": dict(alive), "actors_gone": dict(gone)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.ray_launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", dest="gpus_per_node", type=int, default=0)
    parser.add_argument("--cpus-per-node", dest="cpus_per_node", type=float, default=1.0)
    parser.add_argument("--accelerate-config", dest="accelerate_config")
    parser.add_argument("--port", type=int, default=29500)
    parser.add_argument("fea_args", nargs=argparse.REMAINDER, help="after --: the `fea` arguments, e.g. train sft ...")
    args = parser.parse_args(argv)
    fea_args = args.fea_args[1:] if args.fea_args[:1] == ["--"] else args.fea_args
    if not fea_args:
        parser.error("give the fea command after --, e.g. -- train sft --config configs/sft.yaml")
    launch(fea_args, nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node,
           accelerate_config=args.accelerate_config, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
