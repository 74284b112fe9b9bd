-- yserve schema for PostgreSQL, migration 3: the OT compatibility layer (SPEC §5), as ../0003_ot.sql.
CREATE TABLE ot_texts (
    doc_id      bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    text        text NOT NULL,
    epoch       text NOT NULL,
    version     bigint NOT NULL,
    created_at  text NOT NULL,
    updated_at  text NOT NULL,
    PRIMARY KEY (doc_id, text)
);

CREATE TABLE ot_ops (
    doc_id      bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    text        text NOT NULL,
    version     bigint NOT NULL,
    op          text NOT NULL,
    src         text NOT NULL,
    seq         bigint NOT NULL,
    user_id     text NOT NULL,
    update_seq  bigint,
    created_at  text NOT NULL,
    PRIMARY KEY (doc_id, text, version)
);
