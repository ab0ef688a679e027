#!/usr/bin/env bash
# The real training commands (`fea train sft|grpo`, bf16 on one GPU, fp32 on a CPU) and the engine's hf generator
# backend (batch 1, the paper's loop, vs batched), timed, on the tiny model and synthetic faces.
# Needs torch, transformers, peft, accelerate, trl, datasets and pydantic (no Ray, no vLLM):
#   bash bench/gpu_stack.sh OUT_FOLDER        # writes sft.json, grpo.json, generate.json there
set -euo pipefail
OUT=${1:-${OUT:-.}}
WORK=$(mktemp -d)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m engine.cli model tiny --out "$WORK/tiny" >/dev/null
python3 -m engine.cli faces --n 64 --out "$WORK/faces" >/dev/null
LORA='{enabled: true, r: 16, alpha: 32, dropout: 0.0, target_modules: [q_proj, k_proj, v_proj, o_proj]}'
cat > "$WORK/gpu.yaml" <<YAML
sft: {lora: $LORA, max_steps: 40, per_device_train_batch_size: 8, learning_rate: 2.0e-4, precision: auto,
      save_steps: 40, logging_steps: 10, report_to: [none]}
grpo: {lora: $LORA, max_steps: 8, per_device_train_batch_size: 8, num_generations: 4, max_completion_length: 64,
       precision: auto, save_steps: 8, logging_steps: 1, report_to: [none]}
YAML
DATA="$WORK/faces/samples.jsonl"
python3 -m engine.cli train sft --config "$WORK/gpu.yaml" --data "$DATA" --model "$WORK/tiny" --out "$WORK/sft" > "$OUT/sft.json"
python3 -m engine.cli train grpo --config "$WORK/gpu.yaml" --data "$DATA" --model "$WORK/sft/merged" --out "$WORK/grpo" > "$OUT/grpo.json"
python3 - "$WORK/grpo/merged" "$DATA" "$OUT/generate.json" <<'PY'
import json, sys, time
from engine.backends import create
from engine.core.config import GenerationConfig
from engine.data.dataset import iter_samples
from engine.core.prompts import make_request
from engine.core.types import SamplingParams

model, data, out = sys.argv[1:]
samples = list(iter_samples(data))[:32]
requests = [make_request(s, 0, hint=True) for s in samples]
params = SamplingParams(max_new_tokens=128)
rows = []
for batch_size in (1, 32):
    backend = create("hf", model, None, GenerationConfig(max_new_tokens=128, batch_size=batch_size))
    backend.generate(requests[:batch_size], params)  # warm-up
    backend.prefix_cache.clear()  # else the warm-up's prompts come back from the KV kept for retries
    start = time.perf_counter()
    attempts = [a for i in range(0, len(requests), batch_size) for a in backend.generate(requests[i:i + batch_size], params)]
    seconds = time.perf_counter() - start
    tokens = sum(a[0].completion_tokens for a in attempts)
    rows.append({"batch_size": batch_size, "requests": len(requests), "seconds": round(seconds, 3),
                 "generated_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1), "model_id": backend.model_id})
    backend.close()
json.dump(rows, open(out, "w"), indent=2)
print(json.dumps(rows, indent=2))
PY
