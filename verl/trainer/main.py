"""`python3 -m verl.trainer.main config=configs/x.yaml key=value ...`: GRPO training."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from verl.trainer.config import ConfigError, PPOConfig, parse_cli_or_exit, to_yaml
from verl.utils.checkpoint import CheckpointError
from verl.utils.folder_lock import CheckpointFolderLock
from verl.utils.model_source import ModelPathError, check_model_path

USAGE = """usage: python3 -m verl.trainer.main config=CONFIG.yaml [section.key=value ...]

Trains a vision-language policy with GRPO (and the Vision-SR1 self-reward when
self_reward.enable=true). Every key of verl/trainer/config.py can be overridden, e.g.
  trainer.max_steps=2 worker.rollout.n=4 worker.rollout.name=vllm self_reward.enable=true
"""


def run(config: PPOConfig) -> dict[str, float]:
    if config.trainer.dry_run:
        from verl.trainer.dry_run import dry_run

        print(dry_run(config).text(), flush=True)
        return {}
    config.validate()
    # Held from before the data is built until the run ends: a second run on the folder stops at once.
    with CheckpointFolderLock(config.trainer.checkpoint_root):
        return _train(config)


def _train(config: PPOConfig) -> dict[str, float]:
    import ray
    from transformers import AutoProcessor, AutoTokenizer

    from verl.rewards.loader import load_reward_function
    from verl.trainer.datasets import build_dataloaders
    from verl.trainer.perception_judge import make_judge
    from verl.trainer.ray_trainer import RayPPOTrainer

    model_cfg = config.worker.actor.model
    check_model_path(model_cfg.model_path, "worker.actor.model.model_path")
    tokenizer = AutoTokenizer.from_pretrained(model_cfg.tokenizer_path or model_cfg.model_path)
    processor = AutoProcessor.from_pretrained(model_cfg.tokenizer_path or model_cfg.model_path)
    train, val = build_dataloaders(config, tokenizer, processor)
    reward_fn = load_reward_function(
        config.reward.reward_function, config.reward.reward_function_kwargs, config.reward.timeout_s
    )
    judge = make_judge(config.self_reward) if config.self_reward.enable else None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=config.trainer.ray_address,
            num_cpus=config.trainer.ray_num_cpus,
            include_dashboard=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}},
        )
    trainer = None
    try:
        with stop_on_sigterm():
            trainer = RayPPOTrainer(config, tokenizer, train, val, reward_fn, judge)
            trainer.init_workers()
            return trainer.fit()
    finally:
        if trainer is not None and trainer.workers is not None:
            trainer.workers.shutdown()
        if started_here:
            # Stops what this ray.init started (raylet, GCS, the dashboard and runtime-env agents,
            # workers) now rather than leaving them to Ray's exit hooks; with trainer.ray_address
            # it only disconnects from the cluster, which is not ours to stop.
            ray.shutdown()


@contextmanager
def stop_on_sigterm():
    """SIGTERM (kill, a scheduler's pre-emption) raises SystemExit(143) in the main thread, so the
    clean-up in `finally` blocks runs as for Ctrl-C; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> None:
    config = parse_cli_or_exit(PPOConfig, argv, USAGE)
    if config is None:
        return
    print(to_yaml(config), flush=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run(config)
    except (ModelPathError, ConfigError, CheckpointError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
