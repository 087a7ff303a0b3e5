"""`forward_in_step`: a text-only micro-batch under torch.distributed still runs the vision tower
(FSDP ranks stay in lockstep) without changing the loss or any language-model gradient."""

import socket

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForImageTextToText

from verl.models.qwen_vl import forward_in_step


@pytest.fixture
def process_group():
    """A one-rank gloo group; an in-process engine of an earlier test may have left one open."""
    if dist.is_initialized():
        yield
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def loss_and_grads(model, run, input_ids):
    model.zero_grad(set_to_none=True)
    loss = run(model, input_ids=input_ids, labels=input_ids, use_cache=False).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_text_only_forward_runs_the_vision_tower_with_zero_gradient(tiny_model_dir, process_group):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    calls = []
    model.model.visual.register_forward_hook(lambda *args: calls.append(1))
    input_ids = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(0))

    plain_loss, plain_grads = loss_and_grads(model, lambda m, **kw: m(**kw), input_ids)
    assert not calls
    step_loss, step_grads = loss_and_grads(model, forward_in_step, input_ids)
    assert calls, "the vision tower did not run: FSDP ranks with images would wait for this one"
    torch.testing.assert_close(step_loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(step_grads[name], grad, msg=name)
    visual = {name: grad for name, grad in step_grads.items() if ".visual." in f".{name}"}
    assert visual and all(bool((grad == 0).all()) for grad in visual.values())
