-- The pipeline after ingest: job leases and retries, one exposure decision per
-- instance, one enhancement per flagged instance, and the delivery outbox.

-- Job queue: a worker claims a job with FOR UPDATE SKIP LOCKED and holds a
-- lease; a lease that expires (worker died) makes the job claimable again.
-- Failures retry with backoff (available_at) until max attempts, then 'dead'.
ALTER TABLE job
    ADD COLUMN lease_owner text,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN last_error text,
    ADD COLUMN finished_at timestamptz,
    ADD CONSTRAINT job_state_check CHECK (state IN ('queued', 'running', 'done', 'dead'));

CREATE INDEX job_claimable_idx ON job (available_at) WHERE state IN ('queued', 'running');

-- The exposure gate's decision for one received instance: which rule decided
-- ('deviation-index', 'exposure-index', 'image-statistics', 'not-an-image'),
-- the numbers it used and the threshold it compared against.
CREATE TABLE exposure_decision (
    sop_instance_uid text PRIMARY KEY REFERENCES instance (sop_instance_uid),
    study_instance_uid text NOT NULL,
    job_id bigint NOT NULL REFERENCES job (id),
    flagged boolean NOT NULL,
    rule text NOT NULL,
    deviation_index double precision,
    exposure_index double precision,
    target_exposure_index double precision,
    threshold double precision,
    detail jsonb NOT NULL DEFAULT '{}',
    decided_at timestamptz NOT NULL DEFAULT now()
);

-- One enhancement of a flagged source instance: everything needed to re-run
-- it (bundle, parameters, seed, device) and to judge it (score, components).
-- Derived UIDs are derived from (source SOP Instance UID, bundle sha256,
-- parameters), so a re-run after a crash produces the same UIDs.
CREATE TABLE enhancement (
    derived_sop_instance_uid text PRIMARY KEY,
    derived_series_instance_uid text NOT NULL,
    source_sop_instance_uid text NOT NULL UNIQUE REFERENCES instance (sop_instance_uid),
    study_instance_uid text NOT NULL,
    job_id bigint NOT NULL REFERENCES job (id),
    bundle_name text NOT NULL,
    bundle_version text NOT NULL,
    bundle_sha256 text NOT NULL,
    params jsonb NOT NULL,
    seed text NOT NULL,
    device text NOT NULL,
    score double precision NOT NULL,
    score_components jsonb NOT NULL,
    hold_threshold double precision NOT NULL,
    held boolean NOT NULL,
    timings jsonb NOT NULL,
    derived_file text NOT NULL,
    pixel_sha256 text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX enhancement_study_idx ON enhancement (study_instance_uid);

-- Delivery outbox: one row per (derived instance, destination), inserted in
-- the same transaction as the enhancement. The sender retries with backoff;
-- the SOP Instance UID never changes, so the PACS sees one instance however
-- often we had to try.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    sop_instance_uid text NOT NULL,
    sop_class_uid text NOT NULL,
    study_instance_uid text NOT NULL,
    destination text NOT NULL,
    file text NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    last_status integer,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    UNIQUE (sop_instance_uid, destination)
);

CREATE INDEX outbox_pending_idx ON outbox (next_attempt_at) WHERE state = 'pending';
