-- Late instances: an instance that arrives after its study's job was enqueued
-- re-opens the study (study.enqueued_at back to NULL, in the instance's own
-- transaction), and once the quiet period has passed again the tracker
-- enqueues another job for it; the worker decides only the instances no job
-- has decided yet. So a study may now have several jobs over time, but at
-- most one open (queued or running) at once: the tracker waits for a running
-- one to end before it enqueues the next, so no instance is left between the
-- two. daemon/INGEST.md ("Study assembly") describes it.

ALTER TABLE job DROP CONSTRAINT job_study_instance_uid_key;

CREATE UNIQUE INDEX job_open_per_study_idx ON job (study_instance_uid) WHERE state IN ('queued', 'running');

CREATE INDEX job_study_idx ON job (study_instance_uid);
