//! DICOM TLS on the way in: dcmtk's `storescu +tls` against the `[ingest.tls]`
//! listener with a client-certificate check, with certificates made by
//! `openssl` for the test. (The way out, to `storescp +tls`, is in delivery.rs.)

mod common;

use common::pki::Pki;
use common::*;
use cxr_led_daemon::app::preflight;
use cxr_led_daemon::config::IngestTlsConfig;

/// storescu's arguments for one file to `addr` with extra (TLS) options.
async fn storescu_tls(addr: std::net::SocketAddr, tls: &[String], file: &std::path::Path) -> std::process::Output {
    let mut args: Vec<String> = ["-v", "-aet", "PACS", "-aec", AE].iter().map(|s| s.to_string()).collect();
    args.extend(tls.iter().cloned());
    args.extend([addr.ip().to_string(), addr.port().to_string(), file.display().to_string()]);
    dcmtk("storescu", args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pacs_with_a_client_certificate_stores_over_tls_and_one_without_is_refused() {
    let pki = Pki::new("cxr-led test CA");
    let ours = pki.issue("cxrled");
    let pacs = pki.issue("pacs");
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, spool.path());
    config.ingest.tls = Some(IngestTlsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        certificate: ours.certificate.clone(),
        private_key: ours.private_key.clone(),
        client_ca: Some(pki.ca()),
    });
    let running = start(config).await;
    let tls_addr = running.tls_addr.expect("a TLS listener");
    let work = tempfile::tempdir().unwrap();
    let copies = make_copies(&fixture("CR1_6154.dcm"), work.path(), 3, "2.25.4242", "tls");
    let ca = pki.ca().display().to_string();

    // With a certificate from the trusted CA, and checking ours against it: stored.
    let mut with_certificate = pacs.dcmtk_args();
    with_certificate.extend(["+cf".into(), ca.clone()]);
    let out = storescu_tls(tls_addr, &with_certificate, &copies[0].0).await;
    assert!(out.status.success(), "{}", text(&out));

    // Encrypted but without a client certificate: refused in the handshake.
    let anonymous = vec!["+tla".to_string(), "+cf".into(), ca.clone()];
    let out = storescu_tls(tls_addr, &anonymous, &copies[1].0).await;
    assert!(!out.status.success(), "a peer without a certificate must be refused: {}", text(&out));

    // Plain DICOM to the TLS port: refused, and the listener carries on.
    let out = storescu_tls(tls_addr, &[], &copies[1].0).await;
    assert!(!out.status.success(), "plain DICOM on the TLS port must fail: {}", text(&out));

    // A client certificate from another CA: refused.
    let stranger_ca = Pki::new("someone else's CA");
    let stranger = stranger_ca.issue("intruder");
    let mut foreign = stranger.dcmtk_args();
    foreign.extend(["+cf".into(), ca.clone()]);
    let out = storescu_tls(tls_addr, &foreign, &copies[1].0).await;
    assert!(!out.status.success(), "a certificate from an unknown CA must be refused: {}", text(&out));

    // The plain listener still serves, and TLS serves again after the refusals.
    let plain = storescu(running.local_addr, "PACS", &[], std::slice::from_ref(&copies[1].0)).await;
    assert!(plain.status.success(), "{}", text(&plain));
    let out = storescu_tls(tls_addr, &with_certificate, &copies[2].0).await;
    assert!(out.status.success(), "{}", text(&out));

    let pool = db.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM instance").await, 3);
    // The audit trail says which associations ran over TLS and why the others failed.
    wait_for_count(
        &pool,
        "SELECT count(*) FROM audit_event WHERE event = 'association' AND outcome = 'accepted' \
         AND detail LIKE 'over TLS:%'",
        2,
    )
    .await;
    wait_for_count(
        &pool,
        "SELECT count(*) FROM audit_event WHERE event = 'association' AND outcome = 'accepted' \
         AND detail LIKE 'over TCP:%'",
        1,
    )
    .await;
    wait_for_count(
        &pool,
        "SELECT count(*) FROM audit_event WHERE event = 'association' AND outcome = 'failure' \
         AND detail LIKE '%TLS%'",
        3,
    )
    .await;
    running.stop().await;
    pool.close().await;
}

/// A configuration with a `[ingest.tls]` table whose files are given.
fn tls_config_text(certificate: &std::path::Path, key: &std::path::Path, client_ca: &std::path::Path) -> String {
    format!(
        "[ingest.tls]\nlisten = \"127.0.0.1:2762\"\ncertificate = {:?}\nprivate-key = {:?}\nclient-ca = {:?}\n",
        certificate.display().to_string(),
        key.display().to_string(),
        client_ca.display().to_string()
    )
}

#[test]
fn tls_files_that_are_missing_or_do_not_match_are_named_with_their_keys() {
    let pki = Pki::new("cxr-led test CA");
    let ours = pki.issue("cxrled");
    let other = pki.issue("other");
    let missing = std::path::Path::new("/nonexistent/cxr-led/ca.pem");

    let good = preflight::from_toml(&tls_config_text(&ours.certificate, &ours.private_key, &pki.ca()));
    assert!(good.is_ok(), "{:?}", good.err());

    let error = preflight::from_toml(&tls_config_text(missing, &ours.private_key, &pki.ca())).unwrap_err();
    let problems = error.problems();
    assert_eq!(problems.len(), 1, "{error}");
    assert_eq!(problems[0].key, "ingest.tls.certificate");
    assert!(problems[0].message.contains("/nonexistent/cxr-led/ca.pem"), "{error}");

    // A key that belongs to another certificate.
    let error = preflight::from_toml(&tls_config_text(&ours.certificate, &other.private_key, &pki.ca())).unwrap_err();
    assert_eq!(error.problems()[0].key, "ingest.tls.private-key", "{error}");
    assert!(error.to_string().contains("does not go with"), "{error}");

    // A private key where the CA certificates belong.
    let error =
        preflight::from_toml(&tls_config_text(&ours.certificate, &ours.private_key, &ours.private_key)).unwrap_err();
    assert_eq!(error.problems()[0].key, "ingest.tls.client-ca", "{error}");
    assert!(error.to_string().contains("no PEM CERTIFICATE block"), "{error}");

    // A destination with a client certificate but no key, and an unusable server name.
    let text = format!(
        "[delivery]\ndestinations = [{{ name = \"pacs\", ae-title = \"PACS\", address = \"pacs.example.org:2762\", \
         tls = {{ ca = {:?}, certificate = {:?}, server-name = \"not a name!\" }} }}]\n",
        pki.ca().display().to_string(),
        ours.certificate.display().to_string()
    );
    let error = preflight::from_toml(&text).unwrap_err();
    let keys: Vec<&str> = error.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["delivery.destinations[0].tls.server-name", "delivery.destinations[0].tls.private-key"],
        "{error}"
    );
}
