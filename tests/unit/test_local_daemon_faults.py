def test_a_device_job_that_ended_unheard_runs_again_after_a_restart(daemon):
    # The daemon died (or could not write) between recording that a device job ended
    # and applying its outcome to the step: recovery queues it again, and the worker
    # answers it from the recorded outcome instead of simulating it again.
    _job(daemon, "j")
    daemon.conn.execute(
        "INSERT INTO steps (job_id, seq, kind, stage, state, detail, created_at)"
        " VALUES ('j', 1, 'execute', 'execute', 'waiting', '{}', 1)"
    )
    daemon.conn.execute(
        "INSERT INTO device_jobs (device_job_id, idempotency_key, job_id, seq, backend,"
        " request_key, status, submitted_at) VALUES ('dev-1', 'j/1', 'j', 1, 'aer', 'r',"
        " 'DONE', 1)"
    )
    daemon.devices.recover()
    [row] = daemon.conn.execute("SELECT status FROM device_jobs").fetchall()
    assert row["status"] == "QUEUED"
