import textwrap

import pytest
import torch

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


def test_yaml_boolean_words_stay_words_for_string_fields_and_convert_for_booleans():
    config = load_config(
        PPOConfig, None, ["worker.actor.rollout_correction.mode=off", "self_reward.enable=yes", "trainer.val_before_train=off"]
    )
    assert config.worker.actor.rollout_correction.mode == "off"
    assert config.self_reward.enable is True and config.trainer.val_before_train is False


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


def test_packing_attention_is_a_checked_choice_and_flex_needs_a_gpu():
    config = load_config(PPOConfig, None, _valid(**{"worker.actor.model.packing_attention": "sparse"}))
    with pytest.raises(ConfigError, match="packing_attention='sparse' is not one of auto, dense, segments, flex"):
        config.validate()
    config = load_config(
        PPOConfig, None, _valid(**{"worker.actor.model.packing_attention": "flex", "trainer.device": "cpu"})
    )
    with pytest.raises(ConfigError, match="packing_attention=flex needs a GPU"):
        config.validate()


def test_ray_num_cpus_is_refused_when_joining_a_cluster():
    """ray.init refuses num_cpus with an address; the config says which key to unset before Ray starts."""
    config = load_config(PPOConfig, None, _valid(**{"trainer.ray_address": "10.0.0.1:6379", "trainer.ray_num_cpus": 2}))
    with pytest.raises(ConfigError, match="trainer.ray_num_cpus=2 sizes a local Ray, but trainer.ray_address=10.0.0.1:6379"):
        config.validate()
    load_config(PPOConfig, None, _valid(**{"trainer.ray_address": "10.0.0.1:6379"})).validate()


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
        ({"algorithm.adv_estimator": "ppo"}, r"algorithm.adv_estimator=.ppo. is not one of .*remax, gae"),
        ({"worker.actor.rollout_correction.mode": "is"}, r"rollout_correction.mode='is' is not one of off, tis, mis"),
        ({"worker.actor.rollout_correction.threshold": 1.0}, r"rollout_correction.threshold=1.0 must be > 1"),
        ({"algorithm.overlong.buffer_length": 600}, r"buffer_length=600 must be in \[0, data.max_response_length=512\]"),
        ({"algorithm.dynamic_sampling.max_tries": 0}, r"dynamic_sampling.max_tries=0 must be in \[1, 1000\]"),
        ({"algorithm.adv_estimator": "remax", "algorithm.reward_weights": "{accuracy: 1.0}"}, r"do not apply"),
        ({"algorithm.adv_estimator": "gae", "worker.critic.fsdp.optimizer_offload": True},
         r"worker.critic.fsdp.optimizer_offload=true is not implemented for the critic"),
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


def test_rank_setup_carries_what_a_worker_reads_from_the_other_sections():
    lengths = {"data.max_prompt_length": 300, "data.max_response_length": 100,
               "self_reward.max_prompt_length": 350, "self_reward.max_response_length": 150}
    setup = parse_cli(PPOConfig, _valid(**lengths, **{"self_reward.enable": "true"})).rank_setup()
    assert setup.longest_row == 500  # the re-prompt row is the longer one
    assert parse_cli(PPOConfig, _valid(**lengths, **{"self_reward.enable": "false"})).rank_setup().longest_row == 400
    no_reference = parse_cli(PPOConfig, _valid(**{"worker.actor.use_kl_loss": "false", "algorithm.kl_coef": 0}))
    assert not no_reference.rank_setup().with_reference
    in_reward_kl = parse_cli(PPOConfig, _valid(**{"worker.actor.use_kl_loss": "false", "algorithm.kl_coef": 0.01}))
    assert in_reward_kl.rank_setup().with_reference
    gae = parse_cli(PPOConfig, _valid(**{"algorithm.adv_estimator": "gae", "trainer.seed": 7})).rank_setup()
    assert gae.with_critic and gae.seed == 7
    assert not parse_cli(PPOConfig, _valid()).rank_setup().with_critic


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("worker.actor.optim.lr", "-1e-5", r"worker.actor.optim.lr=-1e-05 must be > 0"),
        ("worker.actor.optim.betas", "[0.9,1.5]", r"worker.actor.optim.betas=.* must be in \[0, 1\)"),
        ("worker.rollout.top_p", "0", r"worker.rollout.top_p=0.0 must be in \(0, 1\]"),
        ("worker.rollout.temperature", "nan", r"worker.rollout.temperature=nan must be a finite number"),
        ("trainer.save_freq", "-2", r"trainer.save_freq=-2 must be >= 1 or -1 or 0"),
        ("trainer.max_steps", "0", r"trainer.max_steps=0 must be >= 1 or null"),
        ("reward.timeout_s", "0", r"reward.timeout_s=0.0 must be > 0"),
        ("algorithm.gamma", "1.5", r"algorithm.gamma=1.5 must be in \[0, 1\]"),
        ("algorithm.reward_weights.accuracy", "nan", r"algorithm.reward_weights=.* must be a finite number"),
        ("self_reward.judge_max_retries", "-1", r"self_reward.judge_max_retries=-1 must be >= 0"),
    ],
)
def test_numeric_values_out_of_range_name_the_key(key, value, expected):
    config = parse_cli(PPOConfig, _valid(**{key: value}))
    with pytest.raises(ConfigError, match=expected):
        config.validate()


def test_every_numeric_knob_has_a_range_or_is_unbounded_on_purpose():
    """A new numeric field must get a range (RANGES of its dataclass) or be added here with a reason."""
    from dataclasses import fields, is_dataclass

    unbounded = {
        "data.seed", "worker.rollout.seed", "trainer.seed",  # any integer seeds a generator
        "worker.actor.entropy_coeff",  # negative = entropy penalty
        "algorithm.reward_weights",  # component -> weight of either sign (finite: checked for every float)
        "worker.actor.model.lora.rank", "worker.actor.model.lora.alpha",  # LoRAConfig.check (alpha only when on)
    }

    def numeric_without_range(config, prefix=""):
        for f in fields(config):
            value = getattr(config, f.name)
            if is_dataclass(value):
                yield from numeric_without_range(value, prefix + f.name + ".")
            elif "int" in str(f.type) or "float" in str(f.type):
                if f.name not in getattr(type(config), "RANGES", {}):
                    yield prefix + f.name

    assert sorted(set(numeric_without_range(PPOConfig())) - unbounded) == []


@pytest.mark.parametrize("loss", ["gspo", "gspo_token"])
def test_gspo_gets_its_papers_aggregation_and_clip_unless_set(loss, capsys):
    """GSPO under PPO's defaults (token-mean, 0.2/0.3) is a length-weighted, almost unclipped
    objective; choosing it selects the paper's settings, says so, and keeps what the user set."""
    actor = parse_cli(PPOConfig, _valid(**{"worker.actor.policy_loss": loss})).worker.actor
    assert (actor.loss_agg_mode, actor.clip_ratio_low, actor.clip_ratio_high) == ("seq-mean-token-mean", 3e-4, 4e-4)
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and f"policy_loss={loss}" in line and "clip_ratio_low=0.0003" in line
    actor = parse_cli(PPOConfig, _valid(**{"worker.actor.policy_loss": loss, "worker.actor.clip_ratio_high": 1e-3})).worker.actor
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (3e-4, 1e-3)
    assert "kept: worker.actor.clip_ratio_high=0.001 (paper: 0.0004)" in capsys.readouterr().out


def test_a_yaml_setting_counts_as_set_by_the_user(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("worker:\n  actor:\n    policy_loss: gspo\n    loss_agg_mode: token-mean\n")
    actor = load_config(PPOConfig, str(path), []).worker.actor
    assert (actor.loss_agg_mode, actor.clip_ratio_low) == ("token-mean", 3e-4)


def test_ppo_keeps_the_generic_defaults(capsys):
    actor = parse_cli(PPOConfig, _valid()).worker.actor
    assert (actor.loss_agg_mode, actor.clip_ratio_low, actor.clip_ratio_high) == ("token-mean", 0.2, 0.3)
    assert "policy_loss" not in capsys.readouterr().out


def test_cispo_has_no_is_weight_floor_by_default():
    """MiniMax-M1 (2506.13585) bounds the IS weight only from above; the old default 0.2 floored
    it at 0.8. A ratio of 0.25 now keeps its value (and its gradient weight)."""
    from verl.algorithms.core_algos import compute_cispo_policy_loss

    actor = parse_cli(PPOConfig, _valid(**{"worker.actor.policy_loss": "cispo"})).worker.actor
    assert actor.clip_ratio_low == 1.0
    log_probs = torch.log(torch.tensor([[0.25]])).requires_grad_()
    loss, metrics = compute_cispo_policy_loss(
        torch.zeros(1, 1), log_probs, torch.ones(1, 1), torch.ones(1, 1),
        actor.clip_ratio_low, actor.clip_ratio_high, actor.loss_agg_mode,
    )
    loss.backward()
    assert metrics["pg_clipfrac"] == 0.0 and log_probs.grad.item() == pytest.approx(-0.25)
    explicit = parse_cli(PPOConfig, _valid(**{"worker.actor.policy_loss": "cispo", "worker.actor.clip_ratio_low": 0.2}))
    assert explicit.worker.actor.clip_ratio_low == 0.2


def test_dynamic_sampling_defaults_to_accuracy_and_erroring():
    dynamic = PPOConfig().algorithm.dynamic_sampling
    assert dynamic.metric == "accuracy" and dynamic.fill_after_max_tries is False


@pytest.mark.parametrize("estimator", ["reinforce_plus_plus", "remax", "gae"])
def test_dynamic_sampling_refuses_estimators_that_are_not_group_relative(estimator):
    config = parse_cli(PPOConfig, _valid(**{"algorithm.dynamic_sampling.enable": True, "algorithm.adv_estimator": estimator}))
    with pytest.raises(ConfigError, match=rf"algorithm.dynamic_sampling.enable=true needs a group-relative "
                                          rf"algorithm.adv_estimator \(one of grpo, rloo, reinforce_plus_plus_baseline\), got '{estimator}'"):
        config.validate()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"self_reward.objective": "paper_v2"}, r"self_reward.objective=paper_v2 needs self_reward.enable=true"),
        ({"self_reward.enable": True, "self_reward.objective": "paper_v2", "self_reward.judge": "openai",
          "self_reward.judge_base_url": "http://x", "self_reward.judge_model": "m"}, r"needs self_reward.judge=policy"),
        ({"self_reward.enable": True, "self_reward.tags": "paper_v2"},
         r"reward.reward_function_kwargs.tags='sr1' differs from self_reward.tags='paper_v2'"),
        ({"self_reward.enable": True, "self_reward.tags": "v3"}, r"self_reward.tags='v3' is not one of sr1, paper_v2"),
        ({"self_reward.enable": True, "self_reward.objective": "paper_v2", "algorithm.dynamic_sampling.enable": True},
         r"does not support self_reward.objective=paper_v2"),
    ],
)
def test_paper_v2_config_errors_name_the_key(override, message):
    config = parse_cli(PPOConfig, _valid(**override))
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_paper_v2_with_matching_tags_validates():
    parse_cli(PPOConfig, _valid(**{
        "self_reward.enable": True, "self_reward.objective": "paper_v2", "self_reward.tags": "paper_v2",
        "reward.reward_function_kwargs": "{tags: paper_v2}",
    })).validate()


# ---- choice fields: one generated test per field of a CHOICES table ----------------------------

def _choice_fields(config, prefix=""):
    """(dotted key, valid values, is a list field) of every field a CHOICES table lists."""
    from dataclasses import fields, is_dataclass

    from verl.utils.ranges import valid_choices

    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            yield from _choice_fields(value, prefix + f.name + ".")
        elif f.name in getattr(type(config), "CHOICES", {}):
            yield prefix + f.name, valid_choices(type(config).CHOICES[f.name]), isinstance(value, list)


CHOICE_FIELDS = sorted(_choice_fields(PPOConfig()))


def _assert_typo_is_named(schema, valid_args: list[str], key: str, valid: tuple[str, ...], is_list: bool) -> None:
    """A near-miss value of `key` fails validation with `key=...` first and the valid values last."""
    typo = valid[-1].upper() + "x"  # close to a valid value, never one
    config = parse_cli(schema, valid_args + [f"{key}=[{valid[0]},{typo}]" if is_list else f"{key}={typo}"])
    with pytest.raises(ConfigError) as error:
        config.validate()
    message = str(error.value)
    assert message.startswith(f"{key}=") and repr(typo) in message, message
    assert message.endswith(f"is not one of {', '.join(valid)}"), message


@pytest.mark.parametrize(("key", "valid", "is_list"), CHOICE_FIELDS, ids=[key for key, _, _ in CHOICE_FIELDS])
def test_a_typo_in_a_choice_field_stops_before_anything_starts_naming_the_key_and_the_valid_values(key, valid, is_list):
    _assert_typo_is_named(PPOConfig, _valid(), key, valid, is_list)


def test_every_default_of_a_choice_field_is_one_of_its_choices():
    config = PPOConfig()
    for key, valid, is_list in CHOICE_FIELDS:
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        assert set(value if is_list else [value]) <= set(valid), key


def test_every_text_knob_is_a_checked_choice_or_free_text_on_purpose():
    """A new string field with a fixed set of values must get a CHOICES entry (its typo would
    otherwise fail after Ray, model loading and the first rollout), or be listed here with a reason."""
    from dataclasses import fields, is_dataclass

    free_text = {
        "data.train_files", "data.val_files", "data.prompt_key", "data.answer_key", "data.image_key",
        "data.format_prompt", "data.system_prompt",  # paths and column names: checked when the data loads
        "worker.actor.model.model_path", "worker.actor.model.tokenizer_path", "worker.critic.model_path",
        "worker.actor.model.lora.target_modules", "worker.actor.model.lora.exclude_modules",  # module names
        "reward.reward_function",  # a built-in or path/to/file.py:function: the loader checks it at start-up
        "algorithm.dynamic_sampling.metric",  # a reward component: checked against the reward's output
        "self_reward.judge_base_url", "self_reward.judge_model", "self_reward.judge_api_key_env",
        "trainer.project_name", "trainer.experiment_name", "trainer.ray_address",
        "trainer.save_checkpoint_path", "trainer.load_checkpoint_path",
        "trainer.resume_allow_changes",  # checked against RESUME_SETTINGS by PPOConfig.validate
        "algorithm.reward_weights", "reward.reward_function_kwargs",  # keyed by reward components / kwargs
    }

    def text_without_choices(config, prefix=""):
        for f in fields(config):
            value = getattr(config, f.name)
            if is_dataclass(value):
                yield from text_without_choices(value, prefix + f.name + ".")
            elif "str" in str(f.type) and f.name not in getattr(type(config), "CHOICES", {}):
                yield prefix + f.name

    assert sorted(set(text_without_choices(PPOConfig())) - free_text) == []


def test_the_dtype_choices_are_the_names_the_model_code_resolves():
    import torch

    from verl.models.qwen_vl import resolve_dtype
    from verl.workers.config import DTYPES

    for name in DTYPES:
        assert resolve_dtype(name, torch.device("cpu")) in (torch.float32, torch.bfloat16)


def _sft_choice_fields():
    from verl.trainer.sft import SFTConfig

    return sorted(_choice_fields(SFTConfig()))


@pytest.mark.parametrize(("key", "valid", "is_list"), _sft_choice_fields(), ids=[k for k, _, _ in _sft_choice_fields()])
def test_a_typo_in_an_sft_choice_field_names_the_key_and_the_valid_values(key, valid, is_list):
    """SFT shares the RL model/optim/fsdp sections and their CHOICES; its own sections have theirs."""
    from verl.trainer.sft import SFTConfig

    _assert_typo_is_named(SFTConfig, ["model.model_path=m", "data.train_file=t.json", "trainer.output_dir=o"],
                          key, valid, is_list)


def test_save_freq_takes_its_documented_never_and_only_at_the_end():
    """0 = never, -1 = only at the end (the docstring's meanings; 0 was refused by the range)."""
    for value in (0, -1, 5):
        parse_cli(PPOConfig, _valid(**{"trainer.save_freq": value})).validate()
    with pytest.raises(ConfigError, match="trainer.save_freq=-2"):
        parse_cli(PPOConfig, _valid(**{"trainer.save_freq": -2})).validate()


def test_one_step_off_refuses_tensor_parallel_engines_and_leaves_the_training_ranks_without_one():
    with pytest.raises(ConfigError, match=r"one_step_off runs one engine per rollout process.*tensor_parallel_size=2"):
        parse_cli(PPOConfig, _valid(**{"trainer.rollout_mode": "one_step_off", "worker.rollout.tensor_parallel_size": 2})).validate()
    config = parse_cli(PPOConfig, _valid(**{"trainer.rollout_mode": "one_step_off"}))
    assert config.rank_setup().with_rollout is False
    assert parse_cli(PPOConfig, _valid()).rank_setup().with_rollout is True
