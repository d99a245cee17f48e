-- Per-entity sentiment: one analysis per model run over a story's content, one extraction row per entity.
CREATE SEQUENCE analysis_id_seq START 1;

CREATE TABLE analyses (
    id                BIGINT PRIMARY KEY DEFAULT nextval('analysis_id_seq'),
    story_id          BIGINT NOT NULL,
    content_version   INTEGER NOT NULL,
    analyzed_at       TIMESTAMPTZ NOT NULL,
    model             VARCHAR NOT NULL,
    adapter           VARCHAR,
    prompt_version    VARCHAR NOT NULL,
    ok                BOOLEAN NOT NULL,
    error             VARCHAR,
    raw_output        VARCHAR,
    attempts          INTEGER NOT NULL,
    latency_ms        DOUBLE,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER
);

CREATE TABLE extractions (
    analysis_id BIGINT NOT NULL,
    story_id    BIGINT NOT NULL,
    position    INTEGER NOT NULL,
    entity      VARCHAR NOT NULL,
    ticker      VARCHAR,
    polarity    VARCHAR NOT NULL,
    category    VARCHAR NOT NULL,
    score       DOUBLE NOT NULL,
    confidence  DOUBLE NOT NULL
);

-- The newest successful analysis of each story.
CREATE VIEW latest_analyses AS
SELECT story_id, max(id) AS analysis_id FROM analyses WHERE ok GROUP BY story_id;

CREATE VIEW entity_sentiment AS
SELECT
    e.story_id     AS article_id,
    s.published_at,
    e.ticker,
    e.entity,
    e.polarity,
    e.category,
    e.score,
    e.confidence,
    a.model,
    a.adapter,
    a.prompt_version,
    a.analyzed_at
FROM extractions e
JOIN latest_analyses l ON l.analysis_id = e.analysis_id
JOIN analyses a ON a.id = e.analysis_id
JOIN stories s ON s.id = e.story_id;
