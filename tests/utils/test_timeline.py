"""Stage spans, per-side busy time and the Chrome-trace timeline file (verl/utils/timeline.py)."""

import json
import time

from verl.utils.timeline import TIMELINE_FILE, StageTimes, Timeline, busy_metrics, timed


def test_spans_sum_per_stage_and_busy_time_per_side():
    timing = StageTimes()
    for name in ("gen", "reward", "gen", "update_actor", "sync", "mystery"):
        with timed(name, timing):
            time.sleep(0.01)
    assert [span.name for span in timing.spans] == ["gen", "reward", "gen", "update_actor", "sync", "mystery"]
    assert timing["gen"] == timing.spans[0].duration_s + timing.spans[2].duration_s
    assert all(later.start_s >= earlier.start_s for earlier, later in zip(timing.spans, timing.spans[1:]))
    metrics = busy_metrics(timing, wall_s=1.0)
    assert "timing_s/checkpoint_busy" not in metrics  # the save runs after the step
    assert metrics["timing_s/generation_busy"] == timing["gen"]
    assert metrics["timing_s/training_busy"] == timing["update_actor"]
    assert metrics["timing_s/driver_busy"] == timing["reward"]
    assert metrics["timing_s/sync_busy"] == timing["sync"]
    assert metrics["timing_s/other_busy"] == timing["mystery"]  # a stage of no known side is still counted
    assert metrics["timing_s/step_wall"] == 1.0 and metrics["timing_s/generation_share"] == timing["gen"]


def test_a_plain_dict_still_gets_the_seconds():
    timing = {}
    with timed("gen", timing):
        pass
    assert set(timing) == {"gen"}


def test_the_timeline_is_a_chrome_trace_and_a_resume_keeps_the_earlier_steps(tmp_path):
    timeline = Timeline(str(tmp_path))
    for step in (1, 2, 3):
        timing = StageTimes()
        for name in ("gen", "reward", "update_actor", "save_checkpoint"):
            with timed(name, timing):
                pass
        timeline.add_step(step, timing.spans)
        timeline.write()
    trace = json.loads((tmp_path / TIMELINE_FILE).read_text())
    complete = [event for event in trace["traceEvents"] if event["ph"] == "X"]
    assert [(e["name"], e["args"]["step"]) for e in complete] == [
        (name, step) for step in (1, 2, 3) for name in ("gen", "reward", "update_actor", "save_checkpoint")
    ]
    assert all(isinstance(e["ts"], int) and e["dur"] >= 0 for e in complete)
    lanes = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert {lanes[e["tid"]] for e in complete} == {"generation", "driver", "training", "checkpoint"}
    # A run resuming from step 2's checkpoint replays step 3: its old events go.
    resumed = Timeline(str(tmp_path))
    resumed.drop_from(3)
    resumed.write()
    steps = {e["args"]["step"] for e in json.loads((tmp_path / TIMELINE_FILE).read_text())["traceEvents"] if e["ph"] == "X"}
    assert steps == {1, 2}


def test_a_torn_timeline_file_starts_a_new_one(tmp_path):
    (tmp_path / TIMELINE_FILE).write_text('{"traceEvents": [{"name": "gen", "ph": "X"')
    timeline = Timeline(str(tmp_path))
    assert timeline.events == []
    timeline.write()
    assert json.loads((tmp_path / TIMELINE_FILE).read_text())["displayTimeUnit"] == "ms"
