-- camstack catalog, version 2: retention on the object store. A video whose objects
-- (MP4, thumbnail, sidecar) retention deleted keeps its row, with the time it was
-- deleted; NULL while the video exists. Portable SQL (SQLite and PostgreSQL).

ALTER TABLE videos ADD COLUMN deleted_ms BIGINT;

CREATE INDEX videos_retention ON videos (deleted_ms, last_capture_ms);
