"""Training and evaluation: committed shards -> SFT / GRPO (TRL + PEFT) -> a merged checkpoint -> metrics.

- data.py      shards / datasets -> streamed TRL datasets, several sources mixed by weight
- rewards.py   GRPO reward callables over engine.core.verifier (the same scores the synthesis filter uses)
- common.py    model loading, LoRA / full fine-tuning, TrainingArguments, checkpoints, final save
- sft.py       run_sft(SFTSection): one SFT run, top to bottom
- grpo.py      run_grpo(GRPOSection): one GRPO run, top to bottom
- run.py       training_config(...) and train(stage, config): `fea train sft|grpo` (config file + flags)
- metrics.py   the paper's metrics as pure functions
- eval.py      run_eval(EvalSection): `fea eval` (backend generation, metrics, report)
- ray_launch.py  `accelerate launch` on every node of a Ray cluster, submitted as a Ray job
"""
