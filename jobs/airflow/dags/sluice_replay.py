"""`sluice_replay`: build a job's new view version from history while the current version keeps
serving, wait until it has caught up, verify it, and switch the serving layer to it.
Triggered by hand, with the new version's job file (`[view] version = N`):

    airflow dags trigger sluice_replay -c '{"job": "/jobs/orders_v2.toml"}'

Tasks: `replay` (`sluice replay`: the version's batch view from the raw table, its speed layer
from the matching Kafka offsets, until its lag is under `caught_up`) → `wait_caught_up`
(`sluice versions`, deferrable: for a version whose `sluice stream` has taken over) → `verify`
(`sluice verify` on the version, a consistent cut) → `switch` (`sluice switch`, which checks lag
and verify once more and writes the serving pointer). Verify and switch retry with backoff: a
version still catching up may pass later.

Params: `job` (default: the Variable `sluice_job`, else SLUICE_JOB), `from` (`lake` or
`earliest`), `caught_up` (records of lag, default 1000), `state_dir` (the replay's RocksDB state
directory; default sluice's, `./state/<job>.vN` in the worker's directory), `timeout` (how long
replay may take to catch up, default 1h). Brokers from the Variable `sluice_brokers`, else
SLUICE_BROKERS; lake and binary as for `sluice_backfill`.

After the switch, run `sluice stream` on the new version's file (it carries the version on from
where replay stopped) and point `sluice_job` at it, so the hourly backfills build the version
that serves.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from sluice_airflow import SluiceCaughtUpSensor, SluiceReplayOperator, SluiceSwitchOperator, SluiceVerifyOperator
from sluice_airflow.settings import setting_macro

# The retries verify and switch get: a version that is still catching up, or whose lake sink
# has not landed the newest records verify cuts at, passes later.
SETTLING = {
    "retries": 4,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
}

with DAG(
    dag_id="sluice_replay",
    schedule=None,
    catchup=False,
    # Two replays of one job at once would build the same version twice.
    max_active_runs=1,
    params={
        "job": Param(None, type=["null", "string"], description="the new version's job file; default: the Variable sluice_job, else SLUICE_JOB"),
        "from": Param("lake", enum=["lake", "earliest"], description="history from the raw table (lake) or from Kafka's retention (earliest)"),
        "caught_up": Param(1000, type="integer", minimum=1, description="caught up means a consumer lag under this many records"),
        "state_dir": Param(None, type=["null", "string"], description="the replay's RocksDB state directory; default sluice's"),
        "timeout": Param("1h", type="string", description="how long replay may take to catch up"),
    },
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(hours=1),
    },
    # No example job here: replaying needs a job file that names a new version.
    user_defined_macros={"sluice_setting": setting_macro({})},
    tags=["sluice"],
    doc_md=__doc__,
) as dag:
    settings = {
        "job": "{{ params.job or sluice_setting('job') }}",
        "lake": "{{ sluice_setting('lake') }}",
        "sluice_bin": "{{ sluice_setting('bin') }}",
        "brokers": "{{ sluice_setting('brokers') }}",
    }
    replay = SluiceReplayOperator(
        task_id="replay",
        replay_from="{{ params['from'] }}",
        caught_up="{{ params.caught_up }}",
        timeout="{{ params.timeout }}",
        state_dir="{{ params.state_dir or '' }}",
        **settings,
    )
    wait_caught_up = SluiceCaughtUpSensor(
        task_id="wait_caught_up",
        max_lag="{{ params.caught_up }}",
        deferrable=True,
        poke_interval=30,
        # A version that does not catch up in this long needs a look (is its `sluice stream`
        # running?); clear the task once it runs.
        timeout=timedelta(hours=6),
        **settings,
    )
    verify = SluiceVerifyOperator(
        task_id="verify",
        # verify waits for the version's speed topic however long it takes.
        execution_timeout=timedelta(minutes=30),
        **SETTLING,
        **settings,
    )
    switch = SluiceSwitchOperator(
        task_id="switch",
        caught_up="{{ params.caught_up }}",
        execution_timeout=timedelta(minutes=30),
        **SETTLING,
        **settings,
    )
    replay >> wait_caught_up >> verify >> switch
