"""The shared step logic, in-process: what both substrates run for each step."""

from __future__ import annotations

import pytest
from qiskit import QuantumCircuit
from qiskit_aer.primitives import SamplerV2

from qlayer import Done, Execute, FanOut, Workflow, keys
from qlayer.planner import Resources
from qlayer.request import decode_request
from qlayer.steps import JobInfo, child_job_id, complete_execute, fan_in, first_input, run_stage
from qlayer.store.local import FolderStore

LIMITS = Resources(local_memory_mb=4096)
calls: list[str] = []


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


wf = Workflow("steps", params={"n": 2})


@wf.stage()
def start(args, ctx):
    calls.append("start")
    ctx.log.info("hello from %s", ctx.stage)
    print("printed line")
    return {"n": args["n"]}


@wf.stage()
def execute_it(data, ctx):
    return Execute.sampler([bell()], then="count", shots=50, seed=1, state={"n": data["n"]})


@wf.stage()
def count(result, ctx):
    return Done({"counts": result[0].data.meas.get_counts(), "n": ctx.state["n"]})


@wf.stage()
def boom(data):
    raise ValueError("the optimiser diverged")


@wf.stage()
def opaque(data):
    return object()


@wf.stage()
def far_away(data):
    return Execute.sampler([bell()], then="count", backend="nowhere")


@wf.stage()
def fan(data):
    return FanOut([1, 2, 3], stage="start", then="count")


@pytest.fixture
def store(tmp_path) -> FolderStore:
    return FolderStore(tmp_path)


def job(**runs: int) -> JobInfo:
    return JobInfo("job-1", {"n": 2}, "aer", runs=dict(runs))


def prepare(store, stage: str, data, seq: int = 0) -> None:
    store.put_json(keys.stage_input("job-1", seq, stage), {"data": data, "state": None})


def test_a_stage_runs_once_and_its_decision_is_recorded(store):
    calls.clear()
    first_input(store, "job-1", "start", {"n": 2})
    decision = run_stage(store, wf, job(), 0, "start", LIMITS)
    assert decision.kind == "next"
    assert decision.stage == "execute_it"
    assert decision.seq == 1
    assert store.exists(decision.input_key)
    again = run_stage(store, wf, job(), 0, "start", LIMITS)
    assert again == decision
    assert calls == ["start"]  # the second call returned the record, user code did not rerun
    log = store.get_text(keys.log_key("job-1", 0, "start"))
    assert "hello from start" in log
    assert "printed line" in log


def test_execute_writes_a_planned_request_and_completion_feeds_then(store):
    prepare(store, "execute_it", {"n": 2}, seq=1)
    decision = run_stage(store, wf, job(), 1, "execute_it", LIMITS)
    assert decision.kind == "execute"
    assert decision.then == "count"
    assert decision.plan["tier"] == "local"
    raw = store.get_json(decision.request_key)
    request = decode_request(raw)
    assert request.shots == 50
    result = SamplerV2(seed=1).run(request.pubs, shots=request.shots).result()
    following = complete_execute(store, "job-1", decision.seq, raw, result)
    assert following.kind == "next"
    assert following.stage == "count"
    done = run_stage(store, wf, job(), following.seq, "count", LIMITS)
    assert done.kind == "done"
    value = store.get_value(done.result_key)
    assert sum(value["counts"].values()) == 50
    assert value["n"] == 2


def test_a_raising_stage_becomes_an_error_decision_with_traceback(store):
    prepare(store, "boom", None)
    decision = run_stage(store, wf, job(), 0, "boom", LIMITS)
    assert decision.kind == "error"
    assert decision.error_type == "ValueError"
    assert decision.message == "the optimiser diverged"
    log = store.get_text(keys.log_key("job-1", 0, "boom"))
    assert "Traceback (most recent call last)" in log
    assert 'raise ValueError("the optimiser diverged")' in log


def test_non_serialisable_output_names_type_and_stage(store):
    prepare(store, "opaque", None)
    decision = run_stage(store, wf, job(), 0, "opaque", LIMITS)
    assert decision.kind == "error"
    assert decision.error_type == "CodecError"
    assert "builtins.object" in decision.message
    assert "stage 'opaque'" in decision.message


def test_unknown_backend_in_execute_fails_with_the_known_list(store):
    prepare(store, "far_away", None)
    decision = run_stage(store, wf, job(), 0, "far_away", LIMITS)
    assert decision.kind == "error"
    assert "unknown backend 'nowhere'" in decision.message
    assert "fake_brisbane" in decision.message


def test_corrupted_input_is_reported_not_crashed_on(store):
    store.put_bytes(keys.stage_input("job-1", 0, "start"), b"\x00garbage")
    decision = run_stage(store, wf, job(), 0, "start", LIMITS)
    assert decision.kind == "error"
    assert decision.error_type == "ArtifactError"
    assert "corrupted" in decision.message


def test_max_runs_stops_a_loop(store):
    prepare(store, "start", {"n": 1})
    decision = run_stage(store, wf, job(start=1000), 0, "start", LIMITS)
    assert decision.kind == "error"
    assert decision.error_type == "MaxRunsExceeded"


def test_fan_out_and_fan_in(store):
    prepare(store, "fan", None)
    decision = run_stage(store, wf, job(), 0, "fan", LIMITS)
    assert decision.kind == "fanout"
    assert decision.count == 3
    items_raw = store.get_json(decision.items_key)
    for index in range(3):
        store.put_value(
            keys.job_result(child_job_id("job-1", decision.seq, index)), index * 10, where="t"
        )
    following = fan_in(store, "job-1", decision.seq, items_raw, decision.count)
    assert following.stage == "count"
    from qlayer.steps import load_input

    data, _ = load_input(store, following.input_key)
    assert data == [0, 10, 20]


@wf.stage()
def on_ibm(data):
    return Execute.sampler([bell()], then="count", shots=64, backend="ibm_brisbane")


def test_an_ibm_request_is_prepared_where_the_stage_ran(store, monkeypatch):
    """The client-side primitives' preparation (PUBs -> the executor's QuantumProgram) is
    done by the stage step, not left to the dispatcher; no account or network is needed."""
    monkeypatch.setenv("QISKIT_IBM_TOKEN", "not-used")
    prepare(store, "on_ibm", None, seq=1)
    decision = run_stage(store, wf, job(), 1, "on_ibm", Resources())
    assert decision.kind == "execute", decision
    request = decode_request(store.get_json(decision.request_key))
    assert request.prepared is not None
    assert request.prepared["primitive"] == "sampler"
    assert request.prepared["params"]["quantum_program"]["shots"] == 64


@wf.stage()
def loop_ibm(data):
    return Execute.sampler([bell()], then="loop_ibm", shots=64, backend="ibm_brisbane")


@wf.stage()
def batch_ibm(data):
    return Execute.sampler([bell()], then="count", backend="ibm_brisbane", mode="batch")


def _qpu_options(store, workflow, info, stage) -> dict:
    store.put_json(keys.stage_input(info.job_id, 1, stage), {"data": None, "state": None})
    decision = run_stage(store, workflow, info, 1, stage, Resources())
    assert decision.kind == "execute", decision
    options = decode_request(store.get_json(decision.request_key)).options
    return {k: options.get(k) for k in ("mode", "session_group")}


@pytest.mark.parametrize(
    ("stage", "info", "expected"),
    [
        # One Execute: a job. A loop (the stage hands its result to itself, or runs again):
        # one session for the job. A fan-out item: one batch with its siblings.
        ("on_ibm", JobInfo("job-1", {}, "aer"), ("job", None)),  # a job needs no group
        ("loop_ibm", JobInfo("job-1", {}, "aer"), ("session", "job-1")),
        ("on_ibm", JobInfo("job-1", {}, "aer", runs={"on_ibm": 1}), ("session", "job-1")),
        ("on_ibm", JobInfo("job-1_3_2", {}, "aer", index=2), ("batch", "job-1_3")),
        ("batch_ibm", JobInfo("job-1", {}, "aer"), ("batch", "job-1")),  # its own mode
    ],
)
def test_the_qpu_mode_of_a_request(store, monkeypatch, stage, info, expected):
    monkeypatch.setenv("QISKIT_IBM_TOKEN", "not-used")
    options = _qpu_options(store, wf, info, stage)
    assert (options["mode"], options["session_group"]) == expected


@pytest.mark.parametrize(
    ("options", "job_id", "expected"),
    [
        ({"mode": "session", "session_group": "job-1"}, "job-1", ("job-1", "job-1")),
        ({"mode": "batch", "session_group": "job-1"}, "job-1", ("job-1", "job-1")),
        # a fan-out item's batch: closed when the job that fanned out ends
        ({"mode": "batch", "session_group": "job-1_3"}, "job-1_3_2", ("job-1_3", "job-1")),
        ({"mode": "batch", "session_group": "a_b_3"}, "a_b_3_10", ("a_b_3", "a_b")),
        ({"mode": "job"}, "job-1", None),
        ({"mode": "session", "session_group": "mine"}, "job-1", None),  # the program's own
        ({"mode": "batch", "session_group": "job-1_x"}, "job-1_x_2", None),
    ],
)
def test_the_group_a_request_holds_and_whose_end_closes_it(options, job_id, expected):
    from qlayer.steps import held_group

    assert held_group({"options": options}, job_id) == expected


def test_the_workflow_qpu_mode_applies_unless_the_execute_names_one(store, monkeypatch):
    monkeypatch.setenv("QISKIT_IBM_TOKEN", "not-used")
    held = Workflow("held", qpu_mode="session")
    held.stage(name="on_ibm")(on_ibm)
    held.stage(name="batch_ibm")(batch_ibm)
    held.stage(name="count")(count)
    assert _qpu_options(store, held, job(), "on_ibm")["mode"] == "session"
    assert _qpu_options(store, held, job(), "batch_ibm")["mode"] == "batch"


def test_an_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match="job, batch, session"):
        Execute.sampler([bell()], then="count", mode="dedicated")
    from qlayer.errors import WorkflowError

    with pytest.raises(WorkflowError, match="job, batch, session"):
        Workflow("bad", qpu_mode="exclusive")


def test_provider_options_reach_the_request(store):
    reservation = "arn:aws:braket:us-east-1:123456789012:reservation/abc"
    execute = Execute.sampler(
        [bell()], then="count", options={"braket": {"reservation_arn": reservation}}
    )
    assert execute.options == {"braket": {"reservation_arn": reservation}}
    assert execute.mode is None


quiet_wf = Workflow("quiet")


@quiet_wf.stage()
def silent(data, ctx):
    ctx.log.info("a logged line is appended at once")
    return Done(data)


@quiet_wf.stage()
def chatty(data, ctx):
    import time as _time

    print("still working", flush=False)  # waits in the buffer: only the thread writes it
    log_path = ctx.store.path(keys.log_key(ctx.job_id, ctx.seq, ctx.stage))
    deadline = _time.monotonic() + 20
    while _time.monotonic() < deadline:
        if "still working" in log_path.read_text():
            return Done(True)  # flushed while the stage still runs
        _time.sleep(0.05)
    return Done(False)


def test_the_log_flushing_thread_starts_only_for_output_that_waits(store, monkeypatch):
    import threading

    from qlayer import steps

    started: list[str] = []

    class Recording(threading.Thread):
        def start(self) -> None:
            started.append(self.name)
            super().start()

    monkeypatch.setattr(steps.threading, "Thread", Recording)
    prepare(store, "silent", 1)
    assert run_stage(store, quiet_wf, job(), 0, "silent", LIMITS).kind == "done"
    assert started == []  # nothing printed: no thread
    assert "appended at once" in store.get_text(keys.log_key("job-1", 0, "silent"))
    prepare(store, "chatty", 1, seq=1)
    decision = run_stage(store, quiet_wf, job(), 1, "chatty", LIMITS)
    assert decision.result_key is not None and store.get_value(decision.result_key) is True
    assert started == ["qlayer-log-flush"]
