"""A job whose only op outlives a test unless its run worker is killed: the code location
defs/test_run_launcher.py launches through a real code server."""

import time

import dagster as dg


@dg.op
def nap() -> None:
    time.sleep(120)


@dg.job(executor_def=dg.in_process_executor)
def napping_job() -> None:
    nap()


defs = dg.Definitions(jobs=[napping_job])
