-- DICOM ingest: studies, received instances, the study job queue and audit events.

-- One row per Study Instance UID seen by the ingest. The tracker enqueues a
-- study once its quiet period has passed since last_received_at; enqueued_at is
-- set in the same transaction as the job insert, so a study is enqueued once.
CREATE TABLE study (
    study_instance_uid text PRIMARY KEY,
    first_received_at timestamptz NOT NULL DEFAULT now(),
    last_received_at timestamptz NOT NULL DEFAULT now(),
    instance_count integer NOT NULL DEFAULT 0,
    enqueued_at timestamptz
);

CREATE INDEX study_pending_idx ON study (last_received_at) WHERE enqueued_at IS NULL;

-- One row per spooled instance. The row is committed only after the file was
-- written, fsynced and renamed into the spool, and before Success is answered.
CREATE TABLE instance (
    sop_instance_uid text PRIMARY KEY,
    sop_class_uid text NOT NULL,
    study_instance_uid text NOT NULL REFERENCES study (study_instance_uid),
    series_instance_uid text,
    transfer_syntax_uid text NOT NULL,
    spool_file text NOT NULL UNIQUE,
    size_bytes bigint NOT NULL,
    calling_ae_title text NOT NULL,
    peer_address text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX instance_study_idx ON instance (study_instance_uid);

-- The work queue: one job per complete study (unique study_instance_uid).
CREATE TABLE job (
    id bigserial PRIMARY KEY,
    study_instance_uid text NOT NULL UNIQUE REFERENCES study (study_instance_uid),
    state text NOT NULL DEFAULT 'queued',
    created_at timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0
);

-- Audit events written by the ingest: one per association (accepted or
-- rejected), one per received instance (stored, duplicate or failed), one per
-- enqueued study. Vocabulary follows DICOM PS3.15 A.5 where it fits.
CREATE TABLE audit_event (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    event text NOT NULL,
    outcome text NOT NULL,
    peer_address text,
    calling_ae_title text,
    called_ae_title text,
    sop_instance_uid text,
    study_instance_uid text,
    detail text
);

CREATE INDEX audit_event_sop_idx ON audit_event (sop_instance_uid);
