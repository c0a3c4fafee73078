-- The audit trail becomes append-only and hash-chained, gets structured data,
-- a read-only auditor role and views that answer an auditor in one query; and
-- the `alert` table remembers which alert mails went out. daemon/AUDIT.md
-- describes all of it; keep it and daemon/src/audit.rs in step with this file.

ALTER TABLE audit_event
    ADD COLUMN data jsonb,
    ADD COLUMN seq bigint UNIQUE,
    ADD COLUMN prev_hash text,
    ADD COLUMN row_hash text;

-- The hash chain ---------------------------------------------------------------
--
-- row_hash = hex(sha256(prev_hash || audit_event_canonical(row))), where
-- prev_hash is the previous row's row_hash (by seq) or 64 zeros for seq 1.
-- The canonical text is every column but the two hashes, in a fixed order,
-- each written as `<length in UTF-8 bytes>:<text>` or `~` for NULL, so no
-- value can run into the next. Timestamps are UTC with microseconds
-- (2026-11-25T14:03:07.123456Z), jsonb is its text form (PostgreSQL prints
-- jsonb with sorted keys and fixed spacing). daemon/src/audit.rs implements
-- the same encoding to verify the chain outside the database.

CREATE FUNCTION audit_canonical_field(value text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT octet_length(convert_to(value, 'UTF8'))::text || ':' || value
$$;

CREATE FUNCTION audit_event_canonical(e audit_event) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(audit_canonical_field(e.seq::text), '~')
        || coalesce(audit_canonical_field(e.id::text), '~')
        || coalesce(audit_canonical_field(to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')), '~')
        || coalesce(audit_canonical_field(e.event), '~')
        || coalesce(audit_canonical_field(e.outcome), '~')
        || coalesce(audit_canonical_field(e.peer_address), '~')
        || coalesce(audit_canonical_field(e.calling_ae_title), '~')
        || coalesce(audit_canonical_field(e.called_ae_title), '~')
        || coalesce(audit_canonical_field(e.sop_instance_uid), '~')
        || coalesce(audit_canonical_field(e.study_instance_uid), '~')
        || coalesce(audit_canonical_field(e.detail), '~')
        || coalesce(audit_canonical_field(e.data::text), '~')
$$;

CREATE FUNCTION audit_event_hash(e audit_event) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT encode(sha256(convert_to(e.prev_hash || audit_event_canonical(e), 'UTF8')), 'hex')
$$;

-- Rows written before this migration, chained in id order (they were written
-- by one daemon before any chain existed).
DO $$
DECLARE
    r audit_event;
    previous text := repeat('0', 64);
    n bigint := 0;
BEGIN
    LOCK TABLE audit_event IN EXCLUSIVE MODE;
    FOR r IN SELECT * FROM audit_event ORDER BY id LOOP
        n := n + 1;
        r.seq := n;
        r.prev_hash := previous;
        r.row_hash := audit_event_hash(r);
        UPDATE audit_event SET seq = r.seq, prev_hash = r.prev_hash, row_hash = r.row_hash WHERE id = r.id;
        previous := r.row_hash;
    END LOOP;
END
$$;

ALTER TABLE audit_event
    ALTER COLUMN seq SET NOT NULL,
    ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN row_hash SET NOT NULL;

-- Every insert takes this transaction-scoped advisory lock before it reads
-- the chain head, so concurrent writers (several daemons on one database
-- included) append one after the other; the lock is held until commit, so the
-- next writer sees this row. seq, not id, is the chain order: ids are drawn
-- before the lock and may commit out of order. The key is arbitrary but fixed
-- ('cxr-led audit chain' as two int4: 0x6378722d, 0x61756474).
--
-- Writers must use READ COMMITTED (PostgreSQL's default): in REPEATABLE READ
-- the head read after the lock could be stale; the UNIQUE seq then refuses
-- the insert rather than fork the chain.
CREATE FUNCTION audit_event_append() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    head record;
BEGIN
    IF NEW.at IS NULL OR NEW.at IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'audit_event.at must be a finite time, got %', NEW.at
            USING HINT = 'leave "at" out: it defaults to now()';
    END IF;
    PERFORM pg_advisory_xact_lock(1668444717, 1635083380);
    SELECT seq, row_hash INTO head FROM audit_event ORDER BY seq DESC LIMIT 1;
    IF FOUND THEN
        NEW.seq := head.seq + 1;
        NEW.prev_hash := head.row_hash;
    ELSE
        NEW.seq := 1;
        NEW.prev_hash := repeat('0', 64);
    END IF;
    NEW.row_hash := audit_event_hash(NEW);
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_event_append BEFORE INSERT ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_append();

-- Append-only: the database itself refuses to change or remove audit rows.
CREATE FUNCTION audit_event_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_event is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit events are never changed or removed; record a new event instead';
END
$$;

CREATE TRIGGER audit_event_no_update BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_refuse_change();

CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_refuse_change();

-- The owner (the daemon's user, which runs the migrations) keeps INSERT and
-- SELECT only; a superuser bypasses privileges but not the triggers above.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_event FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_event FROM CURRENT_USER;

CREATE INDEX audit_event_study_idx ON audit_event (study_instance_uid, seq);

-- Alerts ----------------------------------------------------------------------

-- One row per alert mail sent: kind ('held', 'dead-job', 'pacs-unreachable')
-- and a key naming what it is about (derived SOP Instance UID, job id,
-- destination and outage). Inserted in the same transaction as the
-- `alert-sent` audit event, and only once the mail was accepted.
CREATE TABLE alert (
    kind text NOT NULL,
    key text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now(),
    recipients text NOT NULL,
    subject text NOT NULL,
    PRIMARY KEY (kind, key)
);

-- Views for auditors -------------------------------------------------------------

-- One row per derived instance: where its source came from, why it was
-- enhanced, with what, how it scored, and where it went.
CREATE VIEW audit_derived_instance AS
SELECT
    e.derived_sop_instance_uid,
    e.derived_series_instance_uid,
    e.source_sop_instance_uid,
    i.sop_class_uid AS source_sop_class_uid,
    e.study_instance_uid,
    i.calling_ae_title AS source_calling_ae_title,
    i.peer_address AS source_peer_address,
    i.received_at AS source_received_at,
    e.job_id,
    d.rule AS exposure_rule,
    d.deviation_index,
    d.exposure_index,
    d.target_exposure_index,
    d.threshold AS exposure_threshold,
    d.flagged AS exposure_flagged,
    d.detail AS exposure_detail,
    d.decided_at AS exposure_decided_at,
    e.bundle_name,
    e.bundle_version,
    e.bundle_sha256,
    e.params,
    e.seed,
    e.device,
    e.score,
    e.score_components,
    e.hold_threshold,
    e.held,
    e.timings,
    e.pixel_sha256,
    e.created_at,
    coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'destination', o.destination,
                   'state', o.state,
                   'attempts', o.attempts,
                   'last_status', o.last_status,
                   'last_error', o.last_error,
                   'created_at', o.created_at,
                   'sent_at', o.sent_at)
               ORDER BY o.destination)
        FROM outbox o
        WHERE o.sop_instance_uid = e.derived_sop_instance_uid
    ), '[]'::jsonb) AS deliveries
FROM enhancement e
LEFT JOIN instance i ON i.sop_instance_uid = e.source_sop_instance_uid
LEFT JOIN exposure_decision d ON d.sop_instance_uid = e.source_sop_instance_uid;

-- One row per received instance: its exposure decision and, when it was
-- enhanced, the derived instance and its delivery state.
CREATE VIEW audit_received_instance AS
SELECT
    i.sop_instance_uid,
    i.sop_class_uid,
    i.study_instance_uid,
    i.calling_ae_title,
    i.peer_address,
    i.received_at,
    d.rule AS exposure_rule,
    d.deviation_index,
    d.threshold AS exposure_threshold,
    d.flagged AS exposure_flagged,
    d.decided_at AS exposure_decided_at,
    e.derived_sop_instance_uid,
    e.score,
    e.hold_threshold,
    e.held,
    (SELECT string_agg(o.destination || ':' || o.state, ', ' ORDER BY o.destination)
     FROM outbox o WHERE o.sop_instance_uid = e.derived_sop_instance_uid) AS deliveries
FROM instance i
LEFT JOIN exposure_decision d ON d.sop_instance_uid = i.sop_instance_uid
LEFT JOIN enhancement e ON e.source_sop_instance_uid = i.sop_instance_uid;

-- Every audit event of a study, in chain order. Events that name only an
-- instance (received or derived) are attributed to that instance's study.
-- Filter by study_instance_uid and ORDER BY seq.
CREATE VIEW audit_study_timeline AS
SELECT
    coalesce(a.study_instance_uid, i.study_instance_uid, e.study_instance_uid) AS study_instance_uid,
    a.seq,
    a.at,
    a.event,
    a.outcome,
    a.sop_instance_uid,
    a.calling_ae_title,
    a.peer_address,
    a.detail,
    a.data,
    a.row_hash
FROM audit_event a
LEFT JOIN instance i ON i.sop_instance_uid = a.sop_instance_uid
LEFT JOIN enhancement e ON e.derived_sop_instance_uid = a.sop_instance_uid
WHERE coalesce(a.study_instance_uid, i.study_instance_uid, e.study_instance_uid) IS NOT NULL
ORDER BY study_instance_uid, a.seq;

-- Results held back because their hallucination-check score passed the hold
-- threshold, and whether the alert mail went out.
CREATE VIEW audit_held_results AS
SELECT
    e.derived_sop_instance_uid,
    e.source_sop_instance_uid,
    e.study_instance_uid,
    e.score,
    e.hold_threshold,
    e.score_components,
    e.bundle_name,
    e.bundle_version,
    e.created_at,
    al.sent_at AS alert_sent_at
FROM enhancement e
LEFT JOIN alert al ON al.kind = 'held' AND al.key = e.derived_sop_instance_uid
WHERE e.held;

-- Jobs that failed for good, with the last error and whether the alert went out.
CREATE VIEW audit_dead_jobs AS
SELECT
    j.id AS job_id,
    j.study_instance_uid,
    j.attempts,
    j.last_error,
    j.created_at,
    j.finished_at,
    al.sent_at AS alert_sent_at
FROM job j
LEFT JOIN alert al ON al.kind = 'dead-job' AND al.key = j.id::text
WHERE j.state = 'dead';

-- Derived instances not (yet) delivered: pending or failed outbox rows.
CREATE VIEW audit_undelivered AS
SELECT
    o.sop_instance_uid,
    o.study_instance_uid,
    o.destination,
    o.state,
    o.attempts,
    o.last_status,
    o.last_error,
    o.created_at,
    o.next_attempt_at
FROM outbox o
WHERE o.state <> 'sent';

-- The chain head: anchor its row_hash outside the database (`cxr-ledd audit
-- verify` prints it) to detect a rewrite of the whole chain.
CREATE VIEW audit_chain_head AS
SELECT seq, id, at, row_hash FROM audit_event ORDER BY seq DESC LIMIT 1;

-- The auditor role ----------------------------------------------------------------

-- Roles belong to the cluster, not the database: create it only when missing,
-- and tolerate a concurrent migration of another database creating it first.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cxr_led_auditor') THEN
        BEGIN
            CREATE ROLE cxr_led_auditor NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'cannot create role cxr_led_auditor: the database user % lacks CREATEROLE', current_user
                    USING HINT = 'as a superuser, run once: CREATE ROLE cxr_led_auditor NOLOGIN';
        END;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO cxr_led_auditor;
GRANT SELECT ON audit_event, audit_derived_instance, audit_received_instance, audit_study_timeline,
    audit_held_results, audit_dead_jobs, audit_undelivered, audit_chain_head TO cxr_led_auditor;
