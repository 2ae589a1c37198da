"""Batch-level operations on columnar position batches."""

from __future__ import annotations

import numpy as np

from beiflow.schemas.columns import INT_NULL, MERGE_AND_FLAGS

_AND_FLAGS = MERGE_AND_FLAGS


def _missing(a: np.ndarray) -> np.ndarray:
    return np.isnan(a) if a.dtype.kind == "f" else a == INT_NULL


def merge_duplicate_keys(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Merge rows sharing (``device``, ``time``) into one, keeping the first non-missing value.

    An epoch split across messages, or a message redelivered inside one batch, yields
    several rows with one key; the database upsert can touch a row only once per
    statement, so they are merged here the same way the upsert merges across batches:
    first value present wins, ``date_source`` keeps the best (lowest non-zero) code,
    ``flags`` are OR-ed except ``MERGE_AND_FLAGS``, which survive only if every part
    had them. Returns the input itself when no key repeats.
    """
    device, time = cols["device"], cols["time"]
    n = device.size
    if n < 2:
        return cols
    order = np.lexsort((time, device))
    d, t = device[order], time[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(d[1:], d[:-1], out=new_group[1:])
    new_group[1:] |= t[1:] != t[:-1]
    if new_group.all():
        return cols
    group = np.cumsum(new_group) - 1
    n_groups = int(group[-1]) + 1
    first = order[new_group]
    out: dict[str, np.ndarray] = {}
    for name, arr in cols.items():
        a = arr[order]
        if name == "flags":
            ored = np.zeros(n_groups, dtype=a.dtype)
            np.bitwise_or.at(ored, group, a)
            anded = np.full(n_groups, _AND_FLAGS, dtype=a.dtype)
            np.bitwise_and.at(anded, group, a | ~np.asarray(_AND_FLAGS, dtype=a.dtype))
            out[name] = (ored & ~_AND_FLAGS) | (anded & _AND_FLAGS)
        elif name == "date_source":
            best = np.where(a > 0, a, np.iinfo(a.dtype).max)
            m = np.full(n_groups, np.iinfo(a.dtype).max, dtype=a.dtype)
            np.minimum.at(m, group, best)
            out[name] = np.where(m == np.iinfo(a.dtype).max, 0, m).astype(a.dtype)
        elif name in ("device", "time", "msg", "received_at"):
            out[name] = arr[first]
        else:
            res = a[new_group].copy()
            present = ~_missing(a)
            # reversed so that, among present values, the first one of a group is written last
            idx = np.nonzero(present)[0][::-1]
            res[group[idx]] = a[idx]
            out[name] = res
    return out
