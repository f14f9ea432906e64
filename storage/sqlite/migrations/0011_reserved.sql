-- Placeholder for migration 0011, which another branch (pgperf: journal numbers in ops)
-- brings. Versions must be contiguous; the merge replaces this file with that one.
SELECT 1;
