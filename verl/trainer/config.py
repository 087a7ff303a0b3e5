"""Typed configuration for every section of a run.

A run's config is `PPOConfig`: YAML (`config=file.yaml`) merged onto these defaults, then dotted
CLI overrides (`trainer.max_steps=2`). Unknown keys and wrong types are errors that name the key
(and the closest valid key); derived batch sizes are checked up front by `PPOConfig.validate`.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from verl.algorithms.core_algos import ADVANTAGE_ESTIMATORS, TOKEN_KL_KINDS
from verl.rewards.loader import DEFAULT_TIMEOUT_S as DEFAULT_REWARD_TIMEOUT_S
from verl.utils.tracking import SINKS
from verl.utils.ranges import (
    AT_LEAST_ONE,
    DEFAULT_OR_AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    OFF_OR_AT_LEAST_ONE,
    POSITIVE,
    Choices,
    Range,
    check_ranges,
)
from verl.stages.config import DEFAULT_JUDGE_MAX_ERROR_RATE, SelfRewardConfig  # noqa: F401  (re-exported)
from verl.workers.config import (  # noqa: F401  (worker sections, re-exported for existing imports)
    ActorConfig,
    CriticConfig,
    FSDPConfig,
    ModelConfig,
    OptimConfig,
    POLICY_LOSS_DEFAULTS,
    RolloutCorrectionConfig,
    RefConfig,
    RankSetup,
    RolloutConfig,
    WorkerConfig,
)

DATA_POSITION = "the data position"
LR_SCHEDULE = "the lr schedule"
RESUME_SETTINGS: dict[str, str | None] = {
    "data.train_files": DATA_POSITION,
    "data.seed": DATA_POSITION,
    "data.shuffle": DATA_POSITION,
    "data.rollout_batch_size": DATA_POSITION,
    "worker.actor.optim.lr_scheduler": LR_SCHEDULE,
    "worker.actor.optim.lr_warmup_ratio": LR_SCHEDULE,
    "worker.actor.optim.min_lr_ratio": LR_SCHEDULE,
    "worker.actor.optim.lr": None,
    "worker.actor.global_batch_size": None,
    "worker.actor.ppo_epochs": None,
    "worker.rollout.n": None,
    "worker.rollout.seed": None,
    "trainer.seed": None,
    "trainer.total_epochs": None,
    "trainer.max_steps": None,
}
"""The settings a checkpoint records (`verl/trainer/resume_settings.py`): key -> what changing it
on resume breaks (None: the change applies cleanly from the resumed step on)."""


class ConfigError(ValueError):
    """A configuration problem, with a message written for the user."""


@dataclass
class DataConfig:
    # Allowed values of the numeric fields (verl/utils/ranges.py), checked before Ray starts.
    RANGES: ClassVar[dict[str, Range]] = {
        "max_prompt_length": AT_LEAST_ONE, "max_response_length": AT_LEAST_ONE,
        "val_batch_size": OFF_OR_AT_LEAST_ONE, "min_pixels": AT_LEAST_ONE, "max_pixels": AT_LEAST_ONE,
        "rollout_batch_size": AT_LEAST_ONE,
    }

    train_files: str = ""
    """Training set: parquet/jsonl/json file, `datasets` dir, or `name@split`."""
    val_files: str = ""
    """Validation set, same forms as train_files; empty disables validation."""
    prompt_key: str = "problem"
    """Column holding the question (with `<image>` placeholders)."""
    answer_key: str = "answer"
    """Column holding the ground-truth answer."""
    image_key: str = "images"
    """Column holding the list of images (paths, bytes or {bytes, path} structs)."""
    format_prompt: str | None = None
    """Jinja file rendered with `content=question` (e.g. configs/format_prompt/sr1.jinja)."""
    system_prompt: str | None = None
    """Optional system message."""
    max_prompt_length: int = 512
    """Prompt tokens after image-token expansion; longer prompts are filtered or rejected."""
    max_response_length: int = 512
    """Tokens generated per response in the first (rollout) pass."""
    filter_overlong_prompts: bool = True
    """True: drop over-long prompts at load time (count logged); False: error naming the row."""
    rollout_batch_size: int = 512
    """Prompts per step (each sampled worker.rollout.n times)."""
    val_batch_size: int = -1
    """Prompts per validation generation call; -1 = the whole validation set at once."""
    shuffle: bool = True
    """Shuffle training prompts each epoch (seeded)."""
    seed: int = 1
    """Seed of the training-data order."""
    min_pixels: int = 262144
    """Images are resized to at least this many pixels (shared by trainer and rollout engines)."""
    max_pixels: int = 4194304
    """...and at most this many."""


@dataclass
class OverlongConfig:
    """DAPO overlong reward shaping (verl.algorithms.dapo.overlong_penalty)."""

    # buffer_length's upper bound is data.max_response_length: PPOConfig._validate_algorithm.
    RANGES: ClassVar[dict[str, Range]] = {"buffer_length": NON_NEGATIVE, "penalty_factor": NON_NEGATIVE}

    buffer_length: int = 0
    """Soft buffer L_cache in tokens before data.max_response_length; 0 = off."""
    penalty_factor: float = 1.0
    """Scale of the penalty (at most -penalty_factor, added to the overall score)."""


@dataclass
class DynamicSamplingConfig:
    """DAPO dynamic sampling (verl.algorithms.dapo.select_groups)."""

    # Allowed values of the numeric fields (verl/utils/ranges.py), checked before Ray starts.
    # At most 1000 tries: draw k of step s samples with seed worker.rollout.seed + 1000 s + k.
    RANGES: ClassVar[dict[str, Range]] = {"max_tries": Range(1, 1000)}

    enable: bool = False
    """Drop prompts whose n responses all score the same; draw new prompts to refill the batch.
    Needs a group-relative algorithm.adv_estimator (GROUP_RELATIVE_ESTIMATORS)."""
    metric: str = "accuracy"
    """Reward component whose spread is checked: accuracy, as DAPO and verl (overall would count
    a group whose answers are all right or all wrong as informative when only the format or the
    overlong penalty differs)."""
    max_tries: int = 4
    """Generation batches per step, the first included (each with its own sampling seed)."""
    fill_after_max_tries: bool = False
    """When the tries run out before the batch holds enough prompts with spread: false stops the
    run with an error, as verl does (when the training data runs out instead, the run ends
    before that step, its last full step saved); true fills the rest with prompts without
    spread, printed and counted in dynamic_sampling/filler_prompts, their advantage set to 0."""


@dataclass
class AlgorithmConfig:
    # Allowed values of the numeric fields (verl/utils/ranges.py), checked before Ray starts.
    RANGES: ClassVar[dict[str, Range]] = {
        "gamma": FRACTION, "lam": FRACTION, "kl_coef": NON_NEGATIVE, "kl_target": POSITIVE, "kl_horizon": POSITIVE,
    }
    # Valid values of the choice fields (verl/utils/ranges.py), checked with the ranges. remax needs
    # the greedy baseline the trainer generates and gae the critic's values, so neither is a plain
    # estimator of the registry (read at check time: an estimator added to it is a valid choice).
    CHOICES: ClassVar[dict[str, Choices]] = {
        "adv_estimator": lambda: (*ADVANTAGE_ESTIMATORS, "remax", "gae"),
        "kl_penalty": TOKEN_KL_KINDS, "kl_type": ("fixed", "adaptive"),
    }

    adv_estimator: str = "grpo"
    """grpo | rloo | reinforce_plus_plus | reinforce_plus_plus_baseline | remax (baseline: the
    reward of one extra greedy response per prompt, through the same engine) | gae (a learned
    critic, worker.critic)."""
    norm_adv_by_std_in_grpo: bool = True
    """False = Dr. GRPO (mean-centred advantages)."""
    gamma: float = 1.0
    """Discount for REINFORCE++ and GAE returns."""
    lam: float = 1.0
    """GAE lambda (1: Monte-Carlo return minus the value; 0: one-step TD)."""
    reward_weights: dict[str, float] = field(default_factory=dict)
    """Multi-reward mode: component -> weight, each component group-normalised separately and
    summed (e.g. {accuracy: 0.5, visual: 0.5}); empty = one advantage from `overall`."""
    kl_penalty: str = "low_var_kl"
    """KL-in-reward estimator when worker.actor.use_kl_loss is False: kl | abs | mse | low_var_kl."""
    kl_coef: float = 0.0
    """KL-in-reward coefficient (0 disables it)."""
    kl_type: str = "fixed"
    """fixed | adaptive KL-in-reward controller."""
    kl_target: float = 0.1
    """Adaptive controller target KL."""
    kl_horizon: float = 10000.0
    """Adaptive controller horizon."""
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)


@dataclass
class RewardConfig:
    # Allowed values of the numeric fields (verl/utils/ranges.py), checked before Ray starts.
    RANGES: ClassVar[dict[str, Range]] = {
        "timeout_s": POSITIVE,
    }

    reward_function: str = "sr1"
    """Built-in name (sr1, r1v, see_think, cot) or `path/to/file.py:function`."""
    reward_function_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the reward function (e.g. accuracy_weight, format_weight)."""
    timeout_s: float = DEFAULT_REWARD_TIMEOUT_S
    """Longest one call of the reward function (one step's batch) may take; a function that does
    not return in time stops the run with an error naming it and the step, instead of a hang."""


@dataclass
class TrainerConfig:
    # Allowed values of the numeric fields (verl/utils/ranges.py), checked before Ray starts.
    RANGES: ClassVar[dict[str, Range]] = {
        "total_epochs": AT_LEAST_ONE, "max_steps": DEFAULT_OR_AT_LEAST_ONE, "val_freq": OFF_OR_AT_LEAST_ONE,
        "save_freq": Range(1, also=(-1, 0)), "save_limit": OFF_OR_AT_LEAST_ONE,
        "val_generations_to_log": NON_NEGATIVE, "val_blank_image_prompts": Range(0, also=(-1,)),
        "ray_num_cpus": DEFAULT_OR_AT_LEAST_ONE, "worker_timeout_s": POSITIVE, "dry_run_gpu_memory_gib": POSITIVE,
        "nnodes": AT_LEAST_ONE, "n_gpus_per_node": AT_LEAST_ONE,
        "rollout_nnodes": AT_LEAST_ONE, "rollout_n_gpus_per_node": AT_LEAST_ONE,
    }
    CHOICES: ClassVar[dict[str, Choices]] = {
        "logger": SINKS, "device": ("auto", "cuda", "cpu"), "rollout_mode": ("colocated", "one_step_off"),
    }

    project_name: str = "vision_sr1"
    """Logger project."""
    experiment_name: str = "run"
    """Logger run name."""
    logger: list[str] = field(default_factory=lambda: ["console", "file"])
    """console, file (JSONL, always on), wandb, tensorboard."""
    nnodes: int = 1
    """Nodes in the Ray cluster."""
    n_gpus_per_node: int = 8
    """Worker processes per node (GPUs; on CPU, processes)."""
    device: str = "auto"
    """auto | cuda | cpu."""
    rollout_mode: str = "colocated"
    """colocated: each training rank also holds a rollout engine, and a step generates, then
    trains (verl's hybrid engine). one_step_off: the engines are a worker group of their own
    (trainer.rollout_nnodes x trainer.rollout_n_gpus_per_node processes) that generates step k+1's
    batch, self-reward re-answers included, while step k trains; that batch comes from weights
    one update old (docs/architecture.md, "One-step-off rollout")."""
    rollout_nnodes: int = 1
    """one_step_off: nodes of the rollout worker group."""
    rollout_n_gpus_per_node: int = 1
    """one_step_off: rollout engine processes per node (one GPU each; on CPU, one core each)."""
    ray_address: str | None = None
    """Existing Ray cluster address; None = start a local one."""
    ray_num_cpus: int | None = None
    """CPUs for a local Ray (None = all)."""
    total_epochs: int = 1
    """Passes over the training set."""
    max_steps: int | None = None
    """Stop after this many steps (overrides epochs when smaller)."""
    val_freq: int = -1
    """Validate every N steps (-1: never during training)."""
    val_before_train: bool = True
    """Validate once before the first step."""
    val_only: bool = False
    """Only validate, then exit."""
    val_generations_to_log: int = 0
    """Validation samples printed per validation."""
    val_blank_image_prompts: int = 64
    """Blank-image control: the first N validation prompts are answered again with every image
    blanked (same size), logged as val/vision/* (accuracy_blank_image, vision_reliance,
    accuracy_drop); 0 = off, -1 = every validation prompt."""
    save_freq: int = -1
    """Checkpoint every N steps (-1: only at the end; 0: never, e.g. for benchmarks)."""
    save_limit: int = -1
    """Keep the newest N checkpoints (-1: all)."""
    save_checkpoint_path: str | None = None
    """Checkpoint root; default checkpoints/{project_name}/{experiment_name}."""
    load_checkpoint_path: str | None = None
    """Resume from this global_step_N dir; None = the latest under save_checkpoint_path."""
    find_last_checkpoint: bool = True
    """Resume automatically from the latest complete checkpoint."""
    start_fresh_if_all_damaged: bool = False
    """When every checkpoint under the checkpoint root fails its integrity check: false stops the
    run naming them; true renames them to global_step_N.damaged (kept as evidence) and trains
    from step 0."""
    resume_allow_changes: list[str] = field(default_factory=list)
    """Settings (e.g. `data.rollout_batch_size`) a resume may change although the change breaks
    the saved data position or lr schedule; every change is printed, these are not refused
    (verl/trainer/resume_settings.py lists the settings a checkpoint records)."""
    seed: int = 1
    """Model-side seed (init of randomness in workers)."""
    dry_run: bool = False
    """Check the recipe and exit: config, batch arithmetic, data schema, the real model shape on
    the meta device and a per-GPU memory estimate (verl/trainer/dry_run.py); no Ray, no weights,
    no GPU needed."""
    dry_run_gpu_memory_gib: float = 80.0
    """Memory per GPU the dry run's estimate is compared with."""
    worker_timeout_s: float = 3600.0
    """Longest one stage call (generation, log-probs, update, save, ...) may run on the workers;
    ranks still running after it fail the run with an error naming them and the stage. A rank
    that dies fails the stage at once, whatever this is."""

    @property
    def checkpoint_root(self) -> str:
        """The folder this run owns: checkpoints, metrics.jsonl, its lock (run.lock) and error.log."""
        return self.save_checkpoint_path or os.path.join("checkpoints", self.project_name, self.experiment_name)


@dataclass
class PPOConfig:
    data: DataConfig = field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    self_reward: SelfRewardConfig = field(default_factory=SelfRewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @property
    def world_size(self) -> int:
        return self.trainer.nnodes * self.trainer.n_gpus_per_node

    def rank_setup(self) -> RankSetup:
        """The values of the data, algorithm, self-reward and trainer sections one worker rank reads."""
        data, self_reward = self.data, self.self_reward
        longest_row = data.max_prompt_length + data.max_response_length
        if self_reward.enable:
            longest_row = max(longest_row, self_reward.max_prompt_length + self_reward.max_response_length)
        return RankSetup(
            device=self.trainer.device,
            seed=self.trainer.seed,
            with_reference=self.worker.actor.use_kl_loss or self.algorithm.kl_coef > 0,
            with_critic=self.algorithm.adv_estimator == "gae",
            with_rollout=self.trainer.rollout_mode == "colocated",
            min_pixels=data.min_pixels,
            max_pixels=data.max_pixels,
            longest_row=longest_row,
        )

    def apply_method_defaults(self, explicit_keys: set[str]) -> list[str]:
        """Gives the chosen policy loss its paper's settings (`POLICY_LOSS_DEFAULTS`) for every
        field not in `explicit_keys` (the dotted keys the YAML file and the command line set);
        returns one line saying what it chose and which set values differ from the paper's
        (`load_config` prints it)."""
        actor = self.worker.actor
        chosen, kept = [], []
        for name, paper_value in POLICY_LOSS_DEFAULTS.get(actor.policy_loss, {}).items():
            if f"worker.actor.{name}" not in explicit_keys:
                setattr(actor, name, paper_value)
                chosen.append(f"worker.actor.{name}={paper_value}")
            elif getattr(actor, name) != paper_value:
                kept.append(f"worker.actor.{name}={getattr(actor, name)} (paper: {paper_value})")
        if not chosen and not kept:
            return []
        line = f"worker.actor.policy_loss={actor.policy_loss}:"
        if chosen:
            line += f" its paper's {' '.join(chosen)};"
        if kept:
            line += f" set explicitly, kept: {' '.join(kept)};"
        return [line.rstrip(";")]

    def validate(self) -> None:
        """Checks derived values before anything starts; each message names the clashing numbers."""
        data, actor, rollout, trainer = self.data, self.worker.actor, self.worker.rollout, self.trainer
        try:
            check_ranges(self)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if trainer.ray_address is not None and trainer.ray_num_cpus is not None:  # ray.init refuses the pair
            raise ConfigError(
                f"trainer.ray_num_cpus={trainer.ray_num_cpus} sizes a local Ray, but trainer.ray_address="
                f"{trainer.ray_address} joins a running cluster, whose nodes declared their CPUs at `ray start`: "
                "set trainer.ray_num_cpus=null"
            )
        if trainer.device == "cpu" and actor.model.packing_attention == "flex":
            raise ConfigError(
                "worker.actor.model.packing_attention=flex needs a GPU (torch has no flex_attention backward on CPU); "
                "use segments (the CPU default), dense or auto with trainer.device=cpu"
            )
        self._validate_algorithm()
        if not actor.model.model_path:
            raise ConfigError("worker.actor.model.model_path is empty: set it to a Hugging Face model folder")
        if not data.train_files and not trainer.val_only:
            raise ConfigError("data.train_files is empty: set it to a parquet/jsonl file or name@split")
        if data.rollout_batch_size % actor.global_batch_size != 0:
            raise ConfigError(
                f"data.rollout_batch_size={data.rollout_batch_size} is not a multiple of "
                f"worker.actor.global_batch_size={actor.global_batch_size}"
            )
        responses_per_update = actor.global_batch_size * rollout.n
        if responses_per_update % self.world_size != 0:
            raise ConfigError(
                f"worker.actor.global_batch_size={actor.global_batch_size} x worker.rollout.n={rollout.n} "
                f"= {responses_per_update} responses per update do not split over world size "
                f"{self.world_size} (trainer.nnodes={trainer.nnodes} x trainer.n_gpus_per_node={trainer.n_gpus_per_node})"
            )
        per_device = responses_per_update // self.world_size
        if per_device % actor.micro_batch_size_per_device_for_update != 0:
            raise ConfigError(
                f"{responses_per_update} responses per update / world size {self.world_size} = {per_device} per "
                f"device, not a multiple of worker.actor.micro_batch_size_per_device_for_update="
                f"{actor.micro_batch_size_per_device_for_update}"
            )
        if trainer.rollout_mode == "one_step_off" and rollout.tensor_parallel_size > 1:
            raise ConfigError(
                f"trainer.rollout_mode=one_step_off runs one engine per rollout process; worker.rollout."
                f"tensor_parallel_size={rollout.tensor_parallel_size} needs colocated rollout"
            )
        if rollout.tensor_parallel_size > 1 and self.world_size % rollout.tensor_parallel_size != 0:
            raise ConfigError(
                f"worker.rollout.tensor_parallel_size={rollout.tensor_parallel_size} does not divide "
                f"world size {self.world_size}"
            )
        if rollout.name == "vllm" and rollout.max_model_len is not None:
            # Prompts are checked against max_prompt_length with image tokens expanded when the
            # data loads; a shorter engine context would cut or refuse them mid-run instead.
            for prefix, prompt, response in (
                ("data", data.max_prompt_length, data.max_response_length),
                ("self_reward", self.self_reward.max_prompt_length, self.self_reward.max_response_length),
            ):
                if prefix == "self_reward" and not self.self_reward.enable:
                    continue
                if rollout.max_model_len < prompt + response:
                    raise ConfigError(
                        f"worker.rollout.max_model_len={rollout.max_model_len} < {prefix}.max_prompt_length={prompt} + "
                        f"{prefix}.max_response_length={response}: prompts (image tokens included) would not fit "
                        "the engine's context"
                    )
        unknown = [key for key in trainer.resume_allow_changes if key not in RESUME_SETTINGS]
        if unknown:
            raise ConfigError(
                f"trainer.resume_allow_changes={unknown}: not settings a checkpoint records; those are "
                f"{', '.join(RESUME_SETTINGS)}"
            )
        if data.min_pixels > data.max_pixels:
            raise ConfigError(f"data.min_pixels={data.min_pixels} > data.max_pixels={data.max_pixels}")
        try:
            actor.model.lora.check("worker.actor.model.lora")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self._validate_self_reward()
        if self.self_reward.judge == "openai" and not (self.self_reward.judge_base_url and self.self_reward.judge_model):
            raise ConfigError("self_reward.judge=openai needs self_reward.judge_base_url and self_reward.judge_model")

    def _validate_self_reward(self) -> None:
        """The objectives that need the second pass, and the tag style the reward reads."""
        sr, reward = self.self_reward, self.reward
        if sr.objective in ("separate", "paper_v2") and not sr.enable:
            raise ConfigError(f"self_reward.objective={sr.objective} needs self_reward.enable=true")
        if sr.objective == "paper_v2" and sr.judge != "policy":
            raise ConfigError(
                "self_reward.objective=paper_v2 trains the policy's own re-answers (the visual rollout); "
                f"it needs self_reward.judge=policy, got {sr.judge!r}"
            )
        reward_tags = reward.reward_function_kwargs.get("tags", "sr1")
        if sr.enable and reward.reward_function == "sr1" and reward_tags != sr.tags:
            raise ConfigError(
                f"reward.reward_function_kwargs.tags={reward_tags!r} differs from self_reward.tags={sr.tags!r}: "
                "the reward would grade a different format than the stage re-prompts from"
            )

    def _validate_algorithm(self) -> None:
        """The algorithm settings that cannot work together (each field's own values are checked
        by its RANGES and CHOICES)."""
        algorithm = self.algorithm
        if algorithm.adv_estimator == "gae" and self.worker.critic.fsdp.optimizer_offload:
            raise ConfigError(
                "worker.critic.fsdp.optimizer_offload=true is not implemented for the critic (its AdamW state stays "
                "on the GPU); use worker.critic.fsdp.param_offload=true to keep its state on the CPU"
            )
        overlong, dynamic = algorithm.overlong, algorithm.dynamic_sampling
        if overlong.buffer_length > self.data.max_response_length:
            raise ConfigError(
                f"algorithm.overlong.buffer_length={overlong.buffer_length} must be in [0, "
                f"data.max_response_length={self.data.max_response_length}]"
            )
        if dynamic.enable and algorithm.adv_estimator not in GROUP_RELATIVE_ESTIMATORS:
            # Dropping groups without spread is free only where such a group's advantage is 0.
            raise ConfigError(
                f"algorithm.dynamic_sampling.enable=true needs a group-relative algorithm.adv_estimator "
                f"(one of {', '.join(GROUP_RELATIVE_ESTIMATORS)}), got {algorithm.adv_estimator!r}: under it a "
                "group whose responses all score the same still has a non-zero advantage"
            )
        multi_reward = bool(algorithm.reward_weights) or self.self_reward.objective in ("separate", "paper_v2")
        if multi_reward and (overlong.buffer_length > 0 or algorithm.adv_estimator in ("remax", "gae")):
            raise ConfigError(
                "algorithm.overlong and adv_estimator=remax/gae use the single `overall` score; they do not apply "
                "with algorithm.reward_weights or self_reward.objective=separate/paper_v2"
            )
        if dynamic.enable and self.self_reward.objective in ("separate", "paper_v2"):
            raise ConfigError(
                f"algorithm.dynamic_sampling.enable=true does not support self_reward.objective="
                f"{self.self_reward.objective} (its pass-2 rows are tied to one generation batch)"
            )



GROUP_RELATIVE_ESTIMATORS: tuple[str, ...] = ("grpo", "rloo", "reinforce_plus_plus_baseline")
"""Estimators that give a group whose scores are all equal an advantage of exactly 0 (the
others compare with a batch mean, a greedy response or a critic)."""


ConfigT = TypeVar("ConfigT")
YAML_BOOLEAN_WORDS = ("on", "off", "yes", "no", "y", "n")


def _all_keys(schema: type, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        keys.append(key)
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys.extend(_all_keys(type(default), key + "."))
    return keys


def _explain(error: OmegaConfBaseException, schema: type, source: str) -> ConfigError:
    key = getattr(error, "full_key", None) or ""
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
        renamed = getattr(schema, "RENAMED_KEYS", {}).get(key)
        close = [renamed] if renamed else difflib.get_close_matches(key, _all_keys(schema), n=1, cutoff=0.5)
        hint = f" ({'renamed to' if renamed else 'did you mean'} '{close[0]}'{'' if renamed else '?'})" if close else ""
        return ConfigError(f"{source}: unknown config key '{key}'{hint}")
    detail = str(error).splitlines()[0]
    return ConfigError(f"{source}: bad value for '{key}': {detail}")


def load_config(schema: type[ConfigT], yaml_path: str | None, overrides: list[str]) -> ConfigT:
    """Defaults of `schema` <- YAML file <- `key=value` overrides, type-checked; returns the
    dataclass instance. Errors name the offending key and where it came from."""
    config: DictConfig = OmegaConf.structured(schema)
    explicit_keys: set[str] = set()  # what the user set, for apply_method_defaults
    if yaml_path:
        if not os.path.isfile(yaml_path):
            raise ConfigError(f"config file {yaml_path} does not exist")
        try:
            loaded = OmegaConf.load(yaml_path)
            config = OmegaConf.merge(config, loaded)
        except OmegaConfBaseException as error:
            raise _explain(error, schema, yaml_path) from None
        explicit_keys |= _dotted_keys(loaded)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"command-line override {override!r} is not of the form key=value")
        key, value = override.split("=", 1)
        if value.lower() in YAML_BOOLEAN_WORDS:
            # YAML 1.1 reads `off`/`on`/`yes`/`no` as booleans, which a string field would keep
            # as "False"; quoted they stay words (and a boolean field still converts them).
            override = f"{key}='{value}'"
        try:
            piece = OmegaConf.from_dotlist([override])
            config = OmegaConf.merge(config, piece)
        except OmegaConfBaseException as error:
            raise _explain(error, schema, f"command line '{override}'") from None
        explicit_keys |= _dotted_keys(piece)
    try:
        result = OmegaConf.to_object(config)
    except OmegaConfBaseException as error:
        raise _explain(error, schema, "config") from None
    apply_method_defaults = getattr(result, "apply_method_defaults", None)
    if apply_method_defaults is not None:
        for line in apply_method_defaults(explicit_keys):
            print(line, flush=True)
    return result  # type: ignore[return-value]


def _dotted_keys(node: Any, prefix: str = "") -> set[str]:
    """Every key a loaded YAML/dotlist piece sets, dotted (`worker.actor.clip_ratio_low`)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if not isinstance(node, dict):
        return set()
    keys: set[str] = set()
    for key, value in node.items():
        keys.add(f"{prefix}{key}")
        keys |= _dotted_keys(value, f"{prefix}{key}.")
    return keys


def parse_cli(schema: type[ConfigT], argv: list[str]) -> ConfigT:
    """`config=path.yaml key=value ...` as EasyR1's CLI takes them."""
    yaml_path = None
    overrides = []
    for arg in argv:
        if arg.startswith("config="):
            yaml_path = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    return load_config(schema, yaml_path, overrides)


def parse_cli_or_exit(schema: type[ConfigT], argv: list[str] | None, usage: str) -> ConfigT | None:
    """The entry points' shared prologue: usage for no arguments or --help (returns None),
    otherwise the parsed and validated config; a config error prints and exits with code 2."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return None
    try:
        config = parse_cli(schema, argv)
        config.validate()
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    return config


def to_yaml(config: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
