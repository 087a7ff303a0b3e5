"""The shared training engine pieces: model building with freezing, one lr-schedule rule, and
the clipped optimizer step that skips non-finite gradients."""

import math

import pytest
import torch

from verl.workers.engine.model import build_policy
from verl.workers.engine.engine import clip_and_step
from verl.workers.engine.optim import build_optimizer, lr_lambda, warmup_steps_for


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
