-- Nothing changes on SQLite: its counting triggers run per row, in the one writer's
-- transaction, with no concurrent writer to wait for. The PostgreSQL migration of the same
-- name counts once per statement; this one keeps the two histories in step.
SELECT 1;
