-- Registering a received instance in one call, so that its locks are held
-- only inside the server. The instance row, its study's upsert and its audit
-- event used to be five statements of one transaction sent one after the
-- other; the study row's lock (taken first) and the audit chain's lock (taken
-- by the audit insert) were held across the round trips in between, and with
-- 20 associations storing one study those round trips, slowed by a busy
-- client, were what every other association queued behind (daemon/INGEST.md,
-- "Benchmark"). Called as one statement outside an explicit transaction, this
-- function commits with it, atomically as before: a duplicate SOP Instance UID
-- raises unique_violation on instance_pkey and nothing of the call remains.
--
-- Returns whether the study had already been enqueued (the instance is late:
-- the upsert re-opens the study, and the tracker gives it another job after
-- the quiet period). The caller words both audit details, so the wording
-- stays in one place (daemon/src/ingest/store.rs).

CREATE FUNCTION register_instance(
    p_sop_instance_uid text,
    p_sop_class_uid text,
    p_study_instance_uid text,
    p_series_instance_uid text,
    p_transfer_syntax_uid text,
    p_spool_file text,
    p_size_bytes bigint,
    p_calling_ae_title text,
    p_called_ae_title text,
    p_peer_address text,
    p_detail text,
    p_late_detail text,
    OUT late boolean
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT enqueued_at IS NOT NULL INTO late
        FROM study WHERE study_instance_uid = p_study_instance_uid FOR UPDATE;
    late := coalesce(late, false);
    INSERT INTO study (study_instance_uid, instance_count) VALUES (p_study_instance_uid, 1)
        ON CONFLICT (study_instance_uid) DO UPDATE
        SET last_received_at = now(), instance_count = study.instance_count + 1, enqueued_at = NULL;
    INSERT INTO instance (sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid,
                          transfer_syntax_uid, spool_file, size_bytes, calling_ae_title, peer_address)
        VALUES (p_sop_instance_uid, p_sop_class_uid, p_study_instance_uid, p_series_instance_uid,
                p_transfer_syntax_uid, p_spool_file, p_size_bytes, p_calling_ae_title, p_peer_address);
    -- Last, as the audit module asks: the chain's lock is held from here to the commit.
    INSERT INTO audit_event (event, outcome, peer_address, calling_ae_title, called_ae_title,
                             sop_instance_uid, study_instance_uid, detail)
        VALUES ('instance-received', 'success', p_peer_address, p_calling_ae_title, p_called_ae_title,
                p_sop_instance_uid, p_study_instance_uid,
                CASE WHEN late THEN p_late_detail ELSE p_detail END);
END
$$;

REVOKE EXECUTE ON FUNCTION register_instance FROM PUBLIC;
GRANT EXECUTE ON FUNCTION register_instance TO cxr_led_service;
