-- The service runs as a role that cannot rewrite the audit: the schema, its
-- triggers and the audit table belong to the role that runs the migrations
-- (`cxr-ledd migrate`), and `cxr_led_service` (NOLOGIN; grant it to the login
-- role the daemon uses) gets only what the service needs: the pipeline's
-- tables read and written, the audit table INSERT and SELECT only (no UPDATE,
-- DELETE, TRUNCATE, no ALTER, no trigger control: those need ownership).
-- `cxr-ledd run` refuses to run as the owner or a superuser unless
-- `[database] development = true`. systemd/README.md says how to set up both.
-- A later migration that adds a table grants it here too.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cxr_led_service') THEN
        BEGIN
            CREATE ROLE cxr_led_service NOLOGIN;
        EXCEPTION
            WHEN duplicate_object THEN NULL; -- another database's migration made it first
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'cannot create role cxr_led_service: the database user % lacks CREATEROLE', current_user
                    USING HINT = 'as a superuser, run once: CREATE ROLE cxr_led_service NOLOGIN';
        END;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO cxr_led_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON study, instance, job, exposure_decision, enhancement, outbox, alert
    TO cxr_led_service;
GRANT SELECT, INSERT ON audit_event TO cxr_led_service;
GRANT SELECT ON audit_derived_instance, audit_received_instance, audit_study_timeline, audit_held_results,
    audit_dead_jobs, audit_undelivered, audit_chain_head TO cxr_led_service;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO cxr_led_service;
-- Start-up checks, as this role, that every migration was applied (the table
-- is sqlx's; absent when the files are applied by hand).
DO $$
BEGIN
    IF to_regclass('_sqlx_migrations') IS NOT NULL THEN
        GRANT SELECT ON _sqlx_migrations TO cxr_led_service;
    END IF;
END
$$;
