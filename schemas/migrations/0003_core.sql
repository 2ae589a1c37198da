-- beiflow 0003: geofences and what the processing core finds.

CREATE TABLE geofences (
    geofence_id      text        PRIMARY KEY,
    name             text,
    kind             text        NOT NULL,  -- polygon | circle | corridor
    geometry         jsonb       NOT NULL,  -- GeoJSON geometry as imported
    properties       jsonb       NOT NULL DEFAULT '{}',
    speed_limit_kmh  real,
    dwell_s          real,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE geofence_events (
    time         timestamptz NOT NULL,       -- device time of the fix that caused it
    device_id    text        NOT NULL,
    geofence_id  text        NOT NULL,
    event        text        NOT NULL,       -- enter | exit | dwell | overspeed
    detail       jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, geofence_id, event, time),
    CHECK (event IN ('enter', 'exit', 'dwell', 'overspeed'))
);
SELECT create_hypertable('geofence_events', by_range('time', INTERVAL '7 days'));
CREATE INDEX geofence_events_fence_idx ON geofence_events (geofence_id, time DESC);

CREATE TABLE anomalies (
    time         timestamptz      NOT NULL,
    device_id    text             NOT NULL,
    stream       text             NOT NULL,  -- nmea | sensor | rfid | status
    kind         text             NOT NULL,
    score        double precision NOT NULL,  -- high = more anomalous, scale per kind
    detail       jsonb            NOT NULL DEFAULT '{}',
    created_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, stream, kind, time)
);
SELECT create_hypertable('anomalies', by_range('time', INTERVAL '7 days'));
CREATE INDEX anomalies_kind_idx ON anomalies (kind, time DESC);
