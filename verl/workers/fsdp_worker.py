"""One rank of the hybrid engine: the FSDP actor, the frozen FSDP reference and the rollout
engine live in one process (verl's colocated layout; with trainer.rollout_mode=one_step_off the
engines live in `RolloutWorker`s instead, and this rank publishes its weights for them). The
worker executes; it never decides the algorithm: every quantity it computes is asked for by the
trainer."""

from __future__ import annotations

import os
from datetime import timedelta

import ray
import torch
import torch.distributed as dist
from transformers import AutoConfig
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy

from verl.models.lora import adapters_disabled
from verl.models.qwen_vl import recurrent_layers, resolve_attn_implementation, resolve_dtype
from verl.protocol import DataProto
from verl.utils.network import find_free_port
from verl.utils import checkpoint
from verl.models.value_head import mark_value_checkpoint
from verl.utils.manifest import digest_files
from verl.workers.actor import PPOActor, compute_log_probs
from verl.workers.config import RankSetup, WorkerConfig
from verl.workers.critic import PPOCritic
from verl.workers.engine.engine import resume_policy, save_policy
from verl.workers.engine.fsdp import shard_model
from verl.workers.engine.model import build_policy, build_trained_policy
from verl.workers.engine.shared_prefix import plan_attention
from verl.workers.rollout_host import RolloutHost, worker_device
from verl.workers.rollout_worker import rollout_weights_path, save_rollout_weights
from verl.workers.weight_sync import gather_policy_weights, sync_weights


class FSDPWorker(RolloutHost):
    """A Ray actor (wrapped by RayWorkerGroup); torch.distributed rank from the environment."""

    def __init__(self, config: WorkerConfig, setup: RankSetup, total_optimizer_steps: int):
        self.config = config
        self.setup = setup
        self.total_optimizer_steps = total_optimizer_steps
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        self.device = worker_device(setup.device)

    def master_address(self) -> tuple[str, int]:
        """This node's address and a free port, for rank 0 to host the rendezvous."""
        return ray.util.get_node_ip_address(), find_free_port()

    def init_distributed(self, master_addr: str, master_port: int) -> None:
        os.environ["MASTER_ADDR"] = master_addr
        os.environ["MASTER_PORT"] = str(master_port)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))

    def init_model(self) -> str:
        """Builds the actor (and reference, critic, rollout engine); returns the attention
        plan's one-line reason, which the trainer prints."""
        cfg = self.config
        torch.manual_seed(self.setup.seed)
        model_cfg = cfg.actor.model
        actor_fsdp = cfg.actor.fsdp
        # Actor, reference and critic attend alike: packed (and how) or one row each.
        self.attention = plan_attention(
            resolve_attn_implementation(model_cfg.attn_implementation, self.device),
            model_cfg.share_prompt_prefix, model_cfg.packing_attention, self.device.type,
            recurrent_layers(AutoConfig.from_pretrained(model_cfg.model_path).get_text_config()),
        )
        self.share_prefix = self.attention.packing is not None
        # fp32 master weights; compute in bf16 on GPU through FSDP mixed precision.
        self.actor_module = build_trained_policy(
            model_cfg, actor_fsdp, self.device, self.mesh, self.attention.model_attention, "worker.actor.model.lora"
        )
        actor_cfg = cfg.actor
        self.actor = PPOActor(
            self.actor_module,
            actor_cfg,
            self.total_optimizer_steps,
            cfg.rollout.temperature,
            offload_optimizer=actor_fsdp.optimizer_offload and self.device.type == "cuda",
            max_token_len=self._token_budget(actor_cfg.max_token_len_per_device, actor_cfg.micro_batch_size_per_device_for_update),
            max_token_len_for_experience=self._token_budget(
                actor_cfg.max_token_len_per_device_for_experience, actor_cfg.micro_batch_size_per_device_for_experience
            ),
            share_prefix=self.share_prefix,
        )
        self.ref_module = None
        # With LoRA the reference is the actor with its adapters off (`compute_ref_log_probs`).
        if self.setup.with_reference and not model_cfg.lora.enabled:
            ref_dtype = resolve_dtype(cfg.ref.fsdp.torch_dtype, self.device)
            ref_model = build_policy(
                model_cfg.model_path, self.device, self.attention.model_attention, dtype=ref_dtype, trainable=False,
                move_to_device=not cfg.ref.fsdp.param_offload,
            )
            self.ref_module = shard_model(
                ref_model, self.mesh, MixedPrecisionPolicy(param_dtype=ref_dtype), cfg.ref.fsdp.param_offload
            )
        self.critic = self._build_critic() if self.setup.with_critic else None
        if self.setup.with_rollout:
            self.build_rollout()
        return self.attention.reason

    def _build_critic(self) -> PPOCritic:
        """GAE's value model: the actor's model family with a value head, its own FSDP shards,
        AdamW and lr schedule (one optimizer step per mini-batch, like the actor)."""
        cfg, critic_cfg = self.config, self.config.critic
        model_cfg = cfg.actor.model
        dtype = resolve_dtype(critic_cfg.fsdp.torch_dtype, self.device)
        model = build_policy(
            critic_cfg.model_path or model_cfg.model_path, self.device, self.attention.model_attention,
            gradient_checkpointing=model_cfg.enable_gradient_checkpointing,
            move_to_device=not critic_cfg.fsdp.param_offload, value_model=True,
        )
        self.critic_module = shard_model(
            model, self.mesh,
            MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32), critic_cfg.fsdp.param_offload,
        )
        # The same mini-batches as the actor, with the critic's own number of epochs.
        steps = max(1, self.total_optimizer_steps // cfg.actor.ppo_epochs * critic_cfg.ppo_epochs)
        return PPOCritic(
            self.critic_module, critic_cfg, steps,
            max_token_len=self._token_budget(critic_cfg.max_token_len_per_device, critic_cfg.micro_batch_size_per_device_for_update),
            max_token_len_for_experience=self._token_budget(
                None, critic_cfg.micro_batch_size_per_device_for_experience
            ),
            share_prefix=self.share_prefix,
        )

    def _token_budget(self, configured: int | None, micro_batch_size: int) -> int | None:
        """Tokens per micro-batch with dynamic batch size: the configured budget, or the size of
        a fully padded micro-batch of `micro_batch_size` rows; None = fixed row counts."""
        if not self.config.actor.use_dynamic_batch_size:
            return None
        return configured if configured is not None else micro_batch_size * self.setup.longest_row

    # ---- rollout ---------------------------------------------------------------------------
    def sync_rollout_weights(self) -> dict[str, float]:
        """Actor weights -> rollout engine (a collective: every rank streams the same order)."""
        self._set_rollout_awake(True)
        return sync_weights(self.actor_module, self.rollout)

    def publish_weights(self) -> list:
        """trainer.rollout_mode=one_step_off: the actor's weights, in the engines' dtype, put into
        Ray's object store by rank 0, where the rollout workers fetch them (not through the
        driver). Returns `[reference]` on rank 0 and `[]` elsewhere: in a list, Ray hands the
        driver the reference, not the tensors. Collective: every rank gathers."""
        dtype = resolve_dtype(self.config.rollout.dtype, self.device)
        weights = gather_policy_weights(self.actor_module, dtype, keep=self.rank == 0)
        return [ray.put(weights)] if self.rank == 0 else []

    # ---- log-probs and update ----------------------------------------------------------------
    def compute_log_probs(self, data: DataProto) -> DataProto:
        log_probs, entropy = self.actor.compute_log_probs(data)
        return DataProto.from_dict(tensors={"old_log_probs": log_probs, "entropy": entropy})

    def compute_ref_log_probs(self, data: DataProto) -> DataProto:
        lora = self.config.actor.model.lora.enabled
        if self.ref_module is None and not lora:
            raise RuntimeError("no reference model: enable worker.actor.use_kl_loss or algorithm.kl_coef > 0")
        ref_cfg = self.config.ref
        module = self.actor_module if lora else self.ref_module
        with adapters_disabled(module):  # a no-op without adapters
            log_probs, _ = compute_log_probs(
                module,
                data,
                ref_cfg.micro_batch_size_per_device_for_experience,
                self.config.rollout.temperature,
                with_entropy=False,
                max_token_len=self._token_budget(
                    ref_cfg.max_token_len_per_device_for_experience, ref_cfg.micro_batch_size_per_device_for_experience
                ),
                share_prefix=self.share_prefix,
            )
        return DataProto.from_dict(tensors={"ref_log_probs": log_probs})

    def update_actor(self, data: DataProto, num_mini_batches: int, step: int) -> dict[str, float]:
        return self.actor.update_policy(data, num_mini_batches, step)

    def _require_critic(self) -> PPOCritic:
        if self.critic is None:
            raise RuntimeError("no critic: it is built only for algorithm.adv_estimator=gae")
        return self.critic

    def compute_values(self, data: DataProto) -> DataProto:
        return DataProto.from_dict(tensors={"values": self._require_critic().compute_values(data)})

    def update_critic(self, data: DataProto, num_mini_batches: int, step: int) -> dict[str, float]:
        return self._require_critic().update_critic(data, num_mini_batches, step)

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(
        self, step_dir: str, hf_source_dir: str, rollout_weights: list | None = None, rollout_version: int = 0
    ) -> dict[str, dict]:
        """Writes this rank's files; returns their sizes and SHA-256 for the manifest (each rank
        hashes its own files while they are in the page cache, all ranks at once).

        one_step_off: `rollout_weights` = `[reference]` to the published weights (version
        `rollout_version`) that generate the batch in flight; rank 0, which published them and
        holds them in its object store, writes them (in a list, Ray passes the reference, and
        the other ranks never fetch the tensors)."""
        # A failed write (disk full, no permission) names the file and the OS cause, whichever file it was.
        with checkpoint.naming_write_errors(step_dir):
            model_cfg = self.config.actor.model
            actor_dir = os.path.join(step_dir, "actor")
            written = [
                f"actor/{name}"
                for name in save_policy(self.actor.engine, actor_dir, hf_source_dir, model_cfg.lora, model_cfg.model_path)
            ]
            if self.critic is not None:
                critic_dir = os.path.join(step_dir, "critic")
                written += [f"critic/{name}" for name in self.critic.engine.save(critic_dir)]
                if self.rank == 0:  # the merger rebuilds a value model from these
                    critic_source = self.config.critic.model_path or hf_source_dir
                    checkpoint.save_hf_metadata(critic_source, os.path.join(critic_dir, "huggingface"))
                    mark_value_checkpoint(critic_dir)
            if rollout_weights is not None and self.rank == 0:
                save_rollout_weights(ray.get(rollout_weights[0]), rollout_version, step_dir)
                written.append(os.path.relpath(rollout_weights_path(step_dir), step_dir))
        digests = digest_files(step_dir, written)
        dist.barrier()
        return digests

    def load_checkpoint(self, step_dir: str) -> None:
        model_cfg = self.config.actor.model
        resume_policy(
            self.actor.engine, os.path.join(step_dir, "actor"), model_cfg.lora, model_cfg.model_path,
            "worker.actor.model.model_path",
        )
        if self.critic is not None:
            critic_dir = os.path.join(step_dir, "critic")
            if not os.path.isdir(critic_dir):
                raise FileNotFoundError(
                    f"checkpoint {step_dir} has no critic/ (saved without algorithm.adv_estimator=gae?)"
                )
            self.critic.engine.resume(critic_dir)
        if self.setup.with_rollout:
            self.sync_rollout_weights()
