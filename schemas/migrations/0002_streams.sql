-- beiflow 0002: sensor and RFID streams, and the read model users query.

CREATE TABLE sensor_readings (
    time         timestamptz      NOT NULL,   -- device time of the sample
    device_id    text             NOT NULL,
    metric       text             NOT NULL,   -- unit as suffix: voltage_v, temp_c, ...
    value        double precision NOT NULL,
    received_at  timestamptz      NOT NULL,   -- arrival at the collector
    PRIMARY KEY (device_id, metric, time)
);
SELECT create_hypertable('sensor_readings', by_range('time', INTERVAL '1 day'));

CREATE TABLE rfid_reads (
    time          timestamptz NOT NULL,       -- read time
    device_id     text        NOT NULL,       -- the reader
    epc           text        NOT NULL,       -- upper-case hex
    antenna       smallint    NOT NULL,
    rssi_dbm      real        NOT NULL,
    phase_deg     real,
    read_count    integer,
    received_at   timestamptz NOT NULL,
    -- EPC first: the key also serves "where was this tag seen", without another index
    PRIMARY KEY (epc, time, device_id, antenna)
);
SELECT create_hypertable('rfid_reads', by_range('time', INTERVAL '1 day'));

-- What an EPC encodes is a property of the tag, not of each read: decoded once per tag.
CREATE TABLE rfid_tags (
    epc            text        PRIMARY KEY,
    sgtin_filter   smallint,                  -- SGTIN-96 (NULL for other EPC schemes)
    company_prefix text,                      -- GS1 company prefix
    item_ref       text,                      -- item reference (indicator digit first)
    serial         bigint,
    gtin           text,                      -- GTIN-14: what traceability users look up
    first_seen     timestamptz NOT NULL,
    last_seen      timestamptz NOT NULL
);
CREATE INDEX rfid_tags_gtin_idx ON rfid_tags (gtin, serial) WHERE gtin IS NOT NULL;

-- Reads with their SGTIN fields, for lookups by GTIN.
CREATE VIEW rfid_reads_sgtin AS
SELECT r.*, t.sgtin_filter, t.company_prefix, t.item_ref, t.serial, t.gtin
FROM rfid_reads r JOIN rfid_tags t USING (epc);

-- Read model. The rollups are plain views here; `beiflow db migrate` replaces them by
-- continuous aggregates of the same name and columns where the server has them.
CREATE VIEW sensor_latest AS
SELECT DISTINCT ON (device_id, metric) device_id, metric, time, value, received_at
FROM sensor_readings
ORDER BY device_id, metric, time DESC;

CREATE VIEW sensor_1m AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket, device_id, metric,
       count(*) AS samples, min(value) AS min, max(value) AS max, avg(value) AS avg
FROM sensor_readings
GROUP BY bucket, device_id, metric;

CREATE VIEW sensor_1h AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket, device_id, metric,
       count(*) AS samples, min(value) AS min, max(value) AS max, avg(value) AS avg
FROM sensor_readings
GROUP BY bucket, device_id, metric;

CREATE VIEW rfid_last_seen AS
SELECT t.epc, t.gtin, t.serial, r.device_id AS reader_id, r.antenna, r.time, r.rssi_dbm
FROM rfid_tags t
CROSS JOIN LATERAL (SELECT device_id, antenna, time, rssi_dbm FROM rfid_reads r
                    WHERE r.epc = t.epc ORDER BY time DESC LIMIT 1) r;
