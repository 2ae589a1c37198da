"""merge_duplicate_keys: rows of one (device, time) become one, first value present wins."""

from __future__ import annotations

import numpy as np

from beiflow.processing.batch import merge_duplicate_keys
from beiflow.schemas.columns import POSITION_COLUMNS, DateSource, FixFlag, empty_columns


def _batch(n: int) -> dict[str, np.ndarray]:
    cols = empty_columns(POSITION_COLUMNS, n)
    cols["device"] = np.zeros(n, dtype=np.int32)
    cols["msg"] = np.arange(n, dtype=np.int32)
    return cols


def test_no_duplicates_returns_input_unchanged() -> None:
    cols = _batch(3)
    cols["time"][:] = [3, 1, 2]
    assert merge_duplicate_keys(cols) is cols


def test_split_epoch_parts_merge_like_the_upsert() -> None:
    cols = _batch(4)
    cols["time"][:] = [10, 20, 10, 10]
    cols["device"][:] = [0, 0, 0, 1]
    # part 1 (GGA only: date from receive time), part 2 (RMC: date, speed)
    cols["lat"][[0, 2]] = [37.1, 37.2]
    cols["sats"][0] = 9
    cols["speed_mps"][2] = 4.5
    cols["date_source"][[0, 2, 3]] = [DateSource.RECEIVE, DateSource.RMC, DateSource.RMC]
    cols["flags"][[0, 2]] = [FixFlag.DATE_FROM_RECEIVE | FixFlag.CLOCK_PAST,
                             FixFlag.NO_FIX]
    out = merge_duplicate_keys(cols)
    order = np.lexsort((out["time"], out["device"]))
    got = {k: v[order] for k, v in out.items()}
    assert got["time"].tolist() == [10, 20, 10]
    assert got["device"].tolist() == [0, 0, 1]
    assert got["lat"][0] == 37.1                      # first present value wins
    assert got["sats"][0] == 9 and got["speed_mps"][0] == 4.5
    assert got["date_source"][0] == DateSource.RMC    # the better date source
    # CLOCK_PAST is OR-ed; NO_FIX and DATE_FROM_RECEIVE only when every part had them
    assert got["flags"][0] == FixFlag.CLOCK_PAST
    assert got["msg"][0] == 0                         # the first message of the epoch
    assert np.isnan(got["lat"][1]) and got["sats"][1] == -1
