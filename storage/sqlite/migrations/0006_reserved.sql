-- Placeholder: number 0006 is reserved for search/retention (issue plan). Schema versions must
-- be contiguous, so this branch ships an empty 0006; merging the real 0006 replaces this file.
SELECT 1;
