"""Fault suite, short form: each fault under full-speed load, then exact accounting.

Every published message must end up exactly once as a position row or a dead letter
(tests/faultkit.py); the long soak form is bench/fault_suite.py.
"""

from __future__ import annotations

from beiflow.ingest.broker import PrivateBroker
from tests import faultkit as fk

N = 4000
N_KILL = 12_000


def _check(res: fk.Result, n: int = N) -> None:
    print(res.line())
    assert res.published == n
    assert res.duplicated == 0, res.line()
    assert res.lost == 0, res.line()


def test_kill9_at_random_moments_loses_and_doubles_nothing(broker: PrivateBroker,
                                                          db_dsn: str) -> None:
    res = fk.scenario_kill9(broker.url, db_dsn, N_KILL, kills=3)
    _check(res, N_KILL)
    assert res.stored == N_KILL


def test_database_outage_holds_acks_reports_not_ready_and_recovers(
        broker: PrivateBroker, db_dsn: str) -> None:
    res = fk.scenario_db_outage(broker.url, db_dsn, N, outage_s=5.0)
    _check(res)
    assert res.notes["readyz_503"] is True
    assert res.stored == N


def test_broker_restart_while_publishing_qos1_loses_nothing(db_dsn: str) -> None:
    res = fk.scenario_broker_restart(db_dsn, N)
    _check(res)
    assert res.stored == N


def test_poison_at_one_percent_is_dead_lettered_without_stalling(
        broker: PrivateBroker, db_dsn: str) -> None:
    res = fk.scenario_poison(broker.url, db_dsn, N)
    _check(res)
    assert res.dead == N // 100
    assert res.stored == N - N // 100


def test_sigterm_under_load_exits_zero_and_restart_accounts_for_all(
        broker: PrivateBroker, db_dsn: str) -> None:
    res = fk.scenario_sigterm(broker.url, db_dsn, N)
    _check(res)
    assert res.notes["exit_status"] == 0
    assert res.stored == N

