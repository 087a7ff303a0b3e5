"""Configuration of the workers (actor, reference, rollout engine): typed dataclasses with a
default and a one-line docstring per field. `verl.trainer.config.PPOConfig` nests them under
`worker`; they live here, beside the code that reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from verl.algorithms.core_algos import LOSS_AGG_MODES, POLICY_LOSSES, TOKEN_KL_KINDS
from verl.algorithms.rollout_correction import ROLLOUT_CORRECTION_LEVELS, ROLLOUT_CORRECTION_MODES
from verl.models.lora import LoRAConfig
from verl.utils.ranges import (
    AT_LEAST_ONE,
    DEFAULT_OR_AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Choices,
    Range,
)

DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16")
"""The dtype names `verl.models.qwen_vl.resolve_dtype` takes (`auto`: bf16 on GPU, fp32 on CPU)."""

ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
"""The attention implementations the model code is built and tested with (`auto`:
flash_attention_2 where installed on GPU, else sdpa)."""


@dataclass
class OptimConfig:
    # Allowed values of the numeric fields (verl/utils/ranges.py), checked before Ray starts.
    RANGES: ClassVar[dict[str, Range]] = {
        "lr": POSITIVE, "betas": Range(0, 1, high_open=True), "eps": POSITIVE, "weight_decay": NON_NEGATIVE,
        "lr_warmup_ratio": FRACTION, "min_lr_ratio": FRACTION,
    }
    # Valid values of the choice fields (verl/utils/ranges.py), checked with the ranges.
    CHOICES: ClassVar[dict[str, Choices]] = {"lr_scheduler": ("constant", "cosine")}

    lr: float = 1e-6
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 1e-2
    """AdamW decoupled weight decay."""
    lr_warmup_ratio: float = 0.0
    """Fraction of training steps spent warming up linearly from 0."""
    lr_scheduler: str = "constant"
    """`constant` or `cosine` (after warm-up)."""
    min_lr_ratio: float = 0.0
    """Cosine floor as a fraction of lr."""


@dataclass
class FSDPConfig:
    CHOICES: ClassVar[dict[str, Choices]] = {"torch_dtype": DTYPES}

    param_offload: bool = False
    """Offload parameters to CPU between phases (GPU only)."""
    optimizer_offload: bool = False
    """Offload optimizer states to CPU between updates (GPU only)."""
    torch_dtype: str = "auto"
    """Parameter dtype: `auto` = bf16 on GPU, fp32 on CPU; or float32/bfloat16."""


PACKING_ATTENTION = ("dense", "segments", "flex")
"""The forms of the shared-prompt block mask (`verl.workers.engine.shared_prefix`)."""


@dataclass
class ModelConfig:
    CHOICES: ClassVar[dict[str, Choices]] = {
        "attn_implementation": ATTN_IMPLEMENTATIONS, "packing_attention": ("auto", *PACKING_ATTENTION),
    }

    model_path: str = ""
    """Hugging Face folder (or hub id on a machine with internet) of the policy (SFT: the model to fine-tune)."""
    tokenizer_path: str | None = None
    """Defaults to model_path."""
    attn_implementation: str = "auto"
    """`auto` = flash_attention_2 where installed on GPU, else sdpa."""
    enable_gradient_checkpointing: bool = False
    """Recompute activations in backward (saves memory on long responses)."""
    freeze_vision_tower: bool = False
    """Keep the vision encoder (patch embedding and blocks) fixed: train the language model and merger."""
    freeze_multi_modal_projector: bool = False
    """Keep the vision-to-language merger fixed too (with freeze_vision_tower: train the language model only)."""
    share_prompt_prefix: bool = True
    """Training-side forwards (log-probs, update, values) compute the responses of one prompt as
    ONE sequence [prompt | response 1 | ... | response n] with a block attention mask: the prompt
    and its images once per group instead of n times, the same log-probs and gradients
    (`verl/workers/engine/shared_prefix.py`)."""
    packing_attention: str = "auto"
    """How a packed group attends. Block-sparse (only the allowed blocks computed): `flex` =
    torch's flex_attention kernel (GPU only: torch has no flex backward on CPU), `segments` =
    the prompt once, then every response slot over [prompt keys | its own keys] in one sdpa call
    (any device). `dense` = one (L, L) mask through sdpa/eager, every block computed (the
    reference). `auto` = flex on GPU, segments on CPU. The block-sparse kernels keep the vision
    tower on `attn_implementation` (flash-attn included); dense with flash_attention_2 does not
    pack. The chosen path is printed at start-up and by the dry run."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters instead of full fine-tuning (rank > 0): only adapters train, the reference
    model is the base with adapters off, rollout engines receive merged weights."""


@dataclass
class RolloutCorrectionConfig:
    """Importance weights pi_trainer / pi_rollout on the policy loss, for the mismatch between
    the rollout engine and the trainer (verl.algorithms.rollout_correction)."""

    RANGES: ClassVar[dict[str, Range]] = {"threshold": Range(1, low_open=True)}
    CHOICES: ClassVar[dict[str, Choices]] = {"mode": ROLLOUT_CORRECTION_MODES, "level": ROLLOUT_CORRECTION_LEVELS}

    mode: str = "tis"
    """tis (truncated IS weights) | mis (tokens/sequences outside [1/threshold, threshold]
    dropped) | off. Applied when the rollout engine's log-probs are comparable to the trainer's:
    both engines return them at temperature 1, so only when worker.rollout.temperature is 1."""
    level: str = "token"
    """token (each token's ratio) | sequence (the product over the response, on every token)."""
    threshold: float = 2.0
    """TIS cap / MIS bound (> 1)."""

    def applies(self, rollout_temperature: float) -> bool:
        """Whether the correction runs: it is on and the engine's (temperature-1) log-probs
        describe the sampling distribution."""
        return self.mode != "off" and rollout_temperature == 1.0


@dataclass
class PAPOConfig:
    """PAPO's implicit perception loss (verl.algorithms.papo; arXiv 2507.06448): one extra
    forward per update micro-batch with part of every image hidden."""

    RANGES: ClassVar[dict[str, Range]] = {"kl_coef": NON_NEGATIVE, "mask_ratio": FRACTION, "entropy_coef": NON_NEGATIVE}

    enable: bool = False
    """Maximise KL(policy given the image || policy given the masked image) with the policy loss."""
    kl_coef: float = 0.01
    """gamma: weight of the perception KL (subtracted from the loss)."""
    mask_ratio: float = 0.6
    """Share of each image's patches hidden (the paper's 0.6)."""
    entropy_coef: float = 0.03
    """eta: weight of the double entropy loss H[policy] + H[policy | masked image] (0 = off)."""


@dataclass
class ActorConfig:
    # Allowed values of the numeric fields (verl/utils/ranges.py), checked before Ray starts.
    RANGES: ClassVar[dict[str, Range]] = {
        "ppo_epochs": AT_LEAST_ONE, "max_grad_norm": POSITIVE, "clip_ratio_low": Range(0, 1),
        "clip_ratio_high": NON_NEGATIVE, "clip_ratio_dual": Range(1, low_open=True),
        "kl_loss_coef": NON_NEGATIVE, "global_batch_size": AT_LEAST_ONE,
        "micro_batch_size_per_device_for_update": AT_LEAST_ONE,
        "micro_batch_size_per_device_for_experience": AT_LEAST_ONE,
        "max_token_len_per_device": DEFAULT_OR_AT_LEAST_ONE,
        "max_token_len_per_device_for_experience": DEFAULT_OR_AT_LEAST_ONE,
    }
    # POLICY_LOSSES is read at check time: a loss added to that table is a valid choice.
    CHOICES: ClassVar[dict[str, Choices]] = {
        "policy_loss": lambda: POLICY_LOSSES, "loss_agg_mode": LOSS_AGG_MODES, "kl_loss_type": TOKEN_KL_KINDS,
    }

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    global_batch_size: int = 128
    """Prompts per optimizer step (x rollout.n responses); rollout_batch_size must be a multiple."""
    micro_batch_size_per_device_for_update: int = 4
    """Responses per forward/backward on one device (gradient accumulation fills the rest)."""
    micro_batch_size_per_device_for_experience: int = 16
    """Responses per forward when computing old/ref log-probs."""
    use_dynamic_batch_size: bool = True
    """Form micro-batches by a token budget (max_token_len_per_device*) instead of a row count;
    rows of similar length share a micro-batch. Either way every micro-batch is cut to its
    longest row (no padding to max_prompt_length + max_response_length)."""
    max_token_len_per_device: int | None = None
    """Update: tokens per micro-batch (rows x longest prompt + longest response in it); None =
    micro_batch_size_per_device_for_update x (max_prompt_length + max_response_length), the
    size of a fully padded fixed micro-batch."""
    max_token_len_per_device_for_experience: int | None = None
    """Old log-probs: the same budget for the no-grad forward; None = from
    micro_batch_size_per_device_for_experience likewise."""
    skip_old_log_prob_when_on_policy: bool = True
    """With one mini-batch per step and ppo_epochs 1 the update is exactly on-policy: use the
    update's own detached log-probs as old log-probs instead of a separate forward pass
    (not when KL is in the reward, which needs them before the advantages)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    policy_loss: str = "ppo"
    """ppo (clipped surrogate, clip-higher, dual-clip) | gspo (sequence ratio and clip) |
    gspo_token | cispo (clipped, stop-gradient IS weight on log pi). See docs/algorithms.md."""
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    clip_ratio_low: float = 0.2
    """PPO lower clip (1 - eps_low); gspo: on the sequence ratio; cispo: IS-weight lower bound;
    1 = no lower bound (a ratio is never below 0). gspo/gspo_token/cispo choose their paper's
    value unless this is set (POLICY_LOSS_DEFAULTS)."""
    clip_ratio_high: float = 0.3
    """PPO upper clip (1 + eps_high); > low is DAPO's clip-higher; gspo/cispo as above (gspo
    chooses its paper's value unless this is set)."""
    clip_ratio_dual: float = 3.0
    """Dual-clip bound c for negative advantages (Ye et al. 2020)."""
    loss_agg_mode: str = "token-mean"
    """token-mean | seq-mean-token-sum | seq-mean-token-mean | seq-mean-token-sum-norm (gspo
    chooses seq-mean-token-mean unless this is set)."""
    use_kl_loss: bool = True
    """Add KL(actor || ref) as a loss term (GRPO); False puts KL in the reward if kl_coef > 0."""
    kl_loss_coef: float = 1e-2
    """Weight of the KL loss."""
    kl_loss_type: str = "low_var_kl"
    """kl | abs | mse | low_var_kl (the sampled-token estimators, verl.algorithms.core_algos.kl_penalty)."""
    entropy_coeff: float = 0.0
    """Entropy bonus weight (entropy is always logged)."""
    papo: PAPOConfig = field(default_factory=PAPOConfig)


POLICY_LOSS_DEFAULTS: dict[str, dict[str, float | str]] = {
    # GSPO (arXiv 2507.18071, sec. 5.1): the sequence ratio is a per-token geometric mean, so
    # its clip range is ~1e-4 wide; the objective averages sequences (verl: seq-mean-token-mean).
    # Under PPO's 0.2/0.3 and token-mean it is a length-weighted, almost unclipped objective.
    "gspo": {"loss_agg_mode": "seq-mean-token-mean", "clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4},
    "gspo_token": {"loss_agg_mode": "seq-mean-token-mean", "clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4},
    # CISPO (arXiv 2506.13585, sec. 3.1): only the upper bound of the IS weight is tuned; there
    # is no floor (1 - 1 = 0, which a ratio never goes below).
    "cispo": {"clip_ratio_low": 1.0},
}
"""worker.actor.policy_loss -> the values of ActorConfig fields its paper uses; a run that
chooses the loss gets them for every field it did not set itself (`PPOConfig.apply_method_defaults`)."""


@dataclass
class CriticConfig:
    """The value model of algorithm.adv_estimator=gae (verl.workers.critic.PPOCritic): the
    policy's model family with a scalar value head, its own FSDP shards, AdamW and checkpoint
    (`global_step_N/critic/`). Unused by the other estimators."""

    RANGES: ClassVar[dict[str, Range]] = {
        "micro_batch_size_per_device_for_update": AT_LEAST_ONE,
        "micro_batch_size_per_device_for_experience": AT_LEAST_ONE,
        "max_token_len_per_device": DEFAULT_OR_AT_LEAST_ONE, "ppo_epochs": AT_LEAST_ONE,
        "max_grad_norm": POSITIVE, "clip_range_value": POSITIVE,
    }
    CHOICES: ClassVar[dict[str, Choices]] = {"loss_agg_mode": LOSS_AGG_MODES}

    model_path: str | None = None
    """Language model the critic starts from (a fresh zero value head on top); None = the actor's."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5))
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    micro_batch_size_per_device_for_update: int = 4
    """Responses per forward/backward of the value update."""
    micro_batch_size_per_device_for_experience: int = 16
    """Responses per forward when computing values."""
    max_token_len_per_device: int | None = None
    """Token budget per update micro-batch (see worker.actor.use_dynamic_batch_size); None = from
    micro_batch_size_per_device_for_update."""
    ppo_epochs: int = 1
    """Passes of the value update over each rollout batch."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    clip_range_value: float = 0.5
    """Value-loss clip: predictions move at most this far from the collection-time values."""
    loss_agg_mode: str = "token-mean"
    """Aggregation of the per-token value loss (see worker.actor.loss_agg_mode)."""


@dataclass
class RefConfig:
    RANGES: ClassVar[dict[str, Range]] = {
        "micro_batch_size_per_device_for_experience": AT_LEAST_ONE,
        "max_token_len_per_device_for_experience": DEFAULT_OR_AT_LEAST_ONE,
    }

    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    micro_batch_size_per_device_for_experience: int = 16
    """Responses per forward when computing reference log-probs."""
    max_token_len_per_device_for_experience: int | None = None
    """Token budget per forward (see worker.actor.use_dynamic_batch_size); None = from
    micro_batch_size_per_device_for_experience x (max_prompt_length + max_response_length)."""


@dataclass
class RolloutConfig:
    # Allowed values of the numeric fields (verl/utils/ranges.py), checked before Ray starts.
    RANGES: ClassVar[dict[str, Range]] = {
        "temperature": NON_NEGATIVE, "top_p": PROBABILITY, "top_k": Range(0, also=(-1,)),
        "min_response_length": NON_NEGATIVE, "val_temperature": NON_NEGATIVE, "val_n": AT_LEAST_ONE,
        "max_batch_size": AT_LEAST_ONE, "gpu_memory_utilization": PROBABILITY,
        "max_model_len": DEFAULT_OR_AT_LEAST_ONE, "max_num_batched_tokens": AT_LEAST_ONE,
        "tensor_parallel_size": AT_LEAST_ONE, "cpu_kvcache_space_gib": AT_LEAST_ONE,
        "limit_images": AT_LEAST_ONE, "n": AT_LEAST_ONE,
    }
    CHOICES: ClassVar[dict[str, Choices]] = {"name": ("hf", "vllm"), "dtype": DTYPES}

    name: str = "hf"
    """Engine: `hf` (transformers generate, always available) or `vllm`."""
    n: int = 8
    """Responses sampled per prompt (the GRPO group size)."""
    temperature: float = 1.0
    """Sampling temperature; 0 = greedy."""
    top_p: float = 0.99
    """Nucleus sampling."""
    top_k: int = -1
    """Top-k sampling; -1 = off."""
    seed: int = 1
    """Base sampling seed (step and rank are mixed in)."""
    min_response_length: int = 0
    """Training rollouts: stop tokens suppressed before this many tokens (0 = off; benchmarks
    use it to force equal-length responses)."""
    dtype: str = "auto"
    """Engine dtype: auto = bf16 on GPU, fp32 on CPU."""
    val_temperature: float = 0.0
    """Validation sampling temperature (0 = greedy)."""
    val_n: int = 1
    """Validation responses per prompt."""
    max_batch_size: int = 64
    """HF engine: prompts per generate call (vLLM schedules by itself)."""
    gpu_memory_utilization: float = 0.6
    """vLLM: fraction of GPU memory for weights + KV cache."""
    enforce_eager: bool = False
    """vLLM: disable CUDA graphs (always eager on CPU)."""
    max_model_len: int | None = None
    """vLLM: context length; default the longest row of either pass (prompt + response)."""
    max_num_batched_tokens: int = 8192
    """vLLM: tokens per scheduler step."""
    enable_chunked_prefill: bool = False
    """vLLM: split long prefills across steps."""
    tensor_parallel_size: int = 1
    """vLLM: tensor-parallel ranks per engine (1 on CPU)."""
    free_cache_engine: bool = True
    """vLLM on GPU: sleep (free KV cache and weights) outside generation."""
    cpu_kvcache_space_gib: int = 1
    """vLLM on CPU: KV-cache size in GiB."""
    limit_images: int = 1
    """Images per prompt the engine reserves memory for."""


@dataclass
class WorkerConfig:
    actor: ActorConfig = field(default_factory=ActorConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


@dataclass(frozen=True)
class RankSetup:
    """What one rank of the hybrid engine needs beyond `WorkerConfig`, resolved by the trainer
    from the run's other sections (`PPOConfig.rank_setup`), so the worker never reads them."""

    device: str
    """`auto`, `cuda` or `cpu` (trainer.device)."""
    seed: int
    """Seeds torch before the models are built (trainer.seed)."""
    with_reference: bool
    """Build a frozen reference model (a KL loss or an in-reward KL penalty)."""
    with_critic: bool
    """Build a value model (the GAE estimator)."""
    with_rollout: bool
    """Build a rollout engine in the rank (colocated); false when engines run as their own
    worker group (trainer.rollout_mode=one_step_off)."""
    min_pixels: int
    """Image sizing of the rollout engine's processor (data.min_pixels)."""
    max_pixels: int
    """Image sizing of the rollout engine's processor (data.max_pixels)."""
    longest_row: int
    """Prompt + response tokens of the longest row either pass (rollout, self-reward re-prompt)
    produces: the default dynamic-batch token budget and vLLM context length."""
