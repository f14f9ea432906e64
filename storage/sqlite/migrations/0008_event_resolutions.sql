-- The events page (SPEC §12) shows what each stored event resolved: the waitpoints it matched,
-- found by event id alone (the index of 0001 leads with run_id, so it cannot answer that).
CREATE INDEX waitpoints_by_matched_event ON waitpoints (matched_event_id)
    WHERE matched_event_id IS NOT NULL;
