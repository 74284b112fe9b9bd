-- yserve schema, migration 3: the OT compatibility layer (SPEC §5).
-- One sequencer per (document, root text) that OT clients have used. Versions follow
-- ShareDB: a text at `version` has had that many ops applied (version 1 = first seen).
CREATE TABLE ot_texts (
    doc_id      INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    text        TEXT NOT NULL,
    -- Changes only if the sequencer is ever reset; versions of two epochs are unrelated.
    epoch       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (doc_id, text)
) WITHOUT ROWID;

-- The op log, bounded: the newest `--ot-log-ops-max` ops per text are kept. The op at
-- `version` took the text from `version` to `version + 1`; `op` is the Quill Delta JSON as
-- applied (after transformation). `src`/`seq` identify a ShareDB client's op (`yjs` for
-- changes made by Yjs clients, with `seq` = the update's seq); `update_seq` is the Yjs update
-- of the `updates` table the op was stored with (NULL for an op that changed nothing).
CREATE TABLE ot_ops (
    doc_id      INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    text        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    op          TEXT NOT NULL,
    src         TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    user_id     TEXT NOT NULL,
    update_seq  INTEGER,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (doc_id, text, version)
) WITHOUT ROWID;
