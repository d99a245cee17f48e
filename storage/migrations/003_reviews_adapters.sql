-- Human review of the model's extractions (`sentimon review`): the labels the next LoRA adapter learns from.
CREATE SEQUENCE review_id_seq START 1;

-- One row per decision; the newest row of a record_id is the one that counts.
-- record_id: 'news-' + sha256(canonical URL)[:16] for a story reviewed here (the same article in another database
--            gets the same id), the record's own id for a record brought in by `sentimon review import`.
-- text: the article as the reviewer saw it (headline and the start of the body, as the model reads it).
-- extractions: the corrected list, [{"entity", "polarity", "category"}, ...].
-- decision: accepted (the model's list was right) | corrected (edited) | skipped (not used for training).
CREATE TABLE reviews (
    id          BIGINT PRIMARY KEY DEFAULT nextval('review_id_seq'),
    record_id   VARCHAR NOT NULL,
    story_id    BIGINT,
    analysis_id BIGINT,
    text        VARCHAR NOT NULL,
    extractions JSON NOT NULL,
    decision    VARCHAR NOT NULL CHECK (decision IN ('accepted', 'corrected', 'skipped')),
    reviewer    VARCHAR NOT NULL,
    reviewed_at TIMESTAMPTZ NOT NULL
);

-- The newest decision of each record, when it is not a skip: the reviewed training examples.
CREATE VIEW reviewed_examples AS
SELECT id, record_id, story_id, analysis_id, text, extractions, decision, reviewer, reviewed_at
FROM (
    SELECT *, row_number() OVER (PARTITION BY record_id ORDER BY id DESC) AS newest FROM reviews
)
WHERE newest = 1 AND decision <> 'skipped';

-- How each adapter did in production: analyses run, valid outputs, and how often a reviewer kept its answer.
-- `adapter` is the adapter file the analysis ran with (its folder names the registry version), NULL: base model.
CREATE VIEW adapter_usage AS
SELECT
    a.adapter,
    count(*)                                                       AS analyses,
    avg(CASE WHEN a.ok THEN 1.0 ELSE 0.0 END)                      AS valid_rate,
    count(r.analysis_id)                                           AS reviewed,
    avg(CASE r.decision WHEN 'accepted' THEN 1.0 WHEN 'corrected' THEN 0.0 END) AS accepted_rate,
    min(a.analyzed_at)                                             AS first_used,
    max(a.analyzed_at)                                             AS last_used
FROM analyses a
LEFT JOIN (
    SELECT analysis_id, arg_max(decision, id) AS decision FROM reviews WHERE analysis_id IS NOT NULL GROUP BY ALL
) r ON r.analysis_id = a.id
GROUP BY a.adapter;
