-- yserve schema, migration 1. Append-only: never edit a released migration, add the next file.
-- Times are ISO-8601 UTC text so that `sqlite3` shows them as they are.

CREATE TABLE documents (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- The append-only update log: one row per accepted Yjs update (lib0 v1 encoding), `seq`
-- strictly increasing per document, starting at 1.
CREATE TABLE updates (
    doc_id      INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    data        BLOB NOT NULL,
    origin      TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (doc_id, seq)
) WITHOUT ROWID;

-- A snapshot at `seq` is the merge of every update of the document with seq <= `seq`
-- (a full-state Yjs v1 update). Loading = latest snapshot + later updates.
CREATE TABLE snapshots (
    doc_id      INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    data        BLOB NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (doc_id, seq)
);
