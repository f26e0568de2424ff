-- camstack catalog, version 1: devices, batches (one row per batch, no row per frame)
-- and videos. Portable SQL: the same text runs on SQLite and PostgreSQL.
-- Times are Unix milliseconds (BIGINT).

CREATE TABLE devices (
    id            TEXT    PRIMARY KEY,
    first_seen_ms BIGINT  NOT NULL,
    last_seen_ms  BIGINT  NOT NULL
);

CREATE TABLE batches (
    device           TEXT    NOT NULL REFERENCES devices (id),
    batch            TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('sealed', 'uploaded', 'encoding',
                                                       'encoded', 'purged', 'quarantined')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    frames           INTEGER NOT NULL,
    first_capture_ms BIGINT  NOT NULL,
    last_capture_ms  BIGINT  NOT NULL,
    pack_key         TEXT,
    pack_sha256      TEXT,
    pack_bytes       BIGINT,
    created_ms       BIGINT  NOT NULL,
    updated_ms       BIGINT  NOT NULL,
    error            TEXT,
    PRIMARY KEY (device, batch)
);

CREATE INDEX batches_state_updated ON batches (state, updated_ms);
CREATE INDEX batches_last_capture ON batches (last_capture_ms);

CREATE TABLE videos (
    device           TEXT    NOT NULL,
    batch            TEXT    NOT NULL,
    location         TEXT    NOT NULL UNIQUE,
    thumbnail        TEXT,
    frames           INTEGER NOT NULL,
    skipped          INTEGER NOT NULL,
    duration_s       DOUBLE PRECISION NOT NULL,
    bytes            BIGINT  NOT NULL,
    codec            TEXT    NOT NULL,
    first_capture_ms BIGINT  NOT NULL,
    last_capture_ms  BIGINT  NOT NULL,
    sha256           TEXT    NOT NULL,
    pack_sha256      TEXT,
    signature        TEXT,
    created_ms       BIGINT  NOT NULL,
    PRIMARY KEY (device, batch),
    FOREIGN KEY (device, batch) REFERENCES batches (device, batch)
);

CREATE INDEX videos_last_capture ON videos (last_capture_ms);
