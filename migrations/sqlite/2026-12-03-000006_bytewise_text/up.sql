-- SQLite compares text bytewise already (BINARY); this migration exists so that both
-- databases have the same migration history (see the PostgreSQL one).
SELECT 1;
