-- Swings in a ticker's news sentiment (storage/alerts.py): one row per alert fired, and what became of sending it.
CREATE SEQUENCE alert_id_seq START 1;

CREATE TABLE alerts (
    id                BIGINT PRIMARY KEY DEFAULT nextval('alert_id_seq'),
    ticker            VARCHAR NOT NULL,
    direction         VARCHAR NOT NULL CHECK (direction IN ('up', 'down')),
    fired_at          TIMESTAMPTZ NOT NULL,
    recent_score      DOUBLE NOT NULL,   -- mean ticker_sentiment.score over the recent window
    recent_articles   INTEGER NOT NULL,
    baseline_score    DOUBLE NOT NULL,   -- over the window before it; 0 when that window holds no article
    baseline_articles INTEGER NOT NULL,
    message           VARCHAR NOT NULL,
    delivered_at      TIMESTAMPTZ,       -- when the webhook and the command both took it
    delivery_error    VARCHAR            -- why they did not (both NULL: nowhere to send it was configured)
);
