//! The whole loop with a real PACS: studies uploaded to a private Orthanc
//! over its REST API are forwarded to cxr-ledd by Orthanc's Lua rule, and
//! the derived series comes back into the same study in Orthanc. Runs on CPU
//! with the tiny bundle; needs Orthanc, dcmtk and PostgreSQL (`.ci/test`
//! installs and starts them) and the cxr-ledd binary (built by
//! `cargo test --workspace`).

use std::time::{Duration, Instant};

use cxr_led_dicom::derive;
use cxr_led_e2e::studies::{self, Sample};
use cxr_led_e2e::{lines_with_patient_data, LoopOptions, PacsLoop};
use dicom_dictionary_std::tags;
use dicom_object::from_reader;
use sqlx::Row;

/// A database name unique to this test and process.
fn database_name(test: &str) -> String {
    format!("cxrled_e2e_{test}_{}", std::process::id())
}

/// The one derived instance of a sample's derived series, parsed.
fn derived_instance(pacs: &PacsLoop, sample: &Sample) -> dicom_object::DefaultDicomObject {
    let series = pacs.derived_series(sample).unwrap().expect("a derived series");
    let instances = series["Instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{}: one derived instance, got {series}", sample.label);
    let bytes = pacs.orthanc.instance_file(instances[0].as_str().unwrap()).unwrap();
    from_reader(&bytes[128..]).expect("Orthanc returns a DICOM file")
}

fn text(object: &dicom_object::DefaultDicomObject, tag: dicom_core::Tag) -> String {
    object.element(tag).unwrap().to_str().unwrap().trim_end_matches('\0').trim().to_string()
}

#[test]
fn an_under_exposed_study_sent_to_orthanc_comes_back_as_a_derived_series_in_the_same_study() {
    let work = tempfile::tempdir().unwrap();
    let mut pacs = PacsLoop::start(&LoopOptions::for_tests(work.path(), &database_name("loop"))).unwrap();
    let samples = studies::standard_set(&work.path().join("samples"), "loop").unwrap();
    let (under, well): (Vec<&Sample>, Vec<&Sample>) = samples.iter().partition(|s| s.deviation_index < -3.0);
    let start = Instant::now();
    for sample in &samples {
        pacs.orthanc.upload(&sample.path).unwrap();
    }
    let seconds = pacs.wait_for_derived(&under, start, Duration::from_secs(600)).unwrap();
    eprintln!("upload to derived series in Orthanc: {seconds:?} s");

    // Every job is done (the well-exposed one too), so "nothing for the
    // well-exposed study" is final, not "not yet".
    // Orthanc stores an instance before cxr-led records the C-STORE
    // response, so the outbox settles a moment after the series appears.
    cxr_led_e2e::wait::wait_until(
        Duration::from_secs(60),
        "all three jobs done and both results recorded sent",
        || {
            Ok(pacs.db.count("SELECT count(*) FROM job WHERE state = 'done'")? == 3
                && pacs.db.count("SELECT count(*) FROM outbox WHERE state = 'sent'")? == 2)
        },
    )
    .unwrap();
    for sample in &well {
        let series = pacs.orthanc.series_of_study(&sample.study_uid).unwrap();
        assert_eq!(series.len(), 1, "{}: only the original series, got {series:?}", sample.label);
    }

    for sample in &under {
        let derived = derived_instance(&pacs, sample);
        assert_eq!(text(&derived, tags::STUDY_INSTANCE_UID), sample.study_uid, "{}", sample.label);
        assert!(text(&derived, tags::IMAGE_TYPE).starts_with("DERIVED\\SECONDARY"), "{}", sample.label);
        assert_eq!(text(&derived, tags::SERIES_DESCRIPTION), derive::SERIES_DESCRIPTION);
        assert_eq!(derived.element(tags::ROWS).unwrap().to_int::<u32>().unwrap(), sample.rows, "{}", sample.label);
        assert_eq!(
            derived.element(tags::COLUMNS).unwrap().to_int::<u32>().unwrap(),
            sample.columns,
            "{}",
            sample.label
        );
        // The source is named, and the provenance and score travel in our private block.
        let source = derived.element(tags::SOURCE_IMAGE_SEQUENCE).unwrap().items().unwrap()[0]
            .element(tags::REFERENCED_SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string();
        assert_eq!(source, sample.sop_uid);
        let creator = dicom_core::Tag(derive::PRIVATE_GROUP, 0x0010);
        assert_eq!(text(&derived, creator), derive::PRIVATE_CREATOR);
        let score: f64 = text(&derived, derive::PRIVATE_SCORE).parse().unwrap();
        assert!((0.0..=1.0).contains(&score), "{}: score {score}", sample.label);
        // The patient is the source's.
        assert_eq!(text(&derived, tags::PATIENT_ID), studies::PATIENT_ID);
    }

    // The auditor's view: each derived instance with its source, decision,
    // score and a delivery to the PACS that succeeded.
    let rows = pacs
        .db
        .rows(
            "SELECT source_sop_instance_uid, exposure_rule, exposure_flagged, score, held, deliveries \
             FROM audit_derived_instance ORDER BY source_sop_instance_uid",
        )
        .unwrap();
    assert_eq!(rows.len(), under.len());
    for row in &rows {
        let source: String = row.get("source_sop_instance_uid");
        assert!(under.iter().any(|s| s.sop_uid == source), "{source}");
        assert_eq!(row.get::<String, _>("exposure_rule"), "deviation-index");
        assert!(row.get::<bool, _>("exposure_flagged"));
        assert!(!row.get::<bool, _>("held"));
        let deliveries: serde_json::Value = row.get("deliveries");
        assert_eq!(deliveries[0]["state"], "sent", "{deliveries}");
    }
    for sample in &samples {
        let events: Vec<String> = pacs
            .db
            .rows(&format!(
                "SELECT event || ':' || outcome FROM audit_study_timeline WHERE study_instance_uid = '{}' ORDER BY seq",
                sample.study_uid
            ))
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut expected =
            vec!["instance-received:success", "study-enqueued:success", "exposure-decision", "study-processed:success"];
        if sample.deviation_index < -3.0 {
            expected.extend(["instance-enhanced:success", "instance-sent:success"]);
        }
        for event in expected {
            assert!(events.iter().any(|e| e.starts_with(event)), "{}: {event} missing from {events:?}", sample.label);
        }
    }

    // The hash chain over the run verifies, through the auditor's command.
    let verify = std::process::Command::new(cxr_led_e2e::cxrled::binary().unwrap())
        .args(["audit", "verify", "--config"])
        .arg(pacs.cxrled.dir.join("cxr-ledd.toml"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));

    // IT's view of the same run: ready, and the counters add up.
    let ready = cxr_led_e2e::http::get(pacs.cxrled.http_port, "/readyz").unwrap();
    assert_eq!(ready.status, 200);
    let metrics = cxr_led_e2e::http::get(pacs.cxrled.http_port, "/metrics").unwrap().text();
    for sample_line in [
        "cxr_led_instances_received_total{outcome=\"stored\"} 3",
        "cxr_led_instances_processed_total{outcome=\"enhanced\"} 2",
        "cxr_led_instances_processed_total{outcome=\"passed\"} 1",
        "cxr_led_delivery_attempts_total{outcome=\"sent\"} 2",
        "cxr_led_jobs{state=\"done\"} 3",
    ] {
        assert!(metrics.lines().any(|line| line == sample_line), "{sample_line} not in /metrics:\n{metrics}");
    }

    // A graceful stop, then the log of the whole run: JSON lines that name
    // the instances by UID and never the patient.
    pacs.cxrled.stop().unwrap();
    let log = pacs.cxrled.log();
    for line in log.lines() {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(parsed["timestamp"].is_string() && parsed["level"].is_string(), "{line}");
        // A line about a job, an instance or a delivery names it by UID.
        let about_an_item = parsed["span"]["name"] == "job"
            || ["instance stored (cumulative timings)", "instance delivered"]
                .contains(&parsed["fields"]["message"].as_str().unwrap_or(""));
        if about_an_item {
            assert!(line.contains("\"2.25."), "a line about an item without its UID: {line}");
        }
    }
    for sample in &samples {
        assert!(log.contains(&sample.sop_uid), "the log never names {} ({})", sample.sop_uid, sample.label);
    }
    let leaks = lines_with_patient_data(&log);
    assert!(leaks.is_empty(), "patient data in the log:\n{}", leaks.join("\n"));
}

#[test]
fn orthanc_restarted_while_results_are_pending_still_gets_every_result_once() {
    let work = tempfile::tempdir().unwrap();
    // A quiet period longer than Orthanc takes to stop: the jobs start only
    // after Orthanc is down, so no result can reach it before the restart
    // (with 1 s, a fast run could deliver one first, and the wait below would never end).
    let options =
        LoopOptions { quiet_period_secs: 8.0, ..LoopOptions::for_tests(work.path(), &database_name("restart")) };
    let mut pacs = PacsLoop::start(&options).unwrap();
    let dir = work.path().join("samples");
    let samples: Vec<Sample> = (0..3)
        .map(|i| studies::sample(&dir, "dx_image.dcm", &format!("thorax-{i}"), "restart", -6.0).unwrap())
        .collect();
    for sample in &samples {
        pacs.orthanc.upload(&sample.path).unwrap();
    }
    // Orthanc goes down once cxr-led has every instance, so the results
    // are still to come.
    cxr_led_e2e::wait::wait_until(Duration::from_secs(120), "cxr-led to receive the three instances", || {
        Ok(pacs.db.count("SELECT count(*) FROM instance")? == 3)
    })
    .unwrap();
    pacs.orthanc.stop().unwrap();
    cxr_led_e2e::wait::wait_until(Duration::from_secs(600), "every result to fail its first delivery", || {
        Ok(pacs.db.count("SELECT count(*) FROM outbox WHERE attempts >= 1 AND state = 'pending'")? == 3)
    })
    .unwrap();
    pacs.orthanc.restart().unwrap();
    let refs: Vec<&Sample> = samples.iter().collect();
    pacs.wait_for_derived(&refs, Instant::now(), Duration::from_secs(120)).unwrap();

    // Each result arrived once: one derived instance per study, one
    // successful send each, and Orthanc holds three sources and three results.
    for sample in &samples {
        derived_instance(&pacs, sample);
    }
    cxr_led_e2e::wait::wait_until(Duration::from_secs(30), "the outbox to settle", || {
        Ok(pacs.db.count("SELECT count(*) FROM outbox WHERE state = 'sent'")? == 3)
    })
    .unwrap();
    assert_eq!(pacs.db.count("SELECT count(*) FROM audit_event WHERE event = 'instance-sent'").unwrap(), 3);
    assert_eq!(pacs.orthanc.instance_count().unwrap(), 6);
    // And the sources were forwarded once: Orthanc's restart did not send them again.
    assert_eq!(
        pacs.db
            .count("SELECT count(*) FROM audit_event WHERE event = 'instance-received' AND outcome = 'success'")
            .unwrap(),
        3
    );
    assert_eq!(pacs.db.count("SELECT count(*) FROM instance").unwrap(), 3);
}
