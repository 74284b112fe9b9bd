-- yserve schema, migration 4: advisory field locks (SPEC §6). One row per held lock; a row
-- whose expiry has passed is a lock that has expired (the server deletes it when it notices).
CREATE TABLE locks (
    doc_id        INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    holder        TEXT NOT NULL,
    -- Unix milliseconds, for the server; `expires_at` is the same instant, for people.
    expires_at_ms INTEGER NOT NULL,
    expires_at    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (doc_id, key)
) WITHOUT ROWID;
