-- yserve schema for PostgreSQL, migration 4: advisory field locks (SPEC §6), as ../0004_locks.sql.
CREATE TABLE locks (
    doc_id        bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    key           text NOT NULL,
    holder        text NOT NULL,
    expires_at_ms bigint NOT NULL,
    expires_at    text NOT NULL,
    created_at    text NOT NULL,
    PRIMARY KEY (doc_id, key)
);
