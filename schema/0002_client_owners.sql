-- yserve schema, migration 2: identity binding (SPEC §4).
-- With auth on, a Yjs client id belongs, per document, to the first user who wrote with
-- it; updates or awareness for a client id owned by another user are refused.
CREATE TABLE client_owners (
    doc_id      INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    client_id   INTEGER NOT NULL,
    user_id     TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (doc_id, client_id)
) WITHOUT ROWID;
