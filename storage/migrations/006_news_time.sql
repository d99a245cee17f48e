-- ticker_sentiment gains news_time: when the news came out (published_at), or when it was analyzed for the few
-- articles whose feed gives no date, so per-ticker series and alert windows place every article somewhere.
CREATE OR REPLACE VIEW ticker_sentiment AS
SELECT article_id, published_at, coalesce(published_at, analyzed_at) AS news_time, ticker, entity, polarity,
       category, score, confidence, mentions, model, adapter, prompt_version, analyzed_at
FROM (
    SELECT *,
           count(*) OVER same_ticker AS mentions,
           row_number() OVER (same_ticker ORDER BY confidence DESC, entity) AS surest
    FROM entity_sentiment
    WHERE ticker IS NOT NULL
    WINDOW same_ticker AS (PARTITION BY article_id, ticker)
)
WHERE surest = 1;
