-- yserve schema for PostgreSQL, migration 2: identity binding (SPEC §4), as ../0002_client_owners.sql.
CREATE TABLE client_owners (
    doc_id      bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    client_id   bigint NOT NULL,
    user_id     text NOT NULL,
    created_at  text NOT NULL DEFAULT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    PRIMARY KEY (doc_id, client_id)
);
