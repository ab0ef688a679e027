"""The light modules must not pull in the heavy ML stack: `fea --help`, scoring and the filter stay fast."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LIGHT = ["engine.core.types", "engine.core.config", "engine.core.facs", "engine.core.verifier", "engine.core.prompts", "engine.core.scoring",
         "engine.cli"]
HEAVY = ["torch", "transformers", "ray", "vllm", "trl", "peft"]


def test_light_modules_import_no_heavy_module():
    code = (f"import importlib, json, sys\n"
            f"for name in {LIGHT!r}: importlib.import_module(name)\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
