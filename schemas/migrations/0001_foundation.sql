-- beiflow 0001: devices registry, positions hypertable, dead letters.
-- Applied by `beiflow db migrate` inside one transaction.

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE devices (
    device_id   text        PRIMARY KEY,
    site        text        NOT NULL,
    kind        text,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    -- streams this device has sent on: nmea, rfid, sensor, status
    streams     text[]      NOT NULL DEFAULT '{}',
    -- last payload of the retained status topic / last will: online | offline
    status      text,
    status_at   timestamptz,
    CHECK (device_id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    CHECK (site ~ '^[A-Za-z0-9_.-]{1,64}$')
);

CREATE TABLE positions (
    time         timestamptz      NOT NULL,   -- device time of the epoch
    device_id    text             NOT NULL,
    lat          double precision,            -- degrees, WGS-84
    lon          double precision,            -- degrees, WGS-84
    alt_m        double precision,            -- metres above mean sea level
    speed_mps    double precision,            -- speed over ground
    course_deg   double precision,            -- course over ground, degrees true
    fix_quality  smallint,                    -- GGA quality 0-8 (GNS mode mapped)
    sats         smallint,                    -- satellites used
    hdop         real,
    pdop         real,
    vdop         real,
    status       smallint,                    -- RMC/GLL status: 1 = A (valid), 0 = V (void)
    mode         smallint,                    -- NMEA 2.3+ mode indicator, ASCII code
    date_source  smallint         NOT NULL,   -- 1 rmc, 2 zda, 3 previous rmc/zda, 4 receive
    flags        integer          NOT NULL DEFAULT 0,  -- FixFlag bits (clock, no fix, ...)
    sv_gps       smallint,                    -- satellites in view per constellation (GSV)
    sv_bds       smallint,
    sv_glo       smallint,
    sv_gal       smallint,
    sv_qzss      smallint,
    cn0_gps_dbhz real,                        -- mean C/N0 of tracked satellites, dB-Hz
    cn0_bds_dbhz real,
    cn0_glo_dbhz real,
    cn0_gal_dbhz real,
    cn0_qzss_dbhz real,
    received_at  timestamptz      NOT NULL,   -- arrival at the collector
    PRIMARY KEY (device_id, time)
);
-- also creates the index positions_time_idx on (time DESC)
SELECT create_hypertable('positions', by_range('time', INTERVAL '1 day'));

CREATE TABLE dead_letters (
    id           bigserial   PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text        NOT NULL,
    payload      bytea       NOT NULL,        -- the exact rejected bytes
    error        text        NOT NULL,        -- reason code, also the metric label
    stream       text,
    device_id    text,
    detail       text,
    -- identical bytes from one topic are one dead letter: broker redeliveries add nothing
    payload_sha256 bytea     NOT NULL,
    UNIQUE (topic, payload_sha256)
);
CREATE INDEX dead_letters_received_idx ON dead_letters (received_at DESC);
CREATE INDEX dead_letters_error_idx ON dead_letters (error, received_at DESC);

CREATE VIEW latest_positions AS
SELECT DISTINCT ON (device_id) *
FROM positions
WHERE lat IS NOT NULL
ORDER BY device_id, time DESC;
