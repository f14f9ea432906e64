-- /metrics counts the waitpoints still waiting by kind (SPEC §12). This partial index holds one
-- entry per waiting waitpoint, so the count reads only those (not every resolved waitpoint kept
-- until its run is pruned) and the scrape scans no table.
CREATE INDEX waitpoints_waiting_kind ON waitpoints (kind) WHERE status = 'waiting';
