"""Geofencing: fence definitions, a vectorised containment index, and membership events.

Containment rules (all coordinates WGS-84 degrees, ``lon``/``lat``):

* **polygon** (and each part of a MultiPolygon): the point is inside in plain
  longitude/latitude by the even-odd crossing rule over all rings, so holes are excluded.
  Boundary rule, half-open like pixel rasterisation: an edge crosses the horizontal
  through the point when ``min(y0, y1) <= lat < max(y0, y1)``, and counts when its
  crossing longitude is ``> lon``. Hence points on a left or bottom edge are inside,
  points on a right or top edge outside, and of two fences sharing an edge exactly one
  contains a point on it. "On an edge" holds to within the rounding of the crossing
  longitude (exact for vertices and axis-parallel edges); the shapely comparison in the
  tests is tolerant only within 1e-9 degrees of a boundary.
* **circle**: the haversine distance on a sphere of radius ``EARTH_RADIUS_M``
  (6,371,008.8 m) from the centre is ``<= radius_m``.
* **corridor**: the distance to the centre line is ``<= width_m / 2``. Segments are
  straight in longitude/latitude (as RFC 7946 defines them); the distance to a segment is
  measured in an equirectangular projection centred on its mid-latitude (x = dlon *
  cos(lat_mid), y = dlat, metres on the same sphere). Against the spherical distance to
  that segment the relative error is about ``tan(lat) * dlat_rad / 2`` (``dlat``: the
  segment's latitude span): under 0.1 % for segments spanning less than 0.1 degree of
  latitude at 45 degrees, i.e. under 1 cm at the edge of a 20 m wide road. The tests check
  this bound against a spherical reference.
* A point with a NaN coordinate is in no fence. Fences may overlap without limit; a
  circle or corridor may not reach a pole or cross the antimeridian (rejected on import).

``FenceSet.contains`` returns sparse (point, fence) pairs; ``geofence_events`` turns
membership over time into enter / exit / dwell / overspeed events (see
:mod:`beiflow.processing.geofence_state` for debounce, skipped fixes and out-of-order
rules).
"""

from __future__ import annotations

from beiflow.processing.geofence_defs import (
    EARTH_RADIUS_M,
    FenceDef,
    FenceKind,
    GeofenceError,
    parse_geojson,
)
from beiflow.processing.geofence_index import FenceSet
from beiflow.processing.geofence_state import (
    IGNORED_FLAGS,
    NO_TIME,
    GeofenceState,
    geofence_events,
)

__all__ = [
    "EARTH_RADIUS_M",
    "IGNORED_FLAGS",
    "NO_TIME",
    "FenceDef",
    "FenceKind",
    "FenceSet",
    "GeofenceError",
    "GeofenceState",
    "geofence_events",
    "parse_geojson",
]
