import textwrap

import pytest

from verl.trainer.config import ConfigError, PPOConfig, load_config, parse_cli


def _valid(**overrides):
    base = {
        "worker.actor.model.model_path": "m",
        "data.train_files": "t.parquet",
        "data.rollout_batch_size": 8,
        "worker.actor.global_batch_size": 4,
        "worker.rollout.n": 2,
        "worker.actor.micro_batch_size_per_device_for_update": 2,
        "trainer.n_gpus_per_node": 2,
    }
    base.update(overrides)
    return [f"{k}={v}" for k, v in base.items()]


def test_yaml_then_cli_override_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""
        trainer:
          max_steps: 5
          logger: [console]
        worker:
          rollout:
            n: 3
    """))
    config = parse_cli(PPOConfig, [f"config={path}", "trainer.max_steps=2"])
    assert config.trainer.max_steps == 2
    assert config.worker.rollout.n == 3
    assert config.trainer.logger == ["console"]
    assert config.worker.actor.clip_ratio_high == 0.3  # untouched default


def test_unknown_key_names_key_and_closest_match():
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer.max_stepz'.*'trainer.max_steps'"):
        load_config(PPOConfig, None, ["trainer.max_stepz=2"])


def test_unknown_key_in_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("worker:\n  rollout:\n    temprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'worker.rollout.temprature'.*temperature"):
        load_config(PPOConfig, str(path), [])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"bad value for 'worker.rollout.n'.*abc"):
        load_config(PPOConfig, None, ["worker.rollout.n=abc"])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(PPOConfig, None, ["trainer.max_steps"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PPOConfig, "/nonexistent.yaml", [])


def test_valid_batch_sizes_pass():
    load_config(PPOConfig, None, _valid()).validate()


def test_rollout_batch_not_multiple_of_global_batch():
    config = load_config(PPOConfig, None, _valid(**{"data.rollout_batch_size": 6}))
    with pytest.raises(ConfigError, match=r"rollout_batch_size=6 is not a multiple of worker.actor.global_batch_size=4"):
        config.validate()


def test_responses_do_not_split_over_world_size():
    config = load_config(PPOConfig, None, _valid(**{"trainer.n_gpus_per_node": 3}))
    with pytest.raises(ConfigError, match=r"= 8 responses per update do not split over world size 3"):
        config.validate()


def test_micro_batch_does_not_divide_per_device_batch():
    config = load_config(PPOConfig, None, _valid(**{"worker.actor.micro_batch_size_per_device_for_update": 3}))
    with pytest.raises(ConfigError, match=r"= 4 per device, not a multiple of .*micro_batch_size_per_device_for_update=3"):
        config.validate()


def test_bad_choice_lists_valid_values():
    config = load_config(PPOConfig, None, _valid(**{"worker.rollout.name": "sglang"}))
    with pytest.raises(ConfigError, match="worker.rollout.name='sglang' is not one of hf, vllm"):
        config.validate()


def test_separate_objective_needs_self_reward():
    config = load_config(PPOConfig, None, _valid(**{"self_reward.objective": "separate"}))
    with pytest.raises(ConfigError, match="needs self_reward.enable=true"):
        config.validate()


def test_shipped_configs_load_and_validate():
    import glob

    paths = sorted(glob.glob("configs/*.yaml"))
    assert paths, "no configs shipped"
    for path in paths:
        if "sft" in path:
            continue
        load_config(PPOConfig, path, []).validate()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"worker.actor.policy_loss": "gspo_seq"}, r"worker.actor.policy_loss='gspo_seq' is not one of ppo, gspo"),
        ({"algorithm.adv_estimator": "gae"}, r"algorithm.adv_estimator='gae' is not one of .*remax"),
        ({"worker.actor.rollout_correction.mode": "is"}, r"rollout_correction.mode='is' is not one of off, tis, mis"),
        ({"worker.actor.rollout_correction.threshold": 1.0}, r"rollout_correction.threshold=1.0 must be > 1"),
        ({"algorithm.overlong.buffer_length": 600}, r"buffer_length=600 must be in \[0, data.max_response_length=512\]"),
        ({"algorithm.dynamic_sampling.max_tries": 0}, r"dynamic_sampling.max_tries=0 must be >= 1"),
        ({"algorithm.adv_estimator": "remax", "algorithm.reward_weights": "{accuracy: 1.0}"}, r"do not apply"),
    ],
)
def test_dapo_gspo_cispo_remax_tis_mis_config_errors_name_the_key(override, message):
    config = parse_cli(PPOConfig, _valid(**override))
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_tis_on_by_default_only_at_temperature_one():
    correction = parse_cli(PPOConfig, _valid()).worker.actor.rollout_correction
    assert (correction.mode, correction.level, correction.threshold) == ("tis", "token", 2.0)
    assert correction.applies(1.0) and not correction.applies(0.7)


def test_vllm_context_shorter_than_prompt_plus_response_is_rejected_before_the_rollout():
    config = parse_cli(PPOConfig, _valid(**{"worker.rollout.name": "vllm", "worker.rollout.max_model_len": 1000}))
    with pytest.raises(ConfigError, match=r"max_model_len=1000 < data.max_prompt_length=512 \+ data.max_response_length=512"):
        config.validate()
    parse_cli(PPOConfig, _valid(**{"worker.rollout.name": "vllm", "worker.rollout.max_model_len": 1024})).validate()
