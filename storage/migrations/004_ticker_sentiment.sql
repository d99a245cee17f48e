-- One row per article and ticker, for per-ticker series: when the model names one company twice in an article
-- ("Apple" and "Apple Inc.", both linked to AAPL), the article counts once for that ticker, with the mention the
-- model was most confident about (ties: the first name in alphabetical order).
CREATE VIEW ticker_sentiment AS
SELECT article_id, published_at, ticker, entity, polarity, category, score, confidence, mentions, model, adapter,
       prompt_version, analyzed_at
FROM (
    SELECT *,
           count(*) OVER same_ticker AS mentions,
           row_number() OVER (same_ticker ORDER BY confidence DESC, entity) AS surest
    FROM entity_sentiment
    WHERE ticker IS NOT NULL
    WINDOW same_ticker AS (PARTITION BY article_id, ticker)
)
WHERE surest = 1;
