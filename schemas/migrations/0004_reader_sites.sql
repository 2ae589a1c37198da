-- beiflow 0004: where fixed devices (RFID readers, sensors) stand, for travel checks.
-- Operators fill these in (UPDATE devices SET lat = ..., lon = ..., zone = ...,
-- zone_kind = 'cold' WHERE device_id = ...); collectors reload them with the fences.

ALTER TABLE devices
    ADD COLUMN lat double precision CHECK (lat BETWEEN -90 AND 90),
    ADD COLUMN lon double precision CHECK (lon BETWEEN -180 AND 180),
    ADD COLUMN zone text,          -- e.g. cold-store-2, gate-north
    ADD COLUMN zone_kind text;     -- e.g. cold, ambient, gate; 'cold' marks the cold chain
