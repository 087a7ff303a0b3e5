"""The single controller: one GRPO step is the list of stage calls in `RayPPOTrainer.step`.

    generate -> self-reward -> reward [-> ReMax greedy baseline] [-> DAPO refill: repeat]
             -> engine sleeps -> old log-probs -> ref log-probs -> advantages
             -> actor update -> weight sync (engine wakes)          (validate) (checkpoint)

The trainer decides the algorithm and moves batches; workers (verl/workers) hold parameters.
Every worker call is a typed attribute of `HybridWorkerGroup` (never a method named by a string).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import ray
import torch
from tqdm import tqdm

from verl.protocol import DataProto, pad_to_divisor
from verl.single_controller.worker_group import (
    RayWorkerGroup, ResourcePool, WorkerDiedError, on_all_ranks, split_each, split_rows,
)
from verl.algorithms import core_algos, dapo
from verl.stages.clipping import RESPONSE_CLIP_RATIO, TRAINER_CAP_KEYS, clip_ratio, warn_on_clipping
from verl.trainer.config import PPOConfig
from verl.trainer.node_check import check_nodes
from verl.trainer.one_step_off import OneStepOffStream, RolloutWorkerGroup
from verl.trainer.resume_settings import check_resume, run_settings, write_run_settings
from verl.data.vision import blank_like
from verl.rewards.vision_control import blank_image_control
from verl.stages.scoring import decode_responses, score_responses
from verl.stages.self_reward import SelfRewardOutput, SelfRewardStage
from verl.utils import checkpoint
from verl.utils.manifest import write_manifest
from verl.utils.timeline import StageTimes, Timeline, busy_metrics, timed
from verl.utils.tracking import Tracker
from verl.workers.actor import OBJECTIVE_PART, OBJECTIVE_PARTS, OBJECTIVE_WEIGHT
from verl.workers.engine.micro_batch import rank_order
from verl.workers.fsdp_worker import FSDPWorker
from verl.workers.rollout.base import SamplingConfig
from verl.workers.rollout_worker import RolloutWorker

logger = logging.getLogger(__name__)


def group_index_of(uids: np.ndarray) -> torch.Tensor:
    _, inverse = np.unique(uids.astype(str), return_inverse=True)
    return torch.as_tensor(inverse, dtype=torch.long)


def last_token_scores(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(bs,) outcome scores placed on each response's last valid token -> (bs, R)."""
    token_scores = torch.zeros(response_mask.shape, dtype=torch.float32)
    last = (response_mask.sum(-1) - 1).clamp(min=0)
    token_scores[torch.arange(len(scores)), last] = scores
    return token_scores


def pass2_advantages(
    visual_scores: torch.Tensor,
    group_index: torch.Tensor,
    parent_rows: torch.Tensor,
    pass2_response_mask: torch.Tensor,
    visual_weight: float,
    norm_adv_by_std: bool,
) -> torch.Tensor:
    """Vision-SR1 paper objective: each re-answer (pass-2) row is trained with its parent
    response's visual advantage, i.e. the visual score group-normalised over the parent's GRPO
    group, times the visual weight. visual_scores/group_index: (bs,) over pass-1 rows;
    parent_rows: (m,) pass-1 row of each pass-2 row; returns (m, R2) masked advantages."""
    per_response = core_algos.compute_multi_reward_advantages(
        {"visual": visual_scores}, {"visual": visual_weight}, group_index,
        torch.ones(len(visual_scores), 1), norm_adv_by_std,
    )[:, 0]
    return (per_response[parent_rows][:, None] * pass2_response_mask).float()


@dataclass
class SampledBatch:
    """A step's generation side, what its training side needs: the rows to train on and their
    reward scores, the self-reward's output, every row drawn with its scores (dynamic sampling's
    refills included: the reward metrics), the sampling metrics and the stages' times."""

    rollout: DataProto
    scores: dict[str, torch.Tensor]
    sr_output: SelfRewardOutput | None
    drawn_rollout: DataProto
    drawn_scores: dict[str, torch.Tensor]
    metrics: dict[str, float]
    timing: StageTimes


class DataExhaustedError(Exception):
    """Dynamic sampling's refills used up the training data before the step's batch held enough
    prompts with spread (and filling was not asked for): `fit` ends the run there, without the
    step, as verl ends its epoch loop with a partial batch."""


def with_objective_term(rows: DataProto, part: int, weight: float) -> DataProto:
    """`rows` marked as term `part` of a separately aggregated objective, with lambda `weight`
    (the actor's `OBJECTIVE_PART` / `OBJECTIVE_WEIGHT`; self_reward.objective=paper_v2)."""
    tensors = dict(rows.batch)
    tensors[OBJECTIVE_PART] = torch.full((len(rows),), part, dtype=torch.long)
    tensors[OBJECTIVE_WEIGHT] = torch.full((len(rows),), weight, dtype=torch.float32)
    return DataProto(batch=tensors, non_tensor_batch=dict(rows.non_tensor_batch), meta_info=dict(rows.meta_info))


def pad_rows(data: DataProto, prompt_length: int, response_length: int, pad_token_id: int) -> DataProto:
    """Pads prompt (left) and response (right) widths of rollout rows so rows of both passes can
    share one batch."""
    prompts, responses = data.batch["prompts"], data.batch["responses"]
    p_pad, r_pad = prompt_length - prompts.shape[1], response_length - responses.shape[1]
    if p_pad == 0 and r_pad == 0:
        return data
    prompt_mask = data.batch["attention_mask"][:, : prompts.shape[1]]
    left = lambda t, value: torch.nn.functional.pad(t, (p_pad, 0), value=value)  # noqa: E731
    right = lambda t, value: torch.nn.functional.pad(t, (0, r_pad), value=value)  # noqa: E731
    tensors = dict(data.batch)
    tensors["prompts"] = left(prompts, pad_token_id)
    tensors["responses"] = right(responses, pad_token_id)
    tensors["response_mask"] = right(data.batch["response_mask"], 0)
    for key in ("rollout_log_probs", "old_log_probs", "ref_log_probs", "advantages", "entropy"):
        if key in tensors:
            tensors[key] = right(tensors[key], 0)
    tensors["input_ids"] = torch.cat([tensors["prompts"], tensors["responses"]], dim=1)
    tensors["attention_mask"] = torch.cat([left(prompt_mask, 0), tensors["response_mask"]], dim=1)
    return DataProto.from_dict(tensors=tensors, non_tensors=dict(data.non_tensor_batch), meta_info=dict(data.meta_info))


class HybridWorkerGroup(RayWorkerGroup):
    """The FSDPWorker ranks (actor, reference, critic and rollout engine in one process each) as
    the trainer calls them: one attribute per worker method, with its signature and dispatch."""

    init_model = on_all_ranks(FSDPWorker.init_model)
    generate_sequences = split_rows(FSDPWorker.generate_sequences, per_engine=True)
    num_generate_calls = on_all_ranks(FSDPWorker.num_generate_calls)
    sleep_rollout = on_all_ranks(FSDPWorker.sleep_rollout)
    sync_rollout_weights = on_all_ranks(FSDPWorker.sync_rollout_weights)
    compute_log_probs = split_rows(FSDPWorker.compute_log_probs)
    compute_ref_log_probs = split_rows(FSDPWorker.compute_ref_log_probs)
    compute_values = split_rows(FSDPWorker.compute_values)
    update_actor = split_each(FSDPWorker.update_actor)
    update_critic = split_each(FSDPWorker.update_critic)
    publish_weights = on_all_ranks(FSDPWorker.publish_weights)
    save_checkpoint = on_all_ranks(FSDPWorker.save_checkpoint)
    load_checkpoint = on_all_ranks(FSDPWorker.load_checkpoint)


class RayPPOTrainer:
    def __init__(self, config: PPOConfig, tokenizer, train_dataloader, val_dataloader, reward_fn, judge=None):
        self.config = config
        self.tokenizer = tokenizer
        self.train_dataloader = train_dataloader
        self.val_dataloader = val_dataloader
        self.reward_fn = reward_fn
        self.global_step = 0
        self.checkpoint_root = config.trainer.checkpoint_root
        steps_per_epoch = len(train_dataloader) if train_dataloader is not None else 0
        self.total_steps = steps_per_epoch * config.trainer.total_epochs
        if config.trainer.max_steps is not None:
            self.total_steps = min(self.total_steps, config.trainer.max_steps) if self.total_steps else config.trainer.max_steps
        self.mini_batches_per_step = config.data.rollout_batch_size // config.worker.actor.global_batch_size
        # The lr schedule's length; checkpoints record it (a resume that changes it may bend the schedule).
        self.total_optimizer_steps = max(
            1, self.total_steps * self.mini_batches_per_step * config.worker.actor.ppo_epochs
        )
        self.kl_controller = None
        if config.algorithm.kl_coef > 0 and not config.worker.actor.use_kl_loss:
            if config.algorithm.kl_type == "adaptive":
                self.kl_controller = core_algos.AdaptiveKLController(
                    config.algorithm.kl_coef, config.algorithm.kl_target, config.algorithm.kl_horizon
                )
            else:
                self.kl_controller = core_algos.FixedKLController(config.algorithm.kl_coef)
        self.workers: HybridWorkerGroup | None = None
        # Where generation runs: the hybrid ranks (colocated) or the standalone engines (one_step_off).
        self.engines: HybridWorkerGroup | RolloutWorkerGroup | None = None
        self.stream: OneStepOffStream[SampledBatch] | None = None
        self.resumed_from: str | None = None
        correction = config.worker.actor.rollout_correction
        if correction.mode != "off" and not correction.applies(config.worker.rollout.temperature):
            logger.warning(
                "worker.actor.rollout_correction.mode=%s is not applied: the rollout engines return log-probs at "
                "temperature 1 but worker.rollout.temperature=%s", correction.mode, config.worker.rollout.temperature,
            )
        self.self_reward: SelfRewardStage | None = None
        self.judge = judge
        self.tracker = Tracker(
            config.trainer.logger,
            config.trainer.project_name,
            config.trainer.experiment_name,
            self.checkpoint_root,
            asdict(config),
        )
        self.timeline = Timeline(self.checkpoint_root)  # timeline.json: every stage call of every step

    # ---- set-up ------------------------------------------------------------------------------
    def init_workers(self) -> None:
        cfg = self.config
        use_gpu = cfg.trainer.device == "cuda" or (cfg.trainer.device == "auto" and torch.cuda.is_available())
        pool = ResourcePool(
            nnodes=cfg.trainer.nnodes,
            procs_per_node=cfg.trainer.n_gpus_per_node,
            gpus_per_proc=1 if use_gpu else 0,
            cpus_per_proc=1,
        )
        self.workers = HybridWorkerGroup(
            FSDPWorker, pool, cfg.worker, cfg.rank_setup(), self.total_optimizer_steps,
            call_timeout_s=cfg.trainer.worker_timeout_s, ranks_per_engine=cfg.worker.rollout.tensor_parallel_size,
        )
        self.engines = self.workers
        if cfg.trainer.rollout_mode == "one_step_off":
            rollout_pool = ResourcePool(
                nnodes=cfg.trainer.rollout_nnodes, procs_per_node=cfg.trainer.rollout_n_gpus_per_node,
                gpus_per_proc=1 if use_gpu else 0, cpus_per_proc=1,
            )
            check_both_groups_fit(pool, rollout_pool)
            self.engines = RolloutWorkerGroup(
                RolloutWorker, rollout_pool, cfg.worker, cfg.rank_setup(),
                call_timeout_s=cfg.trainer.worker_timeout_s, distributed=False,
            )
        # Before the models load: a node that does not see the run's folders fails the run now.
        print(check_nodes(self.workers, cfg), flush=True)
        if self.engines is not self.workers:
            print(f"rollout engines: {check_nodes(self.engines, cfg)}", flush=True)
        attention = self.workers.init_model()[0]
        print(f"training forwards: {attention}", flush=True)
        if self.engines is not self.workers:
            print(f"rollout: {self.engines.init_model()[0]}", flush=True)
            self.stream = OneStepOffStream(self.engines, self._produce, lambda: self.workers.publish_weights()[0][0])
        if cfg.self_reward.enable:
            generate = None if self.judge is not None else self._generate
            self.self_reward = SelfRewardStage(cfg.self_reward, self.tokenizer, generate, self.judge)

    def _generate(self, prompts: DataProto, sampling: SamplingConfig, max_response_length: int) -> DataProto:
        prompts.meta_info["pad_token_id"] = self.tokenizer.pad_token_id
        return self.engines.generate_sequences(prompts, sampling, max_response_length)

    def train_sampling(self, step: int, draw: int = 0) -> SamplingConfig:
        """Sampling of step `step`'s generation batch number `draw` (dynamic sampling's refills
        are draws 1, 2, ...): each its own seed, so a redrawn prompt is not sampled the same way
        again (draw < algorithm.dynamic_sampling.max_tries <= 1000 keeps the seeds distinct)."""
        r = self.config.worker.rollout
        return SamplingConfig(
            n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
            max_tokens=self.config.data.max_response_length, seed=r.seed + 1000 * step + draw,
            min_tokens=r.min_response_length,
        )

    def val_sampling(self) -> SamplingConfig:
        r = self.config.worker.rollout
        return SamplingConfig(
            n=r.val_n, temperature=r.val_temperature, top_p=r.top_p if r.val_temperature > 0 else 1.0,
            max_tokens=self.config.data.max_response_length, seed=r.seed,
        )

    # ---- stages ------------------------------------------------------------------------------
    def generate_and_score(self, batch: DataProto, sampling: SamplingConfig, timing: dict, validation: bool, step: int):
        """Rollout, self-reward and reward stages of step `step`'s batch: the part shared by
        training and validation."""
        with timed("gen", timing):
            rollout = self._generate(batch, sampling, self.config.data.max_response_length)
        responses = decode_responses(rollout, self.tokenizer)
        sr_output: SelfRewardOutput | None = None
        if self.self_reward is not None:
            calls_before = self.engines.num_generate_calls()
            with timed("self_reward", timing):
                sr_output = self.self_reward.run(
                    responses, [str(q) for q in rollout.non_tensor_batch["problem"]], validation=validation
                )
            calls = [after - before for after, before in zip(self.engines.num_generate_calls(), calls_before)]
            # The re-prompt pass must be one batched engine call per rank, never one per prompt.
            sr_output.metrics["self_reward/engine_calls_per_rank"] = float(max(calls))
        with timed("reward", timing):
            scores = score_responses(
                self.reward_fn,
                responses,
                rollout,
                sr_output.reanswers if sr_output else None,
                sr_output.descriptions if sr_output else None,
                batch=f"{'validation' if validation else 'training'} step {step}",
            )
        return rollout, responses, scores, sr_output

    def compute_advantages(
        self, rollout: DataProto, scores: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
        """(bs, R) advantages of the configured estimator, exactly 0 on dynamic sampling's filler
        rows (their group has no spread in the sampling metric, but may have some in the trained
        score, e.g. format); the critic's (bs, R) regression targets for gae (else None); the
        metrics of the KL-in-reward and of the critic's values."""
        advantages, returns, metrics = self._estimated_advantages(rollout, scores)
        if "filler" in rollout.non_tensor_batch:
            advantages[torch.as_tensor(rollout.non_tensor_batch["filler"].astype(bool))] = 0.0
        return advantages, returns, metrics

    def _estimated_advantages(
        self, rollout: DataProto, scores: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
        cfg = self.config.algorithm
        metrics: dict[str, float] = {}
        mask = rollout.batch["response_mask"]
        groups = group_index_of(rollout.non_tensor_batch["uid"])
        sr = self.config.self_reward
        weights = dict(cfg.reward_weights)
        if sr.enable and sr.objective == "separate":
            weights = {"answer": sr.answer_advantage_weight, "visual": sr.visual_advantage_weight}
        elif sr.enable and sr.objective == "paper_v2":
            # The answer rollout's own GRPO advantage; its lambda weighs the whole term (policy
            # and KL loss) in the actor, the visual advantage sits on the pass-2 rows.
            weights = {"answer": 1.0}
        if weights:
            missing = set(weights) - set(scores)
            if missing:
                raise KeyError(f"reward components {sorted(missing)} in the advantage weights are not returned by "
                               f"the reward function (it returns {sorted(scores)})")
            advantages = core_algos.compute_multi_reward_advantages(
                {name: scores[name] for name in weights}, weights, groups, mask, cfg.norm_adv_by_std_in_grpo
            )
            return advantages, None, metrics
        token_rewards = last_token_scores(scores["overall"], mask)
        if self.kl_controller is not None:
            token_rewards, mean_kl = core_algos.apply_kl_penalty(
                token_rewards, rollout.batch["old_log_probs"], rollout.batch["ref_log_probs"], mask,
                self.kl_controller.kl_coef, cfg.kl_penalty,
            )
            self.kl_controller.update(mean_kl, len(rollout))
            metrics["actor/reward_kl_penalty"] = mean_kl
            metrics["actor/reward_kl_coef"] = self.kl_controller.kl_coef
        if cfg.adv_estimator == "gae":
            advantages, returns = core_algos.compute_gae_advantage_return(
                token_rewards, rollout.batch["values"], mask, cfg.gamma, cfg.lam
            )
            valid = mask.bool()
            metrics["critic/values_mean"] = rollout.batch["values"][valid].mean().item()
            metrics["critic/returns_mean"] = returns[valid].mean().item()
            return advantages, returns.float(), metrics
        if cfg.adv_estimator == "remax":
            advantages, _ = core_algos.compute_remax_outcome_advantage(
                token_rewards, mask, rollout.batch["remax_baseline"]
            )
            return advantages, None, metrics
        advantages, _ = core_algos.compute_advantages(
            cfg.adv_estimator, token_rewards, mask, groups, cfg.gamma, cfg.norm_adv_by_std_in_grpo
        )
        return advantages, None, metrics

    def _shape_scores(self, rollout: DataProto, scores: dict[str, torch.Tensor]) -> None:
        """DAPO overlong reward shaping, added to `overall` in place (and logged as its own
        component) when algorithm.overlong.buffer_length > 0."""
        overlong = self.config.algorithm.overlong
        if overlong.buffer_length > 0:
            penalty = dapo.overlong_penalty(
                rollout.batch["response_mask"].sum(-1), self.config.data.max_response_length,
                overlong.buffer_length, overlong.penalty_factor,
            )
            scores["overlong_penalty"] = penalty
            scores["overall"] = scores["overall"] + penalty

    def _remax_baseline(self, batch: DataProto, rollout: DataProto, timing: dict, step: int) -> torch.Tensor:
        """ReMax: one greedy response per prompt through the same engine and reward (shaping
        included); returns its score for every row of `rollout`, matched by prompt uid."""
        greedy_sampling = replace(self.train_sampling(step), n=1, temperature=0.0, top_p=1.0, top_k=-1)
        with timed("remax_greedy", timing):
            greedy, _, greedy_scores, _ = self.generate_and_score(batch, greedy_sampling, {}, False, step)
        self._shape_scores(greedy, greedy_scores)
        by_uid = dict(zip(greedy.non_tensor_batch["uid"], greedy_scores["overall"].tolist()))
        return torch.tensor([by_uid[uid] for uid in rollout.non_tensor_batch["uid"]], dtype=torch.float32)

    def _sample(self, batch: DataProto, timing: dict, step: int, draw: int = 0):
        """Rollout, self-reward, reward (+ shaping, + the ReMax baseline) for one batch of
        prompts, step `step`'s generation batch number `draw`."""
        batch.non_tensor_batch["uid"] = np.array([uuid.uuid4().hex for _ in range(len(batch))], dtype=object)
        rollout, _, scores, sr_output = self.generate_and_score(batch, self.train_sampling(step, draw), timing, False, step)
        self._shape_scores(rollout, scores)
        if self.config.algorithm.adv_estimator == "remax":
            rollout.batch["remax_baseline"] = self._remax_baseline(batch, rollout, timing, step)
        return rollout, scores, sr_output

    def _sample_with_refill(self, batch: DataProto, refills: Iterator[DataProto] | None, timing: dict, step: int):
        """`_sample`, and with DAPO dynamic sampling, more prompts from `refills` until the batch
        holds `len(batch)` prompts whose responses' scores differ. When the tries or the refills
        run out first: an error, or with `fill_after_max_tries` prompts without spread fill it
        (see `dapo.select_groups`), flagged per row in `non_tensor_batch["filler"]` so that
        `compute_advantages` gives them 0. Returns the rows for the update, their scores, the
        self-reward output of the first batch, all rows drawn with their scores (for the reward
        metrics, unbiased by the filter), and the dynamic sampling metrics."""
        rollout, scores, sr_output = self._sample(batch, timing, step)
        dynamic = self.config.algorithm.dynamic_sampling
        if not dynamic.enable:
            return rollout, scores, sr_output, rollout, scores, {}
        n = self.config.worker.rollout.n
        if dynamic.metric not in scores:
            raise KeyError(f"algorithm.dynamic_sampling.metric={dynamic.metric!r} is not a reward component "
                           f"(the reward function returns {sorted(scores)})")
        tries = [(rollout, scores)]
        spread = [dapo.prompt_has_spread(scores[dynamic.metric], n)]
        data_ran_out = False
        while not dapo.enough_informative(spread, len(batch)) and len(tries) < dynamic.max_tries:
            refill = next(refills, None) if refills is not None else None
            if refill is None:
                data_ran_out = True
                break
            refill_rollout, refill_scores, _ = self._sample(refill, timing, step, draw=len(tries))
            tries.append((refill_rollout, refill_scores))
            spread.append(dapo.prompt_has_spread(refill_scores[dynamic.metric], n))
        selection = dapo.select_groups(spread, len(batch))
        if selection.filler:
            shortfall = (
                f"step {step}: dynamic sampling found {selection.informative} of the {len(batch)} prompts "
                f"whose {dynamic.metric} differs within the group, in {len(tries)} generation batches "
                f"(algorithm.dynamic_sampling.max_tries={dynamic.max_tries})"
            )
            if not dynamic.fill_after_max_tries and data_ran_out:
                raise DataExhaustedError(f"{shortfall}, and the training data ran out")
            if not dynamic.fill_after_max_tries:
                raise RuntimeError(
                    f"{shortfall}; raise max_tries, or set algorithm.dynamic_sampling.fill_after_max_tries=true to "
                    "fill the batch with prompts without spread (trained with advantage 0)"
                )
            print(f"{shortfall}; {selection.filler} prompts without spread fill the batch, advantage 0", flush=True)
        rows = [(prompts[:, None] * n + np.arange(n)).reshape(-1) for prompts in selection.prompts]
        names = list(scores)
        kept_rollout = DataProto.concat([drawn[keep] for (drawn, _), keep in zip(tries, rows)])
        kept_rollout.non_tensor_batch["filler"] = np.repeat(np.concatenate(selection.is_filler), n)
        kept_scores = {name: torch.cat([drawn[name][keep] for (_, drawn), keep in zip(tries, rows)]) for name in names}
        all_rollout = DataProto.concat([drawn for drawn, _ in tries])
        all_scores = {name: torch.cat([drawn[name] for _, drawn in tries]) for name in names}
        metrics = {
            "dynamic_sampling/generation_batches": float(len(tries)),
            "dynamic_sampling/prompts_drawn": float(sum(len(flags) for flags in spread)),
            "dynamic_sampling/informative_prompts": float(selection.informative),
            "dynamic_sampling/filler_prompts": float(selection.filler),
        }
        return kept_rollout, kept_scores, sr_output, all_rollout, all_scores, metrics

    def sample_batch(self, batch: DataProto, refills: Iterator[DataProto] | None, step: int) -> SampledBatch:
        """The generation side of step `step`: rollout, self-reward, rewards, DAPO refills."""
        timing = StageTimes()
        rollout, scores, sr_output, drawn_rollout, drawn_scores, metrics = self._sample_with_refill(
            batch, refills, timing, step
        )
        return SampledBatch(rollout, scores, sr_output, drawn_rollout, drawn_scores, metrics, timing)

    def step(self, batch: DataProto, refills: Iterator[DataProto] | None = None) -> dict[str, float]:
        """One colocated GRPO step on a batch of prompts; returns the step's metrics. `refills`:
        where DAPO dynamic sampling draws more prompts from (fit passes its own batch iterator, so
        a refill batch is not trained on as a step of its own); None: no refills."""
        step_start = time.perf_counter()
        sampled = self.sample_batch(batch, refills, self.global_step)
        # Generation (and the self-reward pass) is over for this step: the engine frees its memory.
        with timed("rollout_sleep", sampled.timing):
            self.workers.sleep_rollout()
        return self.train_on(sampled, step_start)

    def one_step_off_step(self) -> dict[str, float] | None:
        """One step of trainer.rollout_mode=one_step_off (verl/trainer/one_step_off.py): takes the
        batch generated while the last step trained, lets the engines load the newest weights and
        start on the next batch, then trains on this one. None: the data ran out."""
        stream = self.stream
        step_start, wait_start = time.perf_counter(), time.time()
        sampled, weights, waited_s = stream.take()
        if sampled is None:
            return None
        self.global_step += 1
        generation_s = sum(sampled.timing.values())
        sampled.timing.add("wait_rollout", wait_start, waited_s)
        next_step = self.global_step + 1 if self.global_step < self.total_steps else None
        with timed("sync", sampled.timing):
            sync_metrics = stream.advance(self.train_dataloader.state_dict(), next_step)
        metrics = self.train_on(sampled, step_start)
        metrics.update(sync_metrics)
        # Updates the trainer's weights are ahead of the ones that generated this batch: 1 from step 2 on.
        metrics["async/weights_staleness"] = float(self.global_step - 1 - weights.version)
        metrics["async/generation_hidden_share"] = max(0.0, 1.0 - waited_s / generation_s) if generation_s > 0 else 0.0
        return metrics

    def _produce(self, step: int) -> SampledBatch | None:
        """one_step_off's generation thread: step `step`'s batch from the run's batch iterator."""
        batch = next(self._train_batches, None)
        return None if batch is None else self.sample_batch(batch, self._train_batches, step)

    def train_on(self, sampled: SampledBatch, step_start: float) -> dict[str, float]:
        """The training side of a step on `sampled`: log-probs, advantages, update, weight hand-off
        (sync into the colocated engines, or publish for the standalone ones); returns the step's
        metrics, timed from `step_start`."""
        cfg = self.config
        rollout, scores, sr_output = sampled.rollout, sampled.scores, sampled.sr_output
        drawn_rollout, drawn_scores, metrics, timing = sampled.drawn_rollout, sampled.drawn_scores, sampled.metrics, sampled.timing
        train_rows = rollout
        # The objectives that train the re-answers (pass-2 rows) too.
        trains_pass2 = cfg.self_reward.enable and cfg.self_reward.objective in ("separate", "paper_v2")
        need_ref = cfg.worker.actor.use_kl_loss or self.kl_controller is not None
        if not self.skip_old_log_probs:  # else the on-policy update reports entropy and the gap
            with timed("old_log_prob", timing):
                train_rows = train_rows.union(self._dispatch_balanced(self.workers.compute_log_probs, train_rows))
            metrics.update(logprob_gap_metrics(train_rows))
            metrics["actor/entropy"] = core_algos.masked_mean(
                train_rows.batch["entropy"], train_rows.batch["response_mask"].float()
            ).item()
        if need_ref:
            with timed("ref", timing):
                train_rows = train_rows.union(self._dispatch_balanced(self.workers.compute_ref_log_probs, train_rows))
        gae = cfg.algorithm.adv_estimator == "gae"
        if gae:
            with timed("values", timing):
                train_rows = train_rows.union(self._dispatch_balanced(self.workers.compute_values, train_rows))
        with timed("adv", timing):
            advantages, returns, advantage_metrics = self.compute_advantages(train_rows, scores)
        metrics.update(advantage_metrics)
        train_rows.batch["advantages"] = advantages.float()
        if returns is not None:
            train_rows.batch["returns"] = returns
        if cfg.self_reward.enable and cfg.self_reward.objective == "paper_v2":
            train_rows = with_objective_term(
                train_rows, OBJECTIVE_PARTS.index("answer"), cfg.self_reward.answer_advantage_weight
            )
        if trains_pass2 and sr_output is not None and sr_output.pass2 is not None:
            with timed("pass2_log_prob", timing):
                train_rows = self._with_pass2_rows(train_rows, sr_output, scores, need_ref)
        metrics["actor/pass2_rows"] = float(len(train_rows) - len(rollout))
        if gae:
            with timed("update_critic", timing):
                metrics.update(self._update(self.workers.update_critic, train_rows, ["values", "returns"]))
        with timed("update_actor", timing):
            metrics.update(self._update(self.workers.update_actor, train_rows, self._actor_update_keys(train_rows)))
        if self.stream is None:
            with timed("sync", timing):
                metrics["perf/sync_bytes"] = self.workers.sync_rollout_weights()[0]["bytes"]
        else:
            with timed("publish", timing):
                self.stream.publish(self.global_step)
        metrics.update(self._rollout_metrics(drawn_rollout, drawn_scores, sr_output, "train"))
        warn_on_clipping(
            {name: metrics.get(f"train/{name}") for name in TRAINER_CAP_KEYS}, TRAINER_CAP_KEYS, f"training step {self.global_step}"
        )
        # Share of prompts whose n samples score differently: only those carry a group advantage.
        for name, values in drawn_scores.items():
            spread = dapo.prompt_has_spread(values, cfg.worker.rollout.n)
            metrics[f"train/group_spread/{name}"] = float(spread.mean())
        metrics.update({f"timing_s/{k}": v for k, v in timing.items()})
        # The step's wall time: in one_step_off its generation overlapped the previous step.
        step_time = time.perf_counter() - step_start
        tokens = drawn_rollout.batch["attention_mask"].sum().item()
        metrics["timing_s/step"] = step_time
        metrics["perf/tokens_per_s"] = tokens / step_time
        workers = self.workers.world_size + (self.engines.world_size if self.stream is not None else 0)
        metrics["perf/tokens_per_s_per_worker"] = tokens / step_time / workers
        metrics.update(busy_metrics(timing, step_time))
        self.timeline.add_step(self.global_step, timing.spans)
        return metrics

    @property
    def skip_old_log_probs(self) -> bool:
        """One mini-batch, one epoch, no KL in the reward, no MIS: the update is exactly
        on-policy and takes its own detached log-probs as the old ones (no separate forward
        pass). MIS needs the old log-probs before the update: the tokens it rejects leave the
        loss's normaliser, counted over the whole mini-batch before its first backward."""
        actor = self.config.worker.actor
        correction = actor.rollout_correction
        mis = correction.mode == "mis" and correction.applies(self.config.worker.rollout.temperature)
        return (
            self.config.trainer.rollout_mode == "colocated"  # one_step_off's batches are one update old
            and actor.skip_old_log_prob_when_on_policy and self.mini_batches_per_step == 1
            and actor.ppo_epochs == 1 and self.kl_controller is None and not mis
        )

    def _dispatch_balanced(self, call: Callable[[DataProto], DataProto], data: DataProto) -> DataProto:
        """`call` (a split-rows worker call) with rows reordered so every rank gets about the same
        number of tokens (a prompt's rows together); results come back in the original row order."""
        order = rank_order(data, self.workers.world_size, share_prefix=self.config.worker.actor.model.share_prompt_prefix)
        if order is None:
            return call(data)
        return call(data[order])[np.argsort(order)]

    def _actor_update_keys(self, train_rows: DataProto) -> list[str]:
        keys = ["advantages"] + [key for key in (OBJECTIVE_PART, OBJECTIVE_WEIGHT) if key in train_rows.batch]
        actor = self.config.worker.actor
        # The rollout log-probs feed the on-policy gap metric and the rollout correction.
        with_rollout = self.skip_old_log_probs or actor.rollout_correction.applies(self.config.worker.rollout.temperature)
        optional = ["old_log_probs"] + (["rollout_log_probs"] if with_rollout else [])
        keys += [key for key in optional if key in train_rows.batch]
        if actor.use_kl_loss:
            keys.append("ref_log_probs")
        return keys

    def _update(
        self, update: Callable[[DataProto, int, int], list[dict[str, float]]], train_rows: DataProto, keys: list[str]
    ) -> dict[str, float]:
        """`update` (the workers' update_actor / update_critic) on the rows' model inputs plus `keys`,
        padded to the world size and spread over the ranks by token count; per-rank metrics
        averaged (maxima for `*_max`)."""
        keys = ["input_ids", "attention_mask", "responses", "response_mask", *keys]
        update_batch = train_rows.select(batch_keys=keys, non_tensor_batch_keys=["multi_modal_inputs"])
        update_batch, pad_size = pad_to_divisor(update_batch, self.workers.world_size)
        if pad_size:  # padding rows keep ranks in lockstep but must not be trained on twice
            update_batch.batch["response_mask"][-pad_size:] = 0
        # Each mini-batch's rows spread over the ranks by token count (equal rows per rank), the
        # rows of one prompt on one rank where they fit (they share the prompt's forward there).
        order = rank_order(
            update_batch, self.workers.world_size, self.mini_batches_per_step,
            share_prefix=self.config.worker.actor.model.share_prompt_prefix,
        )
        if order is not None:
            update_batch = update_batch[order]
        per_rank = update(update_batch, self.mini_batches_per_step, self.global_step)
        return {
            key: float((np.max if key.endswith("_max") else np.mean)([m[key] for m in per_rank]))
            for key in per_rank[0]
        }

    def _with_pass2_rows(
        self, train_rows: DataProto, sr_output: SelfRewardOutput, scores: dict[str, torch.Tensor], need_ref: bool
    ) -> DataProto:
        """The papers' objectives (separate, paper_v2): re-answer (pass-2) rows join the update
        batch, each carrying its parent response's visual advantage on its own tokens (weighted
        here for separate; as the visual term, weighted in the actor, for paper_v2)."""
        cfg = self.config
        pass2 = sr_output.pass2
        if not self.skip_old_log_probs:
            pass2 = pass2.union(self._dispatch_balanced(self.workers.compute_log_probs, pass2))
        if need_ref:
            pass2 = pass2.union(self._dispatch_balanced(self.workers.compute_ref_log_probs, pass2))
        paper_v2 = cfg.self_reward.objective == "paper_v2"
        pass2.batch["advantages"] = pass2_advantages(
            scores["visual"],
            group_index_of(train_rows.non_tensor_batch["uid"]),
            torch.as_tensor(pass2.non_tensor_batch["parent_row"].astype(np.int64)),
            pass2.batch["response_mask"],
            # paper_v2: the weight is the visual term's lambda, applied in the actor (to the KL too).
            1.0 if paper_v2 else cfg.self_reward.visual_advantage_weight,
            cfg.algorithm.norm_adv_by_std_in_grpo,
        )
        if paper_v2:
            pass2 = with_objective_term(pass2, OBJECTIVE_PARTS.index("visual"), cfg.self_reward.visual_advantage_weight)
        prompt_len = max(train_rows.batch["prompts"].shape[1], pass2.batch["prompts"].shape[1])
        response_len = max(train_rows.batch["responses"].shape[1], pass2.batch["responses"].shape[1])
        pad = self.tokenizer.pad_token_id
        keys = ["prompts", "responses", "response_mask", "input_ids", "attention_mask", "advantages"]
        optional = ["old_log_probs", "entropy", "rollout_log_probs", OBJECTIVE_PART, OBJECTIVE_WEIGHT]
        optional += ["ref_log_probs"] if need_ref else []
        keys += [key for key in optional if key in train_rows.batch and key in pass2.batch]
        parts = [
            pad_rows(rows.select(batch_keys=keys, non_tensor_batch_keys=["multi_modal_inputs"]), prompt_len, response_len, pad)
            for rows in (train_rows, pass2)
        ]
        return DataProto.concat(parts)

    # ---- metrics -----------------------------------------------------------------------------
    def _rollout_metrics(
        self, rollout: DataProto, scores: dict[str, torch.Tensor], sr_output: SelfRewardOutput | None, prefix: str
    ) -> dict[str, float]:
        metrics = {f"{prefix}/reward/{name}": values.mean().item() for name, values in scores.items()}
        lengths = rollout.batch["response_mask"].sum(-1).float()
        metrics[f"{prefix}/response_length/mean"] = lengths.mean().item()
        metrics[f"{prefix}/response_length/max"] = lengths.max().item()
        metrics[f"{prefix}/{RESPONSE_CLIP_RATIO}"] = clip_ratio(rollout.non_tensor_batch["finished"])
        if sr_output is not None:
            metrics.update({f"{prefix}/{k}": v for k, v in sr_output.metrics.items()})
        return metrics

    # ---- validation --------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        timing: dict[str, float] = {}
        all_scores: dict[str, list[torch.Tensor]] = {}
        lengths, finished, samples = [], [], []
        sr_metrics: dict[str, list[float]] = {}
        control_rows: list[dict[str, float]] = []
        control_budget = self.config.trainer.val_blank_image_prompts
        for batch_dict in self.val_dataloader:
            batch = DataProto.from_dict(*batch_dict)
            batch.non_tensor_batch["uid"] = np.array([uuid.uuid4().hex for _ in range(len(batch))], dtype=object)
            rollout, responses, scores, sr_output = self.generate_and_score(
                batch, self.val_sampling(), timing, True, self.global_step
            )
            if control_budget != 0 and "images" in batch.non_tensor_batch:
                take = len(batch) if control_budget < 0 else min(control_budget, len(batch))
                with timed("blank_image_control", timing):
                    control_rows += self._blank_image_control(batch.slice(0, take), responses)
                control_budget -= take if control_budget > 0 else 0
            for name, values in scores.items():
                all_scores.setdefault(name, []).append(values)
            lengths.append(rollout.batch["response_mask"].sum(-1).float())
            finished.append(rollout.non_tensor_batch["finished"])
            if sr_output is not None:
                for key, value in sr_output.metrics.items():
                    sr_metrics.setdefault(key, []).append(value)
            samples.extend(zip(responses, rollout.non_tensor_batch["ground_truth"]))
        metrics = {f"val/reward/{name}": torch.cat(values).mean().item() for name, values in all_scores.items()}
        metrics["val/response_length/mean"] = torch.cat(lengths).mean().item()
        metrics[f"val/{RESPONSE_CLIP_RATIO}"] = clip_ratio(np.concatenate(finished))
        metrics.update({f"val/{k}": float(np.mean(v)) for k, v in sr_metrics.items()})
        warn_on_clipping(
            {name: metrics.get(f"val/{name}") for name in TRAINER_CAP_KEYS}, TRAINER_CAP_KEYS, f"validation at step {self.global_step}"
        )
        if control_rows:
            control = {key: float(np.mean([row[key] for row in control_rows])) for key in control_rows[0]}
            # Accuracy with the image on the same prompts: the reference point of the drop.
            control["accuracy"] = control["accuracy_blank_image"] + control["accuracy_drop"]
            metrics.update({f"val/vision/{key}": value for key, value in control.items()})
        metrics.update({f"timing_s/val_{k}": v for k, v in timing.items()})
        for response, truth in samples[: self.config.trainer.val_generations_to_log]:
            print(f"[val sample] ground truth: {truth!r}\n{response}\n", flush=True)
        return metrics

    def _blank_image_control(self, prompts: DataProto, responses: list[str]) -> list[dict[str, float]]:
        """The blank-image control on `prompts` (the first rows of a validation batch): the same
        prompts, each image replaced by a blank one of its size, through the same engine and
        sampling; rows pair one to one with the first `len(prompts) * n` validation responses."""
        blank_images = [[blank_like(image) for image in images or []] for images in prompts.non_tensor_batch["images"]]
        blank = DataProto.from_dict(
            tensors=dict(prompts.batch),
            non_tensors={**prompts.non_tensor_batch, "images": blank_images},
            meta_info=dict(prompts.meta_info),
        )
        blank_rollout = self._generate(blank, self.val_sampling(), self.config.data.max_response_length)
        blank_responses = decode_responses(blank_rollout, self.tokenizer)
        return blank_image_control(
            responses[: len(blank_responses)],
            blank_responses,
            [str(truth) for truth in blank_rollout.non_tensor_batch["ground_truth"]],
            [str(problem) for problem in blank_rollout.non_tensor_batch["problem"]],
        )

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> str:
        """Writes global_step_N.tmp (ranks' shards, data position, run settings, manifest last),
        then publishes it; a failed write raises CheckpointWriteError naming the file and cause."""
        root = self.checkpoint_root
        with checkpoint.naming_write_errors(root):
            os.makedirs(root, exist_ok=True)
            tmp_dir = checkpoint.temporary_step_dir(root, self.global_step)
        # one_step_off: the weights that generate the batch in flight, so a resume regenerates it.
        in_flight = {} if self.stream is None else self.stream.in_flight_weights_to_save()
        try:
            digests = self.workers.save_checkpoint(tmp_dir, self.config.worker.actor.model.model_path, **in_flight)
        except WorkerDiedError as error:
            cause = getattr(error.__cause__, "cause", None)  # the worker's own exception, through Ray
            if isinstance(cause, checkpoint.CheckpointWriteError):
                raise cause from error
            raise
        # one_step_off: the position after this step's batch (the next one is in flight).
        dataloader_state = self.train_dataloader.state_dict() if self.stream is None else self.stream.dataloader_state
        checkpoint.save_file(dataloader_state, os.path.join(tmp_dir, "dataloader.pt"))
        with checkpoint.naming_write_errors(tmp_dir):
            write_run_settings(tmp_dir, run_settings(self.config, self.total_optimizer_steps))
            write_manifest(tmp_dir, {rel: entry for rank_digests in digests for rel, entry in rank_digests.items()})
        with checkpoint.naming_write_errors(root):
            return checkpoint.commit_checkpoint(root, self.global_step, tmp_dir, self.config.trainer.save_limit)

    def maybe_resume(self) -> None:
        path = self.config.trainer.load_checkpoint_path
        if path is not None:
            if not os.path.isdir(path):
                raise FileNotFoundError(f"trainer.load_checkpoint_path={path} does not exist")
            siblings_have_manifests = checkpoint.has_manifests(os.path.dirname(os.path.normpath(path)))
            usable, note = checkpoint.verify_checkpoint(path, siblings_have_manifests)
            if not usable:  # the user chose this one: no silent fall-back to another
                raise checkpoint.CheckpointError(f"trainer.load_checkpoint_path={path} is damaged: {note}")
            if note:
                print(f"WARNING: {note}", flush=True)
        elif self.config.trainer.find_last_checkpoint:
            path, warnings = checkpoint.find_latest_intact_checkpoint(self.checkpoint_root)
            if path is None and warnings:
                start_fresh_over_damaged(
                    self.checkpoint_root, warnings, self.config.trainer.start_fresh_if_all_damaged
                )
            else:
                for warning in warnings:  # printed once: no logger beside it (its last-resort handler echoes it)
                    print(f"WARNING: {warning}", flush=True)
        # Settings changed since the checkpoint: printed, or refused when they break its state.
        settings = run_settings(self.config, self.total_optimizer_steps)
        accepted = {change.key for change in check_resume(path, settings, self.config)} if path else set()
        # Rows a crashed run logged past the point this run restarts from would repeat.
        self.tracker.drop_rows_from(checkpoint.step_of(path) + 1 if path is not None else 0)
        self.timeline.drop_from(checkpoint.step_of(path) + 1 if path is not None else 0)
        if path is None:
            return
        self.global_step = checkpoint.step_of(path)
        self.resumed_from = path
        self.workers.load_checkpoint(path)
        dataloader_state = os.path.join(path, "dataloader.pt")
        if not os.path.isfile(dataloader_state):
            raise FileNotFoundError(f"checkpoint {path} lacks dataloader.pt")
        state = torch.load(dataloader_state, weights_only=False)
        # An accepted change of data seed or shuffling keeps the saved position in the new order.
        current = self.train_dataloader.state_dict()
        state.update({key: current[key] for key in ("seed", "shuffle") if f"data.{key}" in accepted})
        self.train_dataloader.load_state_dict(state)
        print(f"resumed from {path} (step {self.global_step})", flush=True)

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg = self.config.trainer
        self.maybe_resume()
        last_val: dict[str, float] = {}
        if self.val_dataloader is not None and (cfg.val_before_train or cfg.val_only) and self.global_step == 0:
            last_val = self.validate()
            self.tracker.log(last_val, step=self.global_step)
            if cfg.val_only:
                return last_val
        progress = tqdm(total=self.total_steps, initial=self.global_step, desc="GRPO", dynamic_ncols=True)
        self._train_batches = self._batches()
        if self.stream is not None and self.global_step < self.total_steps:
            print(self.stream.start(self.global_step, self.resumed_from), flush=True)
            self.stream.submit(self.global_step + 1)
        saved_step = self.global_step
        while self.global_step < self.total_steps:
            metrics = self._next_step()
            if metrics is None:  # dynamic sampling drew the last prompts as refills
                print(f"training data exhausted after step {self.global_step} (dynamic sampling refills)", flush=True)
                if cfg.save_freq != 0 and self.global_step > saved_step:  # the run's end: keep its last step
                    self.save_checkpoint()
                break
            is_last = self.global_step >= self.total_steps
            if self.val_dataloader is not None and cfg.val_freq > 0 and (self.global_step % cfg.val_freq == 0 or is_last):
                if self.stream is not None:  # validate this step's weights: engines idle, then load them
                    self.stream.drain()
                    self.stream.load_pending()
                last_val = self.validate()
                metrics.update(last_val)
            if cfg.save_freq != 0 and ((cfg.save_freq > 0 and self.global_step % cfg.save_freq == 0) or is_last):
                with timed("save_checkpoint", save_timing := StageTimes()):
                    self.save_checkpoint()
                saved_step = self.global_step
                metrics["timing_s/save_checkpoint"] = save_timing["save_checkpoint"]
                self.timeline.add_step(self.global_step, save_timing.spans)
            self.tracker.log(metrics, step=self.global_step)
            self.timeline.write()
            progress.update(1)
            progress.set_postfix(
                reward=f"{metrics['train/reward/overall']:.3f}", tok_s=f"{metrics['perf/tokens_per_s']:.0f}"
            )
        progress.close()
        self.tracker.close()
        return last_val

    def _next_step(self) -> dict[str, float] | None:
        """The next step's metrics, in either rollout mode; None when the data ran out (a step
        whose dynamic-sampling refills ran out is dropped, as verl drops its partial batch)."""
        try:
            if self.stream is not None:
                return self.one_step_off_step()
            batch = next(self._train_batches, None)
            if batch is None:
                return None
            self.global_step += 1
            try:
                return self.step(batch, refills=self._train_batches)
            except DataExhaustedError:
                self.global_step -= 1
                raise
        except DataExhaustedError as error:
            print(f"{error}; the step is dropped", flush=True)
            return None

    def _batches(self):
        epoch = 0
        while True:
            for batch_dict in self.train_dataloader:
                yield DataProto.from_dict(*batch_dict)
            epoch += 1
            if epoch >= self.config.trainer.total_epochs and self.config.trainer.max_steps is None:
                return


def check_both_groups_fit(training: ResourcePool, rollout: ResourcePool) -> None:
    """one_step_off: the training ranks and the rollout engines together must fit the Ray cluster
    (each group checks only itself, and the second one's placement would otherwise wait for
    resources the first one holds)."""
    available = ray.cluster_resources()
    training_demand, rollout_demand = training.demand(), rollout.demand()
    for resource in training_demand.keys() | rollout_demand.keys():
        needed = training_demand.get(resource, 0) + rollout_demand.get(resource, 0)
        if needed > available.get(resource, 0):
            raise ValueError(
                f"trainer.rollout_mode=one_step_off needs {needed:g} {resource} ({training.world_size} training ranks "
                f"+ {rollout.world_size} rollout engines, trainer.rollout_nnodes x trainer.rollout_n_gpus_per_node); "
                f"the Ray cluster has {available.get(resource, 0):g} (trainer.ray_num_cpus, or the nodes' resources)"
            )


def start_fresh_over_damaged(root: str, warnings: list[str], allowed: bool) -> None:
    """Every checkpoint under `root` is damaged (`warnings` says how): an error naming them, or,
    when `allowed` (trainer.start_fresh_if_all_damaged), a fresh start with them set aside as
    global_step_N.damaged, where the new run's checkpoints cannot overwrite them."""
    if not allowed:
        raise checkpoint.CheckpointError(
            f"every checkpoint under {root} is damaged:\n  " + "\n  ".join(warnings)
            + "\nRepair or remove them, point trainer.load_checkpoint_path at a good copy, or set "
            "trainer.start_fresh_if_all_damaged=true to train from step 0 (they are then kept as global_step_N.damaged)"
        )
    moved = checkpoint.set_aside_damaged(root)
    print(
        f"WARNING: every checkpoint under {root} is damaged; starting from step 0 "
        f"(trainer.start_fresh_if_all_damaged=true), the damaged ones kept as: {', '.join(moved)}\n  "
        + "\n  ".join(warnings), flush=True,
    )


def logprob_gap_metrics(rows: DataProto) -> dict[str, float]:
    """Rollout engine log-probs vs the trainer's old log-probs of the same tokens: peers' users
    hit silent mismatches here (different kernels, dtypes, or a stale weight sync)."""
    mask = rows.batch["response_mask"].bool()
    gap = (rows.batch["rollout_log_probs"] - rows.batch["old_log_probs"]).abs()[mask]
    if gap.numel() == 0:
        return {}
    return {"rollout/logprob_gap_mean": gap.mean().item(), "rollout/logprob_gap_max": gap.max().item()}
