//! Landed migrations never change. A database records the sha384 of every
//! migration it ran and refuses to start when a file differs, so an edit to a
//! landed file breaks every site that ran it. This test pins each file's
//! checksum (add a line for a new migration once it lands), and checks that a
//! database which ran the one migration edited in the past
//! (`20261125000004_audit_chain.sql`, see `db::KNOWN_EDITS`) still starts and
//! ends up with the fixed audit lock key.

mod common;

use std::path::Path;

use common::*;
use cxr_led_daemon::db;
use sha2::{Digest, Sha384};

/// Every landed migration and the sha384 of its file.
const LANDED: &[(&str, &str)] = &[
    (
        "20261125000001_ingest.sql",
        "28c599887086b1197f23dd1bd36cb5698dee7664ff98c743f9cd597126b35613984d4d07d9a1ea7f7aaada4422de9e93",
    ),
    (
        "20261125000002_pipeline.sql",
        "084c57845565e628a535a61e375824ec8c460c225958a3555ca0364cefabcde9325ae15ec5a47c8c3d0f464ca838950d",
    ),
    (
        "20261125000004_audit_chain.sql",
        "fcf02f4bd90389df6dfadf7d24f70bf67df90cb2276fb804eca3f88c4f01c0a41514e5b029a4fd5d2e44e084bdaff33f",
    ),
    (
        "20261203000005_late_instances.sql",
        "69c65f088795e764419a260b100905d2ca6c2442e28952fa7642854634b109acbe78822f0f2860c13b5d43fac857fe31",
    ),
    (
        "20261203000006_service_role.sql",
        "0fd866af2916d581f3eb876a76b3df250b005948b55b9aae05d7945256ee55044df103670ee3a2f5f1b8c82de32a9e1d",
    ),
    (
        "20261206000007_register_instance.sql",
        "fa7a4b160e9c96242bbe18ac19e0a071b2ac6f2bd8f409d5928b6376e4bf8b796634b6fa845033c984a0d54a54163103",
    ),
    (
        "20261207000008_audit_chain_lock_key.sql",
        "2593ce31c7f8357791b044a5078ef644935c8e7d6277bd323199f00de72d998b5c02656057d0e5bad7632055fc31bd5d",
    ),
];

#[test]
fn no_landed_migration_file_changed_and_each_file_is_pinned() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sql"))
        .collect();
    files.sort();
    let pinned: Vec<&str> = LANDED.iter().map(|(name, _)| *name).collect();
    assert_eq!(files, pinned, "a migration file is new or gone: pin a new one here once it lands, never remove one");
    for (name, expected) in LANDED {
        let actual = hex::encode(Sha384::digest(std::fs::read(folder.join(name)).unwrap()));
        assert_eq!(
            &actual, expected,
            "{name} changed after it landed: every database that ran it will refuse to start; restore it and put \
             the change in a new migration"
        );
    }
}

#[tokio::test]
async fn a_database_that_ran_the_edited_audit_migration_starts_and_gets_the_fixed_lock_key() {
    let test_db = TestDb::create().await;
    let pool = db::connect(&test_db.url, 2).await.unwrap();
    // What a site that ran the edited copy of 20261125000004 has recorded.
    let (version, edited) = db::KNOWN_EDITS[0];
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2")
        .bind(hex::decode(edited).unwrap())
        .bind(version)
        .execute(&pool)
        .await
        .unwrap();
    let refused = db::MIGRATOR.run(&pool).await.unwrap_err();
    assert!(refused.to_string().contains("modified"), "sqlx alone refuses such a database: {refused}");
    // The refused run keeps its migration lock on that pooled connection:
    // close the pool as the exiting process would.
    pool.close().await;

    let pool = db::connect(&test_db.url, 2).await.expect("cxr-ledd repairs the record and starts");
    let recorded: Vec<u8> = sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = $1")
        .bind(version)
        .fetch_one(&pool)
        .await
        .unwrap();
    let landed = db::MIGRATOR.iter().find(|m| m.version == version).unwrap();
    assert_eq!(recorded, landed.checksum.as_ref());
    assert_eq!(db::repair_known_edits(&pool).await.unwrap(), 0, "repaired once");
    let source: String = sqlx::query_scalar("SELECT prosrc FROM pg_proc WHERE proname = 'audit_event_append'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(source.contains("pg_advisory_xact_lock(1668837933, 1635083380)"), "{source}");
}
