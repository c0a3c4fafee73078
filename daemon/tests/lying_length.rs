//! Hostile lengths cost no memory: a C-STORE whose data set's first element
//! declares 0xFFFFFFF0 bytes, followed by 4 KiB, is answered C000 with the
//! reason, audited, and the association goes on to store a good instance;
//! once alone and then on 8 associations at once, while the daemon's (the
//! real binary's) peak RSS, read from /proc, grows by far less than one such
//! allocation. A data set over `max-instance-size-mib` is answered A700 and
//! leaves nothing behind.

mod common;

use common::*;
use dicom_dictionary_std::tags;

/// A generous bound on the peak RSS growth: one believed length would be 4 GiB.
const RSS_GROWTH_LIMIT_KIB: u64 = 256 * 1024;

/// (0008,0005) OB declaring 0xFFFFFFF0 bytes, then 4 KiB of them.
fn lying_data_set() -> Vec<u8> {
    let mut bytes = vec![0x08, 0x00, 0x05, 0x00, b'O', b'B', 0, 0];
    bytes.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    bytes.extend(std::iter::repeat_n(0xAB, 4096));
    bytes
}

/// A field of /proc/PID/status, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A copy of the small CR with its own SOP Instance UID, as a data set.
fn good_instance(n: usize) -> (String, Vec<u8>) {
    let mut obj = dicom_object::open_file(fixture("CR1_6154.dcm")).unwrap();
    let uid = format!("2.25.4242{n}");
    obj.put(dicom_core::DataElement::new(tags::SOP_INSTANCE_UID, dicom_core::VR::UI, uid.as_str()));
    (uid, data_set_bytes(&obj))
}

/// On one association: the lie, then a good instance; their statuses.
fn lie_then_store(addr: std::net::SocketAddr, n: usize) -> [u16; 2] {
    let (uid, good) = good_instance(n);
    let mut scu = RawScu::connect(addr, CR, EXPLICIT_LE);
    let lie = scu.store(CR, &format!("2.25.666{n}"), &lying_data_set(), None).unwrap();
    let stored = scu.store(CR, &uid, &good, None).unwrap();
    scu.association.release().unwrap();
    [lie, stored]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_lengths_are_refused_without_allocating_them() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, spool.path());
    config.ingest.max_instance_size_mib = 4;
    let config = write_daemon_config(config, work.path());
    let mut daemon = spawn_daemon(&config, &work.path().join("daemon.log"));
    let addr = daemon.answering().await;
    let before = proc_status_kib(daemon.id(), "VmHWM:");

    let alone = tokio::task::spawn_blocking(move || lie_then_store(addr, 0)).await.unwrap();
    assert_eq!(alone, [0xC000, 0x0000]);
    let parallel = tokio::task::spawn_blocking(move || {
        let senders: Vec<_> = (1..=8).map(|n| std::thread::spawn(move || lie_then_store(addr, n))).collect();
        senders.into_iter().map(|s| s.join().unwrap()).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(parallel.iter().all(|s| *s == [0xC000, 0x0000]), "{parallel:?}");
    let growth = proc_status_kib(daemon.id(), "VmHWM:").saturating_sub(before);
    eprintln!("peak RSS {before} KiB before, grew by {growth} KiB over 9 lying messages");
    assert!(growth < RSS_GROWTH_LIMIT_KIB, "peak RSS grew by {growth} KiB");

    // Over the maximum (4 MiB): the 7.2 MB uncompressed CR.
    let big = dicom_object::open_file(fixture("RG1_UNCR.dcm")).unwrap();
    let big_uid = dimse_uid(&big);
    let big_class = dimse_class(&big);
    let big_bytes = data_set_bytes(&big);
    let (too_large, after) = tokio::task::spawn_blocking(move || {
        let mut scu = RawScu::connect(addr, &big_class, EXPLICIT_LE);
        let too_large = scu.store(&big_class, &big_uid, &big_bytes, None).unwrap();
        // The association survives it.
        let echo_like = scu.association.release().is_ok();
        (too_large, echo_like)
    })
    .await
    .unwrap();
    assert_eq!(too_large, 0xA700);
    assert!(after, "the association was released after A700");

    let pool = db.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM instance").await, 9);
    wait_for_count(
        &pool,
        "SELECT count(*) FROM audit_event WHERE event = 'instance-received' AND outcome = 'failure' \
         AND detail LIKE '%declares 4294967280 bytes%'",
        9,
    )
    .await;
    wait_for_count(
        &pool,
        "SELECT count(*) FROM audit_event WHERE outcome = 'failure' AND detail LIKE 'status A700: %max-instance-size-mib%'",
        1,
    )
    .await;
    assert_eq!(spool_files(spool.path()).len(), 9);
    assert_eq!(temp_files(spool.path()), 0);
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    pool.close().await;
}

fn dimse_uid(obj: &dicom_object::DefaultDicomObject) -> String {
    obj.element(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string()
}

fn dimse_class(obj: &dicom_object::DefaultDicomObject) -> String {
    obj.element(tags::SOP_CLASS_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string()
}
