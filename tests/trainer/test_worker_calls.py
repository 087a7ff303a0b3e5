"""The trainer's worker calls are typed attributes of HybridWorkerGroup: no worker method is named
by a string anywhere in verl/trainer/, every `self.workers.X` the trainer uses exists, and each
bound call is the FSDPWorker method of the same name (so go-to-definition leads to the worker)."""

import ast
import inspect
from pathlib import Path

from verl.single_controller.worker_group import RayWorkerGroup, group_methods
from verl.trainer import one_step_off, ray_trainer
from verl.trainer.one_step_off import RolloutWorkerGroup
from verl.trainer.ray_trainer import HybridWorkerGroup, RayPPOTrainer
from verl.workers.fsdp_worker import FSDPWorker
from verl.workers.rollout_worker import RolloutWorker

TRAINER = Path(__file__).resolve().parents[2] / "verl" / "trainer"
STRING_DISPATCH = {"execute_all", "dispatch", "dispatch_each", "dispatch_per_engine"}
WORKER_METHODS = {name for name, _ in inspect.getmembers(FSDPWorker, inspect.isfunction) if not name.startswith("__")}


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield node


def test_no_worker_method_is_named_by_a_string_in_the_trainer():
    offenders = []
    for path in sorted(TRAINER.rglob("*.py")):
        for call in _calls(path):
            where = f"{path.relative_to(TRAINER.parents[1])}:{call.lineno}"
            if isinstance(call.func, ast.Attribute) and call.func.attr in STRING_DISPATCH:
                offenders.append(f"{where} calls {call.func.attr}")
            if isinstance(call.func, ast.Name) and call.func.id == "timed":
                continue  # a timing label ("timing_s/update_actor"), not a call
            for arg in [*call.args, *(keyword.value for keyword in call.keywords)]:
                if isinstance(arg, ast.Constant) and arg.value in WORKER_METHODS:
                    offenders.append(f"{where} passes the worker method name {arg.value!r}")
    assert offenders == []


def test_every_worker_call_of_the_trainer_is_a_bound_attribute_of_its_group():
    """A misspelt `self.workers.compute_log_probz` would fail only when its line runs (the gae
    branch, say): this finds it without running anything."""
    source = ast.parse(inspect.getsource(inspect.getmodule(RayPPOTrainer)))
    used = {
        node.attr for node in ast.walk(source)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "workers"
    }
    bound = set(group_methods(HybridWorkerGroup))
    assert used - bound <= {"world_size", "shutdown"} and {"world_size", "shutdown"} <= set(dir(RayWorkerGroup))
    assert used & bound, "the trainer makes no typed worker call"


def test_each_bound_call_is_the_worker_method_of_its_name():
    for name, bound in group_methods(HybridWorkerGroup).items():
        assert bound.method is getattr(FSDPWorker, name), name
    assert {"init_model", "generate_sequences", "sleep_rollout", "compute_log_probs", "compute_ref_log_probs",
            "compute_values", "update_actor", "update_critic", "sync_rollout_weights", "save_checkpoint",
            "load_checkpoint", "num_generate_calls", "publish_weights"} == set(group_methods(HybridWorkerGroup))


def test_the_standalone_engines_calls_are_rollout_worker_methods_and_cover_the_trainers_engine_calls():
    """one_step_off: `self.engines` is a RolloutWorkerGroup; colocated, the hybrid group. Every
    `engines.X` the trainer and the stream make must be bound on the groups that can stand there."""
    for name, bound in group_methods(RolloutWorkerGroup).items():
        assert bound.method is getattr(RolloutWorker, name), name
    used = set()
    for module in (ray_trainer, one_step_off):
        used |= {
            node.attr for node in ast.walk(ast.parse(inspect.getsource(module)))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "engines"
        }
    stream_only = {"load_weights", "load_weights_file"}
    used -= {"world_size"}  # the group's own size, not a worker call
    assert used - stream_only <= set(group_methods(HybridWorkerGroup)) & set(group_methods(RolloutWorkerGroup))
    assert stream_only <= used <= set(group_methods(RolloutWorkerGroup)) | set(group_methods(HybridWorkerGroup))


def test_step_takes_its_refill_source_and_returns_its_metrics():
    parameters = inspect.signature(RayPPOTrainer.step).parameters
    assert list(parameters) == ["self", "batch", "refills"]
    assert "_batch_iter" not in inspect.getsource(RayPPOTrainer)  # no iterator planted by fit()
