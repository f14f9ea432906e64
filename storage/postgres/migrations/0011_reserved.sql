-- PostgreSQL twin of storage/sqlite/migrations/0011_reserved.sql: a placeholder for the
-- other branch's 0011, replaced by it at merge.
SELECT 1;
