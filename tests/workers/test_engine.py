"""The training engine and its pieces: model building with freezing, one lr-schedule rule, the
clipped optimizer step that skips non-finite gradients, and `Engine` (layout-independent
accumulation, the non-finite-loss stop, save/resume)."""

import math

import pytest
import torch

from verl.workers.engine.model import build_policy
from verl.workers.config import OptimConfig
from verl.workers.engine.engine import Engine, NonFiniteLossError, clip_and_step
from verl.workers.engine.optim import apply_configured_lr, build_optimizer, lr_lambda, warmup_steps_for


def trainable_prefixes(model) -> set[str]:
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return {".".join(name.split(".")[:3]) for name in names}


def test_build_policy_freezing(tiny_model_dir):
    cpu = torch.device("cpu")
    full = build_policy(tiny_model_dir, cpu)
    assert all(p.requires_grad for p in full.parameters()) and full.config.use_cache is False
    tower = build_policy(tiny_model_dir, cpu, freeze_vision_tower=True)
    assert trainable_prefixes(tower) == {"model.visual.merger", "model.language_model.embed_tokens",
                                         "model.language_model.layers", "model.language_model.norm"}
    both = build_policy(tiny_model_dir, cpu, freeze_vision_tower=True, freeze_multi_modal_projector=True)
    assert not any(p.requires_grad for p in both.model.visual.parameters())
    assert all(p.requires_grad for p in both.model.language_model.parameters())
    reference = build_policy(tiny_model_dir, cpu, dtype=torch.bfloat16, trainable=False)
    assert not any(p.requires_grad for p in reference.parameters())
    assert next(reference.parameters()).dtype == torch.bfloat16


def test_warmup_rounds_up_and_schedule_shape():
    assert warmup_steps_for(0.0, 100) == 0 and warmup_steps_for(0.1, 95) == 10 and warmup_steps_for(0.001, 10) == 1
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer, scheduler = build_optimizer(params, 1.0, (0.9, 0.999), 1e-8, 0.0, 10, 0.2, "cosine", 0.1)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == [0.5, 1.0, 1.0]  # 2 warm-up steps, then the cosine starts at the peak
    assert lrs[2] > lrs[5] > lrs[9] >= 0.1
    assert lr_lambda(10, 2, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_lambda(7, 2, 10, "constant", 0.1) == 1.0
    with pytest.raises(ValueError, match="nothing to train"):
        build_optimizer([], 1.0, (0.9, 0.999), 1e-8, 0.0, 10, 0.0, "constant", 0.0)


def test_clip_and_step_clips_and_skips_non_finite():
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([param], lr=1.0)
    param.grad = torch.full((4,), 3.0)  # norm 6, clipped to 1
    norm, stepped = clip_and_step([param], 1.0, optimizer.step)
    assert stepped and norm == pytest.approx(6.0)
    torch.testing.assert_close(param.detach(), torch.full((4,), 1.0 - 0.5))
    param.grad = torch.tensor([float("nan"), 0.0, 0.0, 0.0])
    norm, stepped = clip_and_step([param], 1.0, optimizer.step)
    assert not stepped and math.isnan(norm)
    torch.testing.assert_close(param.detach(), torch.full((4,), 0.5))  # unchanged


def linear_engine(lr: float = 0.1) -> Engine:
    torch.manual_seed(0)
    optim = OptimConfig(lr=lr, weight_decay=0.0, lr_warmup_ratio=0.5, lr_scheduler="cosine")
    return Engine(torch.nn.Linear(3, 1), optim, total_steps=4, max_grad_norm=1e9)


def squared_error_share(engine: Engine, count: int):
    """loss_fn of the global token-mean convention: a micro-batch's sum over the batch's count."""
    return lambda batch: (engine.module(batch[0]).squeeze(-1) - batch[1]).square().sum() / count


def test_train_batch_gradient_does_not_depend_on_the_micro_batch_layout():
    x, y = torch.randn(6, 3), torch.randn(6)
    whole, split = linear_engine(), linear_engine()
    whole.train_batch([(x, y)], squared_error_share(whole, 6), str)
    layout = [(x[:1], y[:1]), (x[1:4], y[1:4]), (x[4:], y[4:])]  # unequal micro-batches
    result = split.train_batch(layout, squared_error_share(split, 6), str)
    assert result.stepped and result.lr == pytest.approx(0.05)  # the first of 2 warm-up steps
    for a, b in zip(whole.module.parameters(), split.module.parameters()):
        torch.testing.assert_close(a, b)
    assert split.optimizer_steps == 1 and split.lr == pytest.approx(0.1)


def test_a_non_finite_loss_raises_before_any_step():
    engine = linear_engine()
    before = [p.detach().clone() for p in engine.module.parameters()]
    batch = (torch.randn(2, 3), torch.tensor([float("nan"), 0.0]))
    with pytest.raises(NonFiniteLossError, match="step 3: 1 bad micro-batch"):
        engine.train_batch([batch, (torch.randn(2, 3), torch.zeros(2))], squared_error_share(engine, 4),
                           lambda count: f"step 3: {count} bad micro-batch")
    assert engine.optimizer_steps == 0
    assert all(torch.equal(a, b) for a, b in zip(before, engine.module.parameters()))


def test_save_and_resume_continue_the_same_run(tmp_path):
    x, y = torch.randn(4, 3), torch.randn(4)
    run, resumed = linear_engine(), linear_engine(lr=0.5)  # a resume takes the configured peak lr
    run.train_batch([(x, y)], squared_error_share(run, 4), str)
    run.save(str(tmp_path / "actor"))
    resumed.resume(str(tmp_path / "actor"))
    assert resumed.optimizer_steps == 1 and resumed.lr == pytest.approx(0.5 * lr_lambda(1, 2, 4, "cosine", 0.0))
    run.optim.lr = 0.5  # the same step on both: the AdamW moments were restored
    apply_configured_lr(run.optimizer, run.scheduler, 0.5)
    for engine in (run, resumed):
        engine.train_batch([(x, y)], squared_error_share(engine, 4), str)
    for a, b in zip(run.module.parameters(), resumed.module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
