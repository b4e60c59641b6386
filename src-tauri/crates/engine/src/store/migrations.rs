//! Versioned schema. Append new migrations; never edit a released one (users' files were made
//! with it). `PRAGMA user_version` holds the applied count.

use rusqlite_migration::{M, Migrations};

/// Version 1: the core tables.
const CORE: &str = r#"
CREATE TABLE projects (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    description TEXT NOT NULL DEFAULT '',
    settings    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings)),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    trashed_at  INTEGER              -- NULL: live; set: in the trash, restorable
);

CREATE TABLE assets (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER REFERENCES projects(id) ON DELETE CASCADE,
    path        TEXT NOT NULL UNIQUE, -- relative to the data folder
    sha256      TEXT NOT NULL,
    mime        TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,
    width       INTEGER,
    height      INTEGER,
    created_at  INTEGER NOT NULL
);

CREATE TABLE jobs (
    id             INTEGER PRIMARY KEY,
    kind           TEXT NOT NULL,
    resource       TEXT NOT NULL CHECK (resource IN ('heavy', 'light')),
    project_id     INTEGER REFERENCES projects(id) ON DELETE SET NULL,
    payload        TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(payload)),
    status         TEXT NOT NULL CHECK (status IN
                     ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    progress_done  INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0,
    result         TEXT CHECK (result IS NULL OR json_valid(result)),
    error_kind     TEXT,
    error_message  TEXT,
    retry_of       INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER
);
CREATE INDEX jobs_by_status ON jobs(status, id);

CREATE TABLE generations (
    id            INTEGER PRIMARY KEY,
    project_id    INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    job_id        INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('text', 'image', 'script')),
    model_id      TEXT NOT NULL,
    prompt        TEXT NOT NULL DEFAULT '',
    params        TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
    seed          INTEGER,
    status        TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    error_kind    TEXT,
    error_message TEXT,
    output_text   TEXT,
    asset_id      INTEGER REFERENCES assets(id) ON DELETE SET NULL,
    prompt_tokens INTEGER,
    output_tokens INTEGER,
    started_at    INTEGER,
    finished_at   INTEGER,
    duration_ms   INTEGER,
    rating        INTEGER NOT NULL DEFAULT 0 CHECK (rating IN (-1, 0, 1)),
    starred       INTEGER NOT NULL DEFAULT 0 CHECK (starred IN (0, 1)),
    created_at    INTEGER NOT NULL
);
CREATE INDEX generations_by_project ON generations(project_id, id);
CREATE INDEX generations_by_kind ON generations(kind, id);
CREATE INDEX generations_starred ON generations(id) WHERE starred = 1;

CREATE TABLE documents (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('copy', 'script')),
    title       TEXT NOT NULL DEFAULT '',
    template_id TEXT,
    starred     INTEGER NOT NULL DEFAULT 0 CHECK (starred IN (0, 1)),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX documents_by_project ON documents(project_id, updated_at);

CREATE TABLE document_versions (
    id            INTEGER PRIMARY KEY,
    document_id   INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    number        INTEGER NOT NULL,
    body          TEXT NOT NULL,
    source        TEXT NOT NULL CHECK (source IN ('save', 'generation', 'restore')),
    generation_id INTEGER REFERENCES generations(id) ON DELETE SET NULL,
    note          TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    UNIQUE (document_id, number)
);

CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL CHECK (json_valid(value)),
    updated_at INTEGER NOT NULL
);
"#;

/// Version 2: full-text search. The `trigram` tokenizer indexes every 3-character window, so a
/// Chinese substring (no spaces between words) is found; queries under 3 characters fall back
/// to LIKE in `generations.rs`.
const SEARCH: &str = r#"
CREATE VIRTUAL TABLE generations_fts USING fts5(
    prompt, output_text, content='generations', content_rowid='id', tokenize='trigram'
);
CREATE TRIGGER generations_fts_insert AFTER INSERT ON generations BEGIN
    INSERT INTO generations_fts(rowid, prompt, output_text) VALUES (new.id, new.prompt, new.output_text);
END;
CREATE TRIGGER generations_fts_delete AFTER DELETE ON generations BEGIN
    INSERT INTO generations_fts(generations_fts, rowid, prompt, output_text)
        VALUES ('delete', old.id, old.prompt, old.output_text);
END;
CREATE TRIGGER generations_fts_update AFTER UPDATE OF prompt, output_text ON generations BEGIN
    INSERT INTO generations_fts(generations_fts, rowid, prompt, output_text)
        VALUES ('delete', old.id, old.prompt, old.output_text);
    INSERT INTO generations_fts(rowid, prompt, output_text) VALUES (new.id, new.prompt, new.output_text);
END;
INSERT INTO generations_fts(generations_fts) VALUES ('rebuild');

-- Documents are searched by title and their latest version's text.
CREATE VIRTUAL TABLE documents_fts USING fts5(title, body, tokenize='trigram');
CREATE TRIGGER documents_fts_insert AFTER INSERT ON documents BEGIN
    INSERT INTO documents_fts(rowid, title, body) VALUES (new.id, new.title, '');
END;
CREATE TRIGGER documents_fts_title AFTER UPDATE OF title ON documents BEGIN
    UPDATE documents_fts SET title = new.title WHERE rowid = new.id;
END;
CREATE TRIGGER documents_fts_delete AFTER DELETE ON documents BEGIN
    DELETE FROM documents_fts WHERE rowid = old.id;
END;
CREATE TRIGGER documents_fts_body AFTER INSERT ON document_versions BEGIN
    UPDATE documents_fts SET body = new.body WHERE rowid = new.document_id;
END;
INSERT INTO documents_fts(rowid, title, body)
    SELECT d.id, d.title, coalesce((SELECT v.body FROM document_versions v
                                    WHERE v.document_id = d.id ORDER BY v.number DESC LIMIT 1), '')
    FROM documents d;
"#;

/// Version 3: an index for 1–2 character words in scripts without spaces (see `bigrams.rs`).
/// Needs the `atelier_bigrams` function, which `Store::open` registers before migrating.
const SHORT_WORDS: &str = r#"
CREATE VIRTUAL TABLE generations_bigrams USING fts5(
    grams, content='', contentless_delete=1, tokenize='unicode61 remove_diacritics 0'
);
CREATE TRIGGER generations_bigrams_insert AFTER INSERT ON generations BEGIN
    INSERT INTO generations_bigrams(rowid, grams)
        VALUES (new.id, atelier_bigrams(new.prompt || ' ' || coalesce(new.output_text, '')));
END;
CREATE TRIGGER generations_bigrams_update AFTER UPDATE OF prompt, output_text ON generations BEGIN
    DELETE FROM generations_bigrams WHERE rowid = old.id;
    INSERT INTO generations_bigrams(rowid, grams)
        VALUES (new.id, atelier_bigrams(new.prompt || ' ' || coalesce(new.output_text, '')));
END;
CREATE TRIGGER generations_bigrams_delete AFTER DELETE ON generations BEGIN
    DELETE FROM generations_bigrams WHERE rowid = old.id;
END;
INSERT INTO generations_bigrams(rowid, grams)
    SELECT id, atelier_bigrams(prompt || ' ' || coalesce(output_text, '')) FROM generations;
"#;

/// Version 4: how a text run went (time to first token, speed, why it stopped, and the rest of
/// its figures as JSON), for History and for comparing models.
const RUN_METRICS: &str = r#"
ALTER TABLE generations ADD COLUMN first_token_ms INTEGER;
ALTER TABLE generations ADD COLUMN tokens_per_s REAL;
ALTER TABLE generations ADD COLUMN stop_reason TEXT;
ALTER TABLE generations ADD COLUMN metrics TEXT CHECK (metrics IS NULL OR json_valid(metrics));
"#;

/// Version 5: a local log of AI-content label decisions (the explicit notice turned off or on,
/// exports made without it). The Labelling Measures (art. 9) ask for such records to be kept at
/// least six months; Atelier keeps them and never prunes them.
const LABEL_EVENTS: &str = r#"
CREATE TABLE label_events (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('explicit_off', 'explicit_on', 'export_unlabelled')),
    detail TEXT NOT NULL DEFAULT ''
);
"#;

/// Version 6: product forms saved per project for the live-script studio. The form is JSON;
/// the columns lists show are copied out of it on every write.
const PRODUCTS: &str = r#"
CREATE TABLE products (
    id         INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    category   TEXT NOT NULL DEFAULT '',
    live_price REAL,
    link_no    INTEGER,
    data       TEXT NOT NULL CHECK (json_valid(data)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX products_by_project ON products(project_id, name);
"#;

/// Version 7: the image gallery. An image is a `generations` row (kind `image`, its PNG as the
/// asset: prompt search, stars and History come with it) plus this row for what only images
/// have. Boards hold images (one board per image, as in InvokeAI); trash is a soft delete.
const GALLERY: &str = r#"
CREATE TABLE boards (
    id         INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    created_at INTEGER NOT NULL
);
CREATE INDEX boards_by_project ON boards(project_id, name);

CREATE TABLE images (
    generation_id  INTEGER PRIMARY KEY REFERENCES generations(id) ON DELETE CASCADE,
    project_id     INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    asset_id       INTEGER NOT NULL REFERENCES assets(id),
    thumb_asset_id INTEGER REFERENCES assets(id) ON DELETE SET NULL,
    board_id       INTEGER REFERENCES boards(id) ON DELETE SET NULL,
    width          INTEGER NOT NULL,
    height         INTEGER NOT NULL,
    trashed_at     INTEGER
);
-- The gallery pages newest first within a project (keyset on generation_id).
CREATE INDEX images_by_project ON images(project_id, trashed_at, generation_id);
CREATE INDEX images_by_board ON images(board_id, generation_id);
"#;

/// Version 8: tags on gallery images (many per image, unlike boards), kept per image and
/// found by tag within a project.
const IMAGE_TAGS: &str = r#"
CREATE TABLE image_tags (
    generation_id INTEGER NOT NULL REFERENCES images(generation_id) ON DELETE CASCADE,
    tag           TEXT NOT NULL CHECK (length(tag) BETWEEN 1 AND 40),
    PRIMARY KEY (generation_id, tag)
) WITHOUT ROWID;
CREATE INDEX image_tags_by_tag ON image_tags(tag, generation_id);
"#;

pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(CORE),
        M::up(SEARCH),
        M::up(SHORT_WORDS),
        M::up(RUN_METRICS),
        M::up(LABEL_EVENTS),
        M::up(PRODUCTS),
        M::up(GALLERY),
        M::up(IMAGE_TAGS),
    ])
}

/// The schema version this build writes.
pub const LATEST_VERSION: usize = 8;
