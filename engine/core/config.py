"""Typed configuration: one section per component, loaded from YAML, overridden from the command line.

Every field carries a description (it doubles as CLI help); unknown keys are errors, so a typo in a
YAML file fails loudly instead of silently using a default.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.backends.registry import BACKENDS


def _template_name(name: str) -> str:
    from engine.core.templates import is_template_name, resolve

    if not is_template_name(name):
        raise ValueError(f"unknown prompt template set {name!r}: facial-r1, full, compact, engine or a .yaml file")
    try:
        resolve(name)  # a template file is read and checked now, not on the first prompt of a remote actor
    except (OSError, ValueError) as err:
        raise ValueError(f"prompt template file {name}: {err}") from None
    return name


PromptStyleName = Annotated[str, AfterValidator(_template_name)]
PROMPT_STYLE_HELP = ("Prompt template set (default full: this project's choice; real-model configs use facial-r1): "
                     "facial-r1 (the official repository's wording), full (this project's, with the AU definitions "
                     "and a worked example), compact (its rules and format only; small models, CPU runs) or a YAML "
                     "template file (engine/core/templates.py).")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    path: str = Field("", description="Model folder: local path or s3:// prefix (copied once to a node-local cache).")
    adapter: str | None = Field(None, description="Optional PEFT LoRA adapter folder (local or s3://) on top of `path`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto = bfloat16 on GPU, float32 on CPU for hf, bfloat16 for vllm.")


class VerifierConfig(Section):
    policy: Literal["strict", "paper"] = Field(
        "strict", description="Acceptance policy for synthesis: strict (this project's default) or paper (the "
                              "official synthesis filter, src/eval/infer_emotion.py).")
    au_weight: float = Field(1.0, description="Weight of R_AU in the total reward (the paper: R = R_AU + R_acc + "
                                              "R_format; the official grpo_emotion.sh trains with accuracy and "
                                              "format only, i.e. 0).")
    acc_weight: float = Field(1.0, description="Weight of R_acc in the total reward.")
    format_weight: float = Field(1.0, description="Weight of R_format in the total reward.")
    acc_without_label: float = Field(0.5, description="R_acc when the emotion is unknown (official code: 0.5, "
                                                      "grpo_jsonl.py default_accuracy_reward).")
    total_clamp: float = Field(10.0, description="The total reward is clamped to [-clamp, clamp] (official code: 10, "
                                                 "grpo_trainer.py torch.clamp(rewards, min=-10, max=10)).")
    forbidden_words: tuple[str, ...] = Field(("no", "not", "without", "maybe"),
                                             description="Whole words that reject a think text (strict policy).")
    hint_phrases: tuple[str, ...] = Field(
        ("ground truth", "must identify", "as required", "the final answer must", "given labels", "provided labels"),
        description="Phrases that show the label hint was echoed (strict policy), case-insensitive.")
    min_think_words: int = Field(8, ge=0, description="Strict policy: shortest accepted think text, in words.")
    max_think_words: int = Field(400, ge=1, description="Strict policy: longest accepted think text, in words.")

    @model_validator(mode="after")
    def _bounds(self) -> "VerifierConfig":
        if self.min_think_words > self.max_think_words:
            raise ValueError(f"min_think_words ({self.min_think_words}) must be <= max_think_words ({self.max_think_words})")
        return self


class GenerationConfig(Section):
    backend: Literal[tuple(BACKENDS)] = Field(  # type: ignore[valid-type]  # the registry's names
        "hf", description="Generator backend (engine/backends/registry.py).")
    max_new_tokens: int = Field(256, ge=1, description="Tokens generated per attempt at most.")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy (the official synthesis: infer_emotion.py "
                                                         "do_sample=False).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    n: int = Field(1, ge=1, description="Completions per attempt; the first accepted one wins.")
    seed: int = Field(0, description="Sampling seed.")
    batch_size: int = Field(16, ge=1, description="Requests per generate call (hf) / per actor call (vllm).")
    kv_reuse_mb: int = Field(1024, ge=0, description="hf: MiB of KV cache kept per generator so that a retry "
                                                     "prefills only its new turn (least recently used dropped "
                                                     "first; 0 = off).")
    decode_cache_mb: int = Field(0, ge=0, description="hf on CPU: MiB of KV one decode batch may hold; longer "
                                                      "prompts then decode in smaller batches whose KV every step "
                                                      "reads from the CPU's cache rather than from memory. Helps "
                                                      "when generators share a cache (two on a 2-core VM: 48); "
                                                      "0 = no limit. Not applied on GPU.")
    hf_decoder: Literal["auto", "generate"] = Field(
        "auto", description="hf: 'auto' decodes Qwen2-VL-family models with the engine's own loop (KV kept "
        "across retries, the fast path of BENCHMARKS.md) and any other model with transformers' generate; "
        "'generate' uses generate for every model.")
    max_num_seqs: int = Field(256, ge=1, description="vLLM: sequences in its running batch at most, shared by "
                                                     "the batches in flight on one generator.")
    max_model_len: int = Field(2048, ge=256, description="vLLM context length.")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vLLM GPU memory share.")
    enforce_eager: bool = Field(True, description="vLLM: skip graph capture (faster start; best on CPU).")
    replay_path: str | None = Field(None, description="replay backend: JSONL/Parquet of stored completions.")


class SynthConfig(Section):
    input: str = Field("", description="Canonical Parquet dataset (local or s3://) or FEA-20K JSONL (with image_root).")
    image_root: str | None = Field(None, description="Image folder for JSONL input.")
    out: str = Field("", description="Output prefix: local folder or s3://bucket/prefix.")
    job_id: str | None = Field(None, description="Defaults to a hash of the output prefix, stable across reruns.")
    model: ModelConfig = ModelConfig()
    generation: GenerationConfig = GenerationConfig()
    verifier: VerifierConfig = VerifierConfig()
    generators: int = Field(1, ge=1, description="Generator actors (one per GPU on a cluster).")
    filters: int = Field(1, ge=1, description="Filter actors.")
    max_retries: int = Field(5, ge=0, description="Retries after the first attempt (official: 5, infer_emotion.py "
                                                   "--max_retry).")
    hint: bool = Field(True, description="Label-conditioned prompt (the official synthesis' Ground Truth block, "
                                         "src/eval/infer_emotion.py).")
    prompt_style: PromptStyleName = Field("full", description=PROMPT_STYLE_HELP)
    partition_size: int = Field(64, ge=1, description="Input samples per committed partition.")
    inflight_batches_per_generator: int = Field(2, ge=1, description="Batches queued per generator actor.")
    generator_num_cpus: float = Field(1.0, ge=0.0, description="CPUs reserved per generator actor.")
    generator_num_gpus: float = Field(0.0, ge=0.0, description="GPUs per generator actor (1 on a GPU cluster).")
    progress: Literal["auto", "bar", "log", "off"] = Field("auto", description="auto: bar on a terminal, log lines otherwise.")


C = TypeVar("C", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the field and the rule."""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                section: str | None = None) -> C:
    """Build `cls` from a YAML file (optionally one top-level `section` of it) plus dotted overrides (a None
    value sets the key to null)."""
    tree: dict[str, Any] = {}
    if path is not None:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        tree = raw.get(section, {}) if section else raw
        if section and section not in raw:
            raise ConfigError(f"{path}: no top-level section '{section}'")
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    try:
        return cls.model_validate(tree)
    except ValidationError as err:
        where = f" in {path}" if path else ""
        lines = [": ".join(filter(None, (".".join(str(p) for p in e["loc"]), e["msg"]))) for e in err.errors()]
        raise ConfigError(f"invalid {cls.__name__}{where}:\n  " + "\n  ".join(lines)) from None


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- training and evaluation
PARTITION_ID = re.compile(r"^part-\d{5,}$")


class DataSource(Section):
    uri: str = Field(..., description="Synthesis output, canonical dataset or FEA-20K JSONL (local or s3://).")
    weight: float = Field(1.0, gt=0.0, description="Relative sampling weight when several sources are mixed.")
    format: Literal["parquet", "wds"] = Field(
        "parquet", description="Synthesis output only: read its accepted Parquet shards or its WebDataset tars "
                               "(either is sha256-checked against the commit records).")
    partitions: tuple[str, ...] | None = Field(
        None, description="Synthesis output only: read exactly these committed partitions, in this order (ids as "
                          "the commit records are named, e.g. part-00003); unset = every committed partition.")
    follow: bool = Field(False, description="Synthesis output only: keep reading partitions committed after "
                                            "training started, until the job's summary.json is written.")
    follow_timeout: float | None = Field(
        None, gt=0.0, description="With follow: stop waiting for new partitions after this many seconds.")

    @field_validator("partitions")
    @classmethod
    def _partition_ids(cls, ids: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if ids is None:
            return None
        bad = [i for i in ids if not PARTITION_ID.match(i)]
        if bad:
            raise ValueError(f"partition ids look like part-00003, got {bad[:3]}")
        if len(set(ids)) != len(ids):
            raise ValueError("a partition is listed twice")
        return ids

    @model_validator(mode="after")
    def _follow_all(self) -> "DataSource":
        if self.follow and self.partitions is not None:
            raise ValueError("follow reads every partition of the job; it cannot be combined with partitions")
        return self


class LoraSection(Section):
    enabled: bool = Field(True, description="Train a PEFT LoRA adapter; false = full fine-tuning.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        description="Module names that get adapters (language model; the vision tower is excluded when frozen).")
    modules_to_save: tuple[str, ...] = Field(
        (), description="Modules trained in full and saved beside the adapter (PEFT modules_to_save, e.g. lm_head).")


class TrainSection(Section):
    """What SFT and GRPO share: data, model, LoRA, optimiser, checkpoints, logging."""

    data: tuple[DataSource, ...] = Field((), description="Training sources, mixed by weight (flags: --data/--weights).")
    mix_stopping: Literal["all_exhausted", "first_exhausted"] = Field(
        "all_exhausted", description="Mixed stream ends when every source (or the first source) has run out once.")
    eval_data: tuple[DataSource, ...] = Field((), description="Optional held-out sources, evaluated every eval_steps.")
    model: ModelConfig = ModelConfig()
    out: str = Field("", description="Local output folder (checkpoints/, adapter/, merged/, runs/, checkpoint.json).")
    round: int = Field(0, ge=0, description="Self-improvement round recorded in checkpoint.json.")
    prompt_style: PromptStyleName = Field("full", description=PROMPT_STYLE_HELP)
    lora: LoraSection = LoraSection()
    freeze_vision: bool = Field(True, description="Keep the vision tower (and its merger) fixed.")
    learning_rate: float = Field(1e-4, gt=0.0, description="Peak learning rate.")
    lr_scheduler_type: str = Field("cosine", description="transformers scheduler name.")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    num_train_epochs: float = Field(1.0, gt=0.0, description="Passes over the data; used when max_steps <= 0.")
    max_steps: int = Field(-1, description="Optimiser steps; <= 0 derives them from num_train_epochs and a row count.")
    per_device_train_batch_size: int = Field(1, ge=1, description="Rows (GRPO: completions) per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations (saves memory on large models).")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 on GPU, fp32 on CPU.")
    shuffle_buffer: int = Field(1000, ge=0, description="Streaming shuffle buffer in rows (0 = no shuffle).")
    save_steps: int = Field(100, ge=1, description="Checkpoint every N steps (resume starts from the last one).")
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints kept (older ones are deleted).")
    eval_steps: int = Field(100, ge=1, description="Evaluate eval_data every N steps.")
    logging_steps: int = Field(10, ge=1, description="Log metrics every N steps.")
    report_to: tuple[str, ...] = Field(("tensorboard",), description="transformers report_to integrations ('none' = off).")
    seed: int = Field(42, description="Seed for initialisation, shuffling and sampling.")

    @model_validator(mode="after")
    def _sources(self) -> "TrainSection":
        uris = [source.uri for source in self.data]
        if len(set(uris)) != len(uris):
            raise ValueError(f"data lists a source twice: {uris}")
        return self


class SFTSection(TrainSection):
    max_length: int | None = Field(None, ge=16, description="Truncate tokenised rows to this length (None = never).")
    completion_only_loss: bool = Field(True, description="Loss on the assistant completion only, not on the prompt.")
    hint_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of rows (by id hash) whose prompt carries the label hint used in "
        "synthesis; 0 = the paper's SFT. Teaches a model too small to follow instructions to use the hint.")


class GRPOSection(TrainSection):
    learning_rate: float = Field(1e-6, gt=0.0, description="Peak learning rate (official: 1e-6, the default of "
                                                           "open_r1/trainer/grpo_config.py; grpo_emotion.sh sets none).")
    lr_scheduler_type: str = Field("constant", description="transformers scheduler name.")
    per_device_train_batch_size: int = Field(
        8, ge=1, description="Completions per device per step; times devices and accumulation, a multiple of num_generations.")
    num_generations: int = Field(8, ge=2, description="Group size G: completions sampled per prompt (official: 8, "
                                                      "run_scripts/grpo_emotion.sh --num_generations 8).")
    beta: float = Field(0.0, ge=0.0, description="KL coefficient against the reference model (official: 0.0, "
                                                 "run_scripts/grpo_emotion.sh --beta 0.0; 0 loads no reference model).")
    epsilon: float = Field(0.2, gt=0.0, description="PPO-style clip range (official: 0.2, grpo_config.py default).")
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature of the rollouts (official: 1, "
                                                        "grpo_trainer.py GenerationConfig(temperature=1)).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass of the rollouts.")
    max_completion_length: int = Field(256, ge=1, description="Tokens generated per rollout at most (official: 256, "
                                                            "run_scripts/grpo_emotion.sh --max_completion_length 256).")
    num_iterations: int = Field(1, ge=1, description="Optimisation passes per generated batch (mu).")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "grpo", description="TRL loss aggregation; 'grpo' (per-sequence mean) is what the official code uses "
                            "(grpo_trainer.py compute_loss).")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="Advantage normalisation.")
    verifier: VerifierConfig = VerifierConfig()
    record_rewards: bool = Field(True, description="Append every (completion, gold, rewards) to OUT/rewards.jsonl.")
    log_completions: bool = Field(False, description="TRL: print/log sample completions at each logging step.")
    use_vllm: bool = Field(False, description="Generate rollouts with vLLM (GPU; TRL supports vLLM 0.22-0.31).")
    vllm_mode: Literal["colocate", "server"] = Field("colocate", description="vLLM inside the trainer or a server.")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0, description="GPU share for colocated vLLM.")


class EvalSection(Section):
    data: str = Field("", description="Test set: synthesis output, canonical dataset or FEA-20K JSONL.")
    model: ModelConfig = ModelConfig()
    out: str = Field("", description="Local folder for metrics.json, predictions.jsonl, report.md and plots.")
    generation: GenerationConfig = GenerationConfig(max_new_tokens=1024)
    verifier: VerifierConfig = VerifierConfig()
    limit: int | None = Field(None, ge=1, description="Evaluate the first N samples only.")
    prompt_style: PromptStyleName = Field("full", description=PROMPT_STYLE_HELP)


class LoopResources(Section):
    """What the loop's training and evaluation steps ask Ray for when `placement` is ray."""

    train_nodes: int = Field(1, ge=1, description="Nodes per training step: one accelerate launch on each, "
                             "forming one torch.distributed group (trainer/ray_launch.py).")
    train_gpus_per_node: int = Field(0, ge=0, description="GPUs per training node, one training process each "
                                     "(0: one process on CPU).")
    train_cpus_per_node: float = Field(1.0, gt=0.0, description="CPUs reserved per training node.")
    accelerate_config: str | None = Field(None, description="accelerate config for training (DDP or DeepSpeed, "
                                          "e.g. configs/accelerate/zero2.yaml); none = accelerate's defaults.")
    eval_gpus: float = Field(0.0, ge=0.0, description="GPUs for an evaluation step (1 for a vLLM engine).")
    eval_cpus: float = Field(1.0, gt=0.0, description="CPUs for an evaluation step.")


# Settings every stage must share (the model is trained, rewarded, asked for data and evaluated alike),
# and the loop sections that carry them.
SHARED_STAGE_SETTINGS = {"prompt_style": ("sft", "retrain", "grpo", "synth", "eval"),
                         "verifier": ("grpo", "synth", "eval")}


def _comparable(value: Any) -> Any:
    return tuple(sorted(value.model_dump().items())) if isinstance(value, BaseModel) else value


def _with_shared(section: Any, name: str, key: str, value: Any) -> Any:
    """`section` (a dict, a model or absent) with `key` set to the loop-level `value`."""
    if isinstance(section, BaseModel):
        fields = {k: getattr(section, k) for k in section.model_fields_set}
    else:
        fields = dict(section or {})
    if key in fields and _comparable(_as_setting(key, fields[key])) != _comparable(_as_setting(key, value)):
        raise ValueError(f"{name}.{key} differs from loop.{key}; declare it once, as loop.{key}")
    return {**fields, key: value}


def _as_setting(key: str, value: Any) -> Any:
    return VerifierConfig.model_validate(value) if key == "verifier" and value is not None else value


class LoopConfig(Section):
    """The self-improvement loop: seed SFT, then per round GRPO -> synthesis -> retraining -> evaluation.

    The loop fills in each stage's data, model and output paths; the stage sections hold everything else.
    """

    out: str = Field("", description="Run folder (local or s3://): one round-NN/ folder per round, report.md.")
    work_dir: str | None = Field(None, description="Local folder for checkpoints when `out` is s3:// (default: a new "
                                 "temp dir; set it so that --resume finds a killed training step's checkpoints).")
    base_model: ModelConfig = ModelConfig()
    seed_data: tuple[str, ...] = Field((), description="Seed reasoning set(s) for round-0 SFT and every retraining.")
    pool: str = Field("", description="Labelled pool to synthesise reasoning for (canonical dataset or FEA-20K JSONL).")
    test: str = Field("", description="Held-out test set for the evaluation step.")
    image_root: str | None = Field(None, description="Image folder for JSONL pool input.")
    pool_per_round: int | None = Field(
        None, ge=1, description="Each round reaches this many more pool samples (round r: the first (r + 1) x N, "
        "less those accepted before), as labelled data keeps arriving; None = the whole pool every round.")
    rounds: int = Field(2, ge=1, description="Rounds at most.")
    patience: int = Field(1, ge=1, description="Stop after this many rounds without a better held-out score.")
    min_improvement: float = Field(0.0, ge=0.0, description="A round must beat the best score by more than this.")
    score: Literal["emotion_accuracy", "au_macro_f1", "rouge_l_f", "rege"] = Field(
        "rege", description="Held-out score that decides early stopping (rege = accuracy + ROUGE-L, FABA-Bench style).")
    retrain_from: Literal["base", "continue"] = Field(
        "base", description="Retrain each round from the base model on all data so far, or continue from the last model.")
    evaluate_stages: bool = Field(True, description="Also evaluate the base model, the seed SFT and each GRPO "
                                  "model on the held-out set (each round's retrained model always is).")
    control: bool = Field(True, description="Run the control arm: the base model trained on the seed set alone "
                          "for as many optimizer steps as the final model had, evaluated the same way.")
    placement: Literal["driver", "ray"] = Field(
        "driver", description="Where training and evaluation run: in the loop's driver process (the CPU demo: no "
        "process start-up per step), or as Ray work asking for `resources` (GPU clusters: configs/loop-gpu.yaml). "
        "Either way the generator actors are let go first whenever they hold what those steps need.")
    resources: LoopResources = LoopResources()
    overlap: bool = Field(False, description="Start each round's retraining once its synthesis has committed a first "
                          "partition and feed it the rest as they are committed (the trainer follows the job); "
                          "needs placement: driver and CPU generators, which keep running beside the training.")
    prompt_style: PromptStyleName | None = Field(
        None, description="The one prompt template set of every stage (SFT, GRPO, synthesis, eval): the model must "
        "be trained, rewarded, asked for data and evaluated with the same prompts. Unset: the stages' own values, "
        "which must then agree.")
    verifier: VerifierConfig | None = Field(
        None, description="The one verifier of every stage that scores completions (GRPO rewards, the synthesis "
        "filter, eval). Unset: the stages' own values, which must then agree.")
    grpo: GRPOSection = GRPOSection()
    sft: SFTSection = SFTSection()
    retrain: SFTSection | None = Field(None, description="SFT settings for retraining (default: the `sft` section).")
    synth: SynthConfig = SynthConfig()
    eval: EvalSection = EvalSection()

    @model_validator(mode="before")
    @classmethod
    def _hand_down_shared(cls, data: Any) -> Any:
        """Copies the loop-level shared settings into each stage section; a section that sets one of them
        to another value is an error, so each is declared in one place."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, sections in SHARED_STAGE_SETTINGS.items():
            if data.get(key) is None:
                continue
            for name in sections:
                if name == "retrain" and data.get(name) is None:  # no retrain section: the sft one serves
                    continue
                data[name] = _with_shared(data.get(name), name, key, data[key])
        return data

    @model_validator(mode="after")
    def _stages_agree(self) -> "LoopConfig":
        for key, sections in SHARED_STAGE_SETTINGS.items():
            values = {name: getattr(section, key) for name in sections
                      if (section := getattr(self, name)) is not None}
            if len({_comparable(v) for v in values.values()}) > 1:
                shown = ", ".join(f"{name}: {_comparable(v)}" for name, v in values.items())
                raise ValueError(f"the stages disagree on {key} ({shown}); declare it once as loop.{key}")
        return self

    @model_validator(mode="after")
    def _required(self) -> "LoopConfig":
        missing = [name for name in ("out", "pool", "test") if not getattr(self, name)]
        if not self.base_model.path:
            missing.append("base_model.path")
        if not self.seed_data:
            missing.append("seed_data")
        if missing:
            raise ValueError(f"the loop needs {', '.join(missing)}")
        if self.overlap:
            self._check_overlap()
        return self

    def _check_overlap(self) -> None:
        if self.placement != "driver" or self.synth.generator_num_gpus > 0:
            raise ValueError("overlap needs placement: driver and CPU generators (generator_num_gpus: 0): the "
                             "generators keep their resources while the retraining runs")
        retrain = self.retrain or self.sft
        if retrain.max_steps <= 0 and retrain.warmup_ratio > 0:
            raise ValueError("overlap: a retraining that follows synthesis has no step horizon to warm up over; "
                             "set the retraining's warmup_ratio to 0 or give it max_steps")
