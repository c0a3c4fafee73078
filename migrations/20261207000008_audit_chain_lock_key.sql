-- The audit chain's advisory lock key, as 20261125000004 meant it: the ASCII
-- of 'cxr-' and 'audt' as two int4 (0x6378722d, 0x61756474). That migration
-- shipped 1668444717 (a typo for 0x6378722d) and was then edited in place,
-- which a database that had run it refused at start-up (checksum mismatch);
-- it is back as it landed and the key is fixed here. `cxr-ledd` repairs the
-- recorded checksum of a database that ran the edited copy (see db.rs,
-- KNOWN_EDITS). Never edit a landed migration: add one like this.
--
-- During a rolling upgrade a daemon on the old key and one on the new do not
-- serialise against each other; the UNIQUE seq then refuses one of two racing
-- inserts rather than fork the chain.
CREATE OR REPLACE FUNCTION audit_event_append() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    head record;
BEGIN
    IF NEW.at IS NULL OR NEW.at IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'audit_event.at must be a finite time, got %', NEW.at
            USING HINT = 'leave "at" out: it defaults to now()';
    END IF;
    PERFORM pg_advisory_xact_lock(1668837933, 1635083380);
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
