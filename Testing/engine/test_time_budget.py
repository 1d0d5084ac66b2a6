"""The time budget (``--time-budget``, ``time_budget_min``): the stopping rule, its estimates, and
runs driven by a fake clock (every step costs 30 fake seconds, every predicted case 20), so the
iteration at which a run must stop is worked out by hand below; no test measures real time."""

from __future__ import annotations

import json

import pytest
import torch
from monai.inferers.utils import _get_scan_interval
from monai.data.utils import dense_patch_slices

from semisupseg import cli
from semisupseg.config import CPU_DEFAULTS, load_config, resolve_time_budget
from semisupseg.errors import InputError
from semisupseg.training import time_budget as tb
from semisupseg.training.trainer import Trainer, train_workspace
from test_live_loop import RecordingSink, config_file, run_training, stop, write_atomically

STEP_S, CASE_S = 30.0, 20.0
TINY_VOXELS = 32 * 32 * 24  # each of the 3 tiny cases, training grid = image grid


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Killed(Exception):
    """Stands for the worker being killed mid-run."""


@pytest.fixture
def fake_time(monkeypatch):
    """Trainer.clock is a fake clock; a step advances it STEP_S, a prediction CASE_S per case.
    ``fake_time.kill_at`` = n makes the step that would reach iteration n raise ``Killed``."""
    clock = FakeClock()
    monkeypatch.setattr(Trainer, "clock", clock)
    real_step, real_predict = Trainer.step, Trainer._predict_cases

    def step(self):
        clock.now += STEP_S
        if getattr(clock, "kill_at", None) == self.iteration + 1:
            raise Killed()
        return real_step(self)

    def predict_cases(self, cases, round_name):
        clock.now += CASE_S * len(cases)
        return real_predict(self, cases, round_name)

    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(Trainer, "_predict_cases", predict_cases)
    # No timed window (as for compiled networks): the estimate before any round is the training
    # speed's, unless a test sets ``fake_time.window_s``.
    monkeypatch.setattr(Trainer, "_window_forward_s", lambda self: getattr(clock, "window_s", None))
    return clock


# ---- the rule and its estimates, by hand ------------------------------------------------------------
@pytest.mark.parametrize("shape, patch, overlap", [
    ((128, 128, 50), (64, 64, 48), 0.25),
    ((32, 32, 24), (32, 32, 16), 0.25),
    ((256, 256, 100), (112, 112, 80), 0.5),
    ((20, 40, 10), (32, 32, 16), 0.5),  # smaller than the window along x and z
    ((97, 65, 33), (32, 32, 16), 0.0),
])
def test_window_count_matches_monai(shape, patch, overlap):
    padded = [max(s, p) for s, p in zip(shape, patch)]  # MONAI pads a volume smaller than the window
    interval = _get_scan_interval(padded, patch, 3, (overlap,) * 3)
    assert tb.count_windows(shape, patch, overlap) == len(dense_patch_slices(padded, patch, interval))


def test_window_count_by_hand():
    # x, y: 1 + ceil((128 - 64) / 48) = 3; z: 1 + ceil((50 - 48) / 36) = 2
    assert tb.count_windows((128, 128, 50), (64, 64, 48), 0.25) == 18


def test_prediction_estimate_from_the_training_speed_by_hand():
    # 18 windows x 1 pass x 3.0 s / 4 patches + 0.3 s x 1 case + 0.3e-6 s x 256*256*100 voxels
    estimate = tb.prediction_from_training([(128, 128, 50)], 256 * 256 * 100, (64, 64, 48), 0.25, 3.0, 4, 1)
    assert estimate == pytest.approx(18 * 0.75 + 0.3 + 0.3e-6 * 6553600)
    two_networks_mc = tb.prediction_from_training([(128, 128, 50)] * 2, 0, (64, 64, 48), 0.25, 3.0, 4, 2 * 3)
    assert two_networks_mc == pytest.approx(2 * 18 * 6 * 0.75 + 2 * 0.3)


def test_prediction_estimate_from_a_timed_window_by_hand():
    # 1.5 x (18 + 4 windows) x 2 passes x 0.1 s + 0.3 s x 2 cases + 0.3e-6 s x (6553600 + 307200) voxels
    assert tb.count_windows((80, 80, 48), (64, 64, 48), 0.25) == 4
    estimate = tb.prediction_from_window([(128, 128, 50), (80, 80, 48)], 6553600 + 307200, (64, 64, 48), 0.25,
                                         0.1, 2)
    assert estimate == pytest.approx(1.5 * (18 + 4) * 2 * 0.1 + 0.3 * 2 + 0.3e-6 * 6860800)


def test_a_parts_first_step_counts_only_until_a_second_is_timed():
    budget = tb.TimeBudget(60.0)
    assert budget.next_step_s == 0.0
    budget.record_step(8.6, first_of_part=True)  # warm-up: allocations, kernel choice
    assert budget.next_step_s == 8.6
    budget.record_step(1.5)
    budget.record_step(2.0)
    assert budget.next_step_s == 2.0


def test_must_stop_when_the_next_step_and_the_finish_would_not_fit():
    assert not tb.must_stop(100.0, elapsed_s=60.0, next_step_s=10.0, finish_s=30.0)  # exactly fits
    assert tb.must_stop(100.0, elapsed_s=60.5, next_step_s=10.0, finish_s=30.0)
    assert tb.must_stop(100.0, elapsed_s=0.0, next_step_s=10.0, finish_s=95.0)


def test_budget_estimates_take_the_slowest_recent_step_and_measured_rounds():
    budget = tb.TimeBudget(600.0)
    assert budget.next_step_s == 0.0 and budget.final_save_s == tb.DEFAULT_SAVE_S
    assert budget.prediction_s(1000, unmeasured=42.0) == (42.0, "training speed")
    assert budget.prediction_s(1000, 42.0, "timed window") == (42.0, "timed window")
    assert budget.prediction_s(0, unmeasured=42.0) == (0.0, "nothing to predict")
    for seconds in [50.0] + [5.0] * tb.RECENT_STEPS:
        budget.record_step(seconds)
    assert budget.next_step_s == 5.0  # the slow first step has left the window of recent steps
    budget.record_step(8.0)
    assert budget.next_step_s == 8.0
    budget.record_prediction(10.0, 1000)  # 0.01 s per voxel
    budget.record_prediction(4.0, 1000)  # faster: the slower rate is kept
    assert budget.prediction_s(3000, unmeasured=1.0) == (pytest.approx(1.25 * 0.01 * 3000), "measured")
    budget.record_save(0.5)
    budget.record_save(0.25)
    assert budget.final_save_s == 0.5
    assert budget.left_s(550.0) == 50.0 and budget.left_s(700.0) == 0.0


def test_budget_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    budget = tb.TimeBudget(1200.0, steps=[3.0, 4.0])
    budget.record_save(0.7)
    budget.record_prediction(6.0, 3000)
    torch.save({"budget": budget.state(spent_s=321.0)}, tmp_path / "b.pt")
    state = torch.load(tmp_path / "b.pt", weights_only=True)["budget"]
    again = tb.TimeBudget(60.0)
    again.restore(state)
    assert again.spent_before_s == 321.0 and list(again.steps) == [3.0, 4.0]
    assert again.save_s == 0.7 and again.predict_s_per_voxel == pytest.approx(0.002)
    assert again.budget_s == 60.0  # the budget is the run's configuration, not the checkpoint's


# ---- configuration ---------------------------------------------------------------------------------
def test_a_budget_without_iterations_trains_until_the_budget():
    config = {"time_budget_min": "20", "iterations": None}
    resolve_time_budget(config)
    assert config == {"time_budget_min": 20.0, "iterations": 0}
    config = {"time_budget_min": 5, "iterations": 300}
    resolve_time_budget(config)
    assert config["iterations"] == 300
    config = {"time_budget_min": None, "iterations": None}
    resolve_time_budget(config)
    assert config["iterations"] is None
    assert load_config(None)["time_budget_min"] is None


@pytest.mark.parametrize("value", [0, -1, "soon", True, float("inf"), float("nan"), [5]])
def test_a_bad_budget_is_an_input_error(value):
    with pytest.raises(InputError) as err:
        resolve_time_budget({"time_budget_min": value, "iterations": None})
    assert "time_budget_min" in err.value.message and "--time-budget" in err.value.hint


def test_a_bad_budget_on_the_command_line_exits_2_and_writes_nothing(tiny_workspace, capsys):
    rc = cli.main(["train", "--workspace", str(tiny_workspace), "--time-budget", "0"])
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 2 and "time_budget_min" in error["message"]
    assert not (tiny_workspace / "runs").exists()


# ---- runs with a fake clock ----------------------------------------------------------------------
# The tiny workspace's final round predicts 3 cases; DyCON predicts with its teacher (1 pass);
# batch 1 + 1 patches; the CPU overlap 0.25 gives 2 windows of 32x32x16 per 32x32x24 case.
FROM_TRAINING = 3 * 2 * STEP_S / 2 + 3 * 0.3 + 0.3e-6 * 3 * TINY_VOXELS  # 90.9 s: estimate before any round
MEASURED = 1.25 * 3 * CASE_S  # 75 s: estimate once a round was timed (20 s per case, x 1.25)


def test_the_run_stops_where_the_next_step_and_the_finish_no_longer_fit(tiny_workspace, one_thread, fake_time):
    # 300 s. Step 1 -> 30 s; the early round (3 cases) -> 90 s and measures 20 s per case.
    # Before step n+1 (t = 90 + 30 (n - 1)): t + 30 + 2 (first save) + 75 > 300 first for n = 5 (t = 210).
    state, sink = run_training(tiny_workspace, "budget", predict_cases="all", first_prediction_at=1, time_budget_min=5)
    assert state == "finished"
    started = sink.of("started")[0]
    assert started["continuous"] is True and started["time_budget_min"] == 5.0  # no iterations: until the budget
    reached = sink.of("budget_reached")
    assert len(reached) == 1
    assert reached[0]["iteration"] == 5 and reached[0]["elapsed_s"] == 210.0 and reached[0]["next_step_s"] == 30.0
    assert reached[0]["prediction_estimate"] == "measured" and reached[0]["prediction_s"] == pytest.approx(MEASURED)
    assert reached[0]["checkpoint_s"] == tb.DEFAULT_SAVE_S and "5 min" in reached[0]["message"]
    finished = sink.of("finished")[0]
    assert finished["iterations"] == 5 and finished["stopped_by"] == "time_budget"
    assert finished["budget_used_s"] == 270.0 <= finished["time_budget_s"] == 300.0  # 210 + final round 60
    kinds = [r["event"] for r in sink.records]
    assert kinds.index("budget_reached") < kinds.index("checkpoint") < max(i for i, k in enumerate(kinds) if k == "prediction")
    final = [p for p in sink.of("prediction") if p["round"] == "final"]
    assert sorted(p["case"] for p in final) == ["case0", "case1", "case2"]
    progress = sink.of("progress")
    assert [p["budget_left_s"] for p in progress] == [300 - 30, 300 - 120, 300 - 150, 300 - 180, 300 - 210]
    assert all(p["eta_s"] == p["budget_left_s"] and p["total"] is None for p in progress)
    checkpoint = torch.load(tiny_workspace / "runs" / "budget" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["iteration"] == 5 and checkpoint["budget"]["spent_s"] == 210.0


def test_before_any_round_the_prediction_is_estimated_from_the_training_speed(tiny_workspace, one_thread, fake_time):
    # 180 s. Before step 2: 30 + 30 + 2 + 90.04 = 152 fits; before step 3: 60 + 122.04 > 180.
    state, sink = run_training(tiny_workspace, "speed", predict_cases="all", time_budget_min=3)
    reached = sink.of("budget_reached")[0]
    assert reached["iteration"] == 2 and reached["prediction_estimate"] == "training speed"
    assert reached["prediction_s"] == pytest.approx(FROM_TRAINING, abs=0.01)
    assert reached["expected_end_s"] == pytest.approx(60 + 2 + FROM_TRAINING, abs=0.01)
    assert sink.of("finished")[0]["budget_used_s"] == 120.0  # the estimate was 1.5x the 60 s round: conservative


def test_before_any_round_a_timed_window_gives_the_estimate(tiny_workspace, one_thread, fake_time):
    # A window's forward timed at 10 s: 1.5 x 3 cases x 2 windows x 1 pass x 10 s + post = 90.9 s as well,
    # so the run stops where the training-speed estimate would, now named after the window.
    fake_time.window_s = 10.0
    state, sink = run_training(tiny_workspace, "window", predict_cases="all", time_budget_min=3)
    reached = sink.of("budget_reached")[0]
    assert reached["prediction_estimate"] == "timed window" and reached["iteration"] == 2
    assert reached["prediction_s"] == pytest.approx(1.5 * 3 * 2 * 10.0 + 3 * 0.3 + 0.3e-6 * 3 * TINY_VOXELS, abs=0.01)


def test_a_run_with_iterations_ends_at_whichever_comes_first(tiny_workspace, one_thread, fake_time):
    state, sink = run_training(tiny_workspace, "short", iterations=3, time_budget_min=60)
    finished = sink.of("finished")[0]
    assert finished["iterations"] == 3 and finished["stopped_by"] == "iterations" and not sink.of("budget_reached")
    assert [p["eta_s"] for p in sink.of("progress")] == [pytest.approx(60.0), pytest.approx(30.0), 0.0]
    fake_time.now = 0.0
    state, sink = run_training(tiny_workspace, "long", iterations=100, time_budget_min=2, predict_cases="none")
    # Nothing to predict: stop once t + 30 + 2 (save) > 120, i.e. before step 4 (t = 90).
    finished = sink.of("finished")[0]
    assert finished["iterations"] == 3 and finished["stopped_by"] == "time_budget"
    assert sink.of("budget_reached")[0]["prediction_estimate"] == "nothing to predict"


def test_at_least_one_iteration_even_when_the_budget_is_too_short(tiny_workspace, one_thread, fake_time):
    state, sink = run_training(tiny_workspace, "tiny", predict_cases="all", time_budget_min=0.5)
    assert state == "finished" and sink.of("finished")[0]["iterations"] == 1
    reached = sink.of("budget_reached")[0]
    assert reached["expected_end_s"] > 30.0  # the event says the budget will be overrun


def test_continuous_run_with_a_budget_on_the_command_line(tiny_workspace, one_thread, fake_time, capsys):
    config = config_file(tiny_workspace.parent, predict_cases="none")
    rc = cli.main(["train", "--workspace", str(tiny_workspace), "--config", str(config), "--run-id", "cli",
                   "--continuous", "--time-budget", "2"])
    events = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert rc == 0
    assert events[0]["event"] == "started" and events[0]["continuous"] is True and events[0]["time_budget_min"] == 2.0
    assert [e["event"] for e in events][-3:] == ["budget_reached", "checkpoint", "finished"]
    assert events[-1]["iterations"] == 3 and events[-1]["stopped_by"] == "time_budget"
    config = json.loads((tiny_workspace / "runs" / "cli" / "config.json").read_text())
    assert config["time_budget_min"] == 2.0 and config["iterations"] == 0
    assert config["ramp_iterations"] == CPU_DEFAULTS["iterations"]


def test_a_predict_request_counts_and_times_the_estimate(tiny_workspace, one_thread, fake_time):
    # 300 s. Steps 1, 2 -> 60 s; the request (case2) -> 80 s and measures 20 s per case.
    # Before step n+1 (t = 80 + 30 (n - 2)): t + 30 + 2 + 75 > 300 first for n = 6 (t = 200).
    def request(run_dir):
        write_atomically(run_dir / "PREDICT", json.dumps(["case2"]))

    state, sink = run_training(tiny_workspace, "asked", actions={2: request}, predict_cases="all", time_budget_min=5)
    assert [(p["case"], p["round"]) for p in sink.of("prediction")][0] == ("case2", "request")
    reached = sink.of("budget_reached")[0]
    assert reached["iteration"] == 6 and reached["elapsed_s"] == 200.0 and reached["prediction_estimate"] == "measured"
    assert sink.of("finished")[0]["budget_used_s"] == 260.0


def test_stop_before_the_budget_cancels_as_usual(tiny_workspace, one_thread, fake_time):
    state, sink = run_training(tiny_workspace, "stopped", actions={2: stop}, predict_cases="all", time_budget_min=5)
    assert state == "cancelled" and not sink.of("budget_reached") and not sink.of("prediction")


def test_resume_after_a_kill_counts_the_time_up_to_the_last_checkpoint(tiny_workspace, one_thread, fake_time):
    # Part 1 (300 s budget, checkpoint every 2): steps 1, 2 -> 60 s, checkpoint (spent 60 s); the
    # step to iteration 4 is killed (its time and iteration 3's are lost with the process).
    fake_time.kill_at = 4
    with pytest.raises(Killed):
        run_training(tiny_workspace, "killed", predict_cases="all", checkpoint_every=2, time_budget_min=5)
    fake_time.kill_at, fake_time.now = None, 5000.0  # the resumed worker's clock reads anything
    # Part 2 from iteration 2: 60 s spent, steps of 30 s known, no round timed yet, no save timed
    # in the checkpoint (2 s assumed until this part's first save, at iteration 4, takes 0 s):
    # before step n+1 (t = 60 + 30 (n - 2)): t + 30 + save + 90.04 > 300 first for n = 6 (t = 180).
    run_dir = tiny_workspace / "runs" / "killed"
    sink = RecordingSink(run_dir)
    assert train_workspace(tiny_workspace, None, {}, "killed", True, sink) == "finished"
    reached = sink.of("budget_reached")[0]
    assert reached["iteration"] == 6 and reached["elapsed_s"] == 180.0 and reached["checkpoint_s"] == 0.0
    assert reached["prediction_estimate"] == "training speed"
    finished = sink.of("finished")[0]
    assert finished["resumed_at"] == 2 and finished["iterations"] == 6 and finished["budget_used_s"] == 240.0


def test_resume_with_a_new_budget_continues_a_finished_budget_run(tiny_workspace, one_thread, fake_time):
    state, sink = run_training(tiny_workspace, "again", predict_cases="none", time_budget_min=2)
    assert sink.of("finished")[0]["iterations"] == 3  # see the command-line test
    fake_time.now = 0.0
    sink = RecordingSink(tiny_workspace / "runs" / "again")
    # 90 s spent (the final checkpoint's); a 4-minute budget: stop once t + 30 + 2 > 240 (the one
    # save was timed after its own checkpoint was written), before step 8 (t = 210).
    train_workspace(tiny_workspace, None, {"time_budget_min": 4}, "again", True, sink)
    finished = sink.of("finished")[0]
    assert finished["iterations"] == 7 and finished["time_budget_s"] == 240.0
    assert json.loads((tiny_workspace / "runs" / "again" / "config.json").read_text())["time_budget_min"] == 4.0


# ---- schedules paced by the budget (schedule_to_budget) ---------------------------------------------
def test_paced_total_by_hand_and_the_typical_step_is_the_median():
    # 300 s budget, 90 s spent, 77 s to finish: 133 s left = 4 steps of 30 s after iteration 1.
    assert tb.paced_total(1, 300.0, 90.0, 77.0, 30.0) == 5
    assert tb.paced_total(5, 300.0, 210.0, 77.0, 30.0) == 6  # no room left: T stays above t
    budget = tb.TimeBudget(60.0)
    budget.record_step(9.0, first_of_part=True)
    assert budget.typical_step_s == 9.0
    for seconds in (2.0, 8.0, 3.0):
        budget.record_step(seconds)
    assert budget.typical_step_s == 3.0 and budget.next_step_s == 8.0


def test_poly_needs_an_end_unless_the_budget_paces_the_schedule(tiny_workspace, one_thread):
    with pytest.raises(InputError, match="schedule_to_budget"):
        run_training(tiny_workspace, "poly-continuous", time_budget_min=5, optimizer={"schedule": "poly"})


def test_a_paced_run_decays_its_rate_to_the_budget_end(tiny_workspace, one_thread, fake_time):
    # As in the first fake-clock run: T = 5 before steps 2-5 (e.g. before step 2: 1 + (300 - 90 - 77) // 30),
    # so poly's progress t / T is 1/5 .. 4/5; step 1 comes before any estimate (progress 0).
    state, sink = run_training(tiny_workspace, "paced", predict_cases="all", first_prediction_at=1, time_budget_min=5,
                               schedule_to_budget=True, optimizer={"schedule": "poly", "lr": 0.01})
    assert state == "finished" and sink.of("finished")[0]["iterations"] == 5
    rates = [p["lr"] for p in sink.of("progress")]
    assert rates == pytest.approx([0.01 * (1 - t / 5) ** 0.9 for t in range(5)])
    unpaced_state, unpaced = run_training(tiny_workspace, "unpaced", predict_cases="all", first_prediction_at=1,
                                          time_budget_min=5)
    assert [p["lr"] for p in unpaced.of("progress")] == [0.05] * 5  # constant (the CPU's default rate)
