"""Fault suite: every scenario under full-speed load, then exact accounting.

Scenarios (tests/faultkit.py): kill -9 of the ingest at random moments, PostgreSQL
unreachable, broker restart with QoS 1 publishers, 1% poison, SIGTERM under load.
Each prints published / stored / dead-lettered / duplicated / lost, duration and rate.
The long form targets >= 5k msg/s for 30+ s per scenario; exit status 1 if anything
is lost or duplicated.

    python bench/fault_suite.py [--short] [--repeat N] [--messages N] [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` from the repo root

from beiflow.ingest.broker import PrivateBroker
from tests import faultkit as fk
from tests.scratchdb import scratch_database


def run_one(name: str, broker: PrivateBroker, dsn: str, n: int, *, short: bool,
            seed: int) -> fk.Result:
    """One scenario run."""
    timeout = 120.0 if short else 900.0
    if name == "kill9":
        return fk.scenario_kill9(broker.url, dsn, n, kills=2 if short else 3, seed=seed,
                                 timeout=timeout)
    if name == "db_outage":
        return fk.scenario_db_outage(broker.url, dsn, n, outage_s=5.0 if short else 30.0,
                                     timeout=timeout)
    if name == "broker_restart":
        return fk.scenario_broker_restart(dsn, n, restarts=1 if short else 2,
                                          timeout=timeout)
    if name == "poison":
        return fk.scenario_poison(broker.url, dsn, n, timeout=timeout)
    return fk.scenario_sigterm(broker.url, dsn, n, timeout=timeout)


def main() -> int:
    """Run the scenarios, print one line each; 1 if anything was lost or duplicated."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="4,000 messages per scenario")
    ap.add_argument("--repeat", type=int, default=1, help="runs per scenario")
    ap.add_argument("--messages", type=int, help="messages per scenario "
                    "(default 4,000 short, 200,000 long)")
    ap.add_argument("--only", choices=fk.SCENARIOS, action="append",
                    help="run only this scenario (repeatable)")
    args = ap.parse_args()
    n = args.messages or (4000 if args.short else 200_000)
    admin = os.environ.get("BEIFLOW_ADMIN_DSN", "postgresql://root@127.0.0.1:5432/postgres")
    bad = 0
    with PrivateBroker(binary=os.environ.get("BEIFLOW_MOSQUITTO")) as broker, \
            scratch_database(admin, f"beiflow_faults_{os.getpid()}") as dsn:
        for rep in range(args.repeat):
            for name in args.only or fk.SCENARIOS:
                try:
                    res = run_one(name, broker, dsn, n, short=args.short, seed=rep + 1)
                except Exception as exc:
                    print(f"{name:<14} run {rep + 1}: FAILED {exc!r}", flush=True)
                    bad += 1
                    continue
                res.notes.pop("ingest_log", None)
                res.notes.pop("broker_log", None)
                print(f"run {rep + 1} {res.line()}", flush=True)
                bad += not res.ok
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
