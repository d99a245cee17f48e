-- Ingestion: feeds polled, and every story accepted from them (the durable queue of the pipeline).
CREATE SEQUENCE story_id_seq START 1;

CREATE TABLE feeds (
    url                VARCHAR PRIMARY KEY,
    tickers            VARCHAR[] NOT NULL,
    etag               VARCHAR,
    last_modified      VARCHAR,
    last_polled_at     TIMESTAMPTZ,
    last_ok_at         TIMESTAMPTZ,
    last_error         VARCHAR,
    consecutive_errors INTEGER NOT NULL DEFAULT 0,
    items_seen         BIGINT NOT NULL DEFAULT 0,
    stories_new        BIGINT NOT NULL DEFAULT 0
);

-- state: pending (accepted, page not processed yet) | page (body extracted from the page)
--        | feed (the page could not be had: body is the feed's title and description; next_fetch_at schedules a retry)
CREATE TABLE stories (
    id              BIGINT PRIMARY KEY DEFAULT nextval('story_id_seq'),
    canonical_url   VARCHAR NOT NULL,
    url             VARCHAR NOT NULL,
    guid            VARCHAR,
    feed_title      VARCHAR,
    feed_summary    VARCHAR,
    published_at    TIMESTAMPTZ,
    first_seen_at   TIMESTAMPTZ NOT NULL,
    state           VARCHAR NOT NULL DEFAULT 'pending',
    fetch_attempts  INTEGER NOT NULL DEFAULT 0,
    next_fetch_at   TIMESTAMPTZ,
    last_error      VARCHAR,
    final_url       VARCHAR,
    title           VARCHAR,
    body            VARCHAR,
    author          VARCHAR,
    fetched_at      TIMESTAMPTZ,
    simhash         BIGINT,
    duplicate_of    BIGINT,
    content_version INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX stories_canonical_url ON stories (canonical_url);
CREATE INDEX stories_guid ON stories (guid);

CREATE TABLE story_tickers (
    story_id      BIGINT NOT NULL,
    ticker        VARCHAR NOT NULL,
    feed_url      VARCHAR,
    first_seen_at TIMESTAMPTZ NOT NULL
);

CREATE VIEW articles AS
SELECT
    s.id,
    s.url,
    s.canonical_url,
    coalesce(s.title, s.feed_title)                                    AS title,
    s.feed_summary                                                     AS summary,
    coalesce(s.body, concat_ws(E'\n\n', s.feed_title, nullif(s.feed_summary, ''))) AS body,
    regexp_extract(coalesce(s.final_url, s.url), '^[a-zA-Z]+://([^/:?#]+)', 1) AS source,
    s.published_at,
    s.fetched_at,
    coalesce((SELECT list(DISTINCT t.ticker ORDER BY t.ticker) FROM story_tickers t WHERE t.story_id = s.id),
             []::VARCHAR[])                                            AS tickers,
    s.state                                                            AS body_origin,
    s.duplicate_of,
    s.author,
    s.final_url
FROM stories s
WHERE s.state <> 'pending';
