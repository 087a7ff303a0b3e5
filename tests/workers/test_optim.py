"""verl.workers.engine.optim.apply_configured_lr: a resume trains with the configured peak lr.
Loading an optimizer's and a LambdaLR's state also loads the lr they were saved with, so without
it a resume that changes optim.lr keeps training with the old one."""

import pytest
import torch

from verl.workers.engine.optim import apply_configured_lr, build_optimizer, lr_lambda


def _optimizer(lr: float):
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(
        list(model.parameters()), lr, (0.9, 0.999), 1e-8, 0.0, total_steps=10, warmup_ratio=0.0,
        scheduler="cosine", min_lr_ratio=0.0,
    )
    return model, optimizer, scheduler


def test_a_resume_with_a_new_lr_continues_the_schedule_at_the_new_peak():
    model, optimizer, scheduler = _optimizer(1e-3)
    for _ in range(3):
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        scheduler.step()
    _, resumed, resumed_scheduler = _optimizer(5e-3)
    resumed.load_state_dict(optimizer.state_dict())
    resumed_scheduler.load_state_dict(scheduler.state_dict())
    cosine = lambda step: lr_lambda(step, 0, 10, "cosine", 0.0)  # noqa: E731
    assert resumed.param_groups[0]["lr"] == pytest.approx(1e-3 * cosine(3))  # torch keeps the saved peak
    apply_configured_lr(resumed, resumed_scheduler, 5e-3)
    assert resumed.param_groups[0]["lr"] == pytest.approx(5e-3 * cosine(3))
    resumed.step()
    resumed_scheduler.step()
    assert resumed.param_groups[0]["lr"] == pytest.approx(5e-3 * cosine(4))
    assert resumed_scheduler.get_last_lr() == [pytest.approx(5e-3 * cosine(4))]
