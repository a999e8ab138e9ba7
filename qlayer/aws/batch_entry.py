"""The AWS Batch entry point: run one step of a job in the runner container.

``python -m qlayer.aws.batch_entry --job-id <id> --seq <n> --stage <stage|execute>``

A stage runs with :func:`qlayer.aws.steps.run_stage_for` and a simulation
(``--stage execute``) with :func:`qlayer.aws.steps.simulate_step`; both write the
step's ``output.json``, which the state machine's "Read stage outcome" reads (Batch
returns no payload). Exit status 0 whenever a decision was recorded, errors included:
an error decision is the job's business, not Batch's (no Batch retry for a stage
that raised).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from qlayer import keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qlayer-batch", description=__doc__.splitlines()[0])
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--seq", required=True, type=int)
    parser.add_argument(
        "--stage", required=True, help="the stage to run, or 'execute' for a simulation"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from qlayer.aws.services import services
    from qlayer.aws.steps import run_stage_for, simulate_step

    keys.check_name(args.job_id, "job id")
    svc = services()
    if args.stage == "execute":
        request_key = keys.execute_request(args.job_id, args.seq)
        backend = svc.store.get_json(request_key)["backend"]
        decision = simulate_step(svc, args.job_id, args.seq, request_key, backend)
    else:
        keys.check_name(args.stage, "stage")
        decision = run_stage_for(svc, args.job_id, args.seq, args.stage)
    print(json.dumps({"job_id": args.job_id, "seq": args.seq, "decision": decision.to_json()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
