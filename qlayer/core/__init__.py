"""The engine both substrates run: ports with written contracts, and the job transitions.

:mod:`qlayer.core.ports` says what a substrate must provide (a job store, an artifact
store, a ledger of provider submissions, and an orchestrator that can stop running work);
:mod:`qlayer.core.transitions` is what happens around a step — written once against those
ports. The local daemon and the AWS handlers both call it. Nothing here imports a substrate.
"""
