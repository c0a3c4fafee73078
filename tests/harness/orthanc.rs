//! A private Orthanc as the hospital's PACS: its own configuration, storage
//! and loopback ports in one folder, cxr-led registered as a modality, and a
//! Lua rule that forwards every new stable study to cxr-led.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::http;

/// Orthanc's AE title in the harness.
pub const ORTHANC_AE: &str = "ORTHANC";

/// The name under which cxr-led is known to Orthanc (`/modalities/cxrled`).
pub const CXRLED_MODALITY: &str = "cxrled";

/// The forwarding rule. On each new stable study it sends cxr-led every
/// instance that did not come from cxr-led and was not forwarded before
/// (user metadata `CxrLedForwarded`), so the derived series that comes back
/// (which makes the study unstable again) is neither sent back nor makes
/// the originals go twice. The store is synchronous: an instance is marked
/// forwarded only once cxr-led acknowledged it.
const FORWARD_LUA: &str = r#"
function OnStableStudy(studyId, tags, metadata)
  local instances = ParseJson(RestApiGet('/studies/' .. studyId .. '/instances'))
  local pending = {}
  for _, instance in pairs(instances) do
    local meta = ParseJson(RestApiGet('/instances/' .. instance['ID'] .. '/metadata?expand'))
    if meta['RemoteAET'] ~= '@CXRLED_AE@' and meta['CxrLedForwarded'] == nil then
      table.insert(pending, instance['ID'])
    end
  end
  if #pending > 0 then
    print('cxr-led forward: study ' .. studyId .. ', ' .. #pending .. ' instance(s)')
    RestApiPost('/modalities/@CXRLED_MODALITY@/store', DumpJson({ Resources = pending, Synchronous = true }))
    for _, id in pairs(pending) do
      RestApiPut('/instances/' .. id .. '/metadata/CxrLedForwarded', 'yes')
    end
  end
end
"#;

/// Where cxr-led listens, as Orthanc must know it.
#[derive(Debug, Clone)]
pub struct CxrLedPeer {
    /// cxr-led's AE title.
    pub ae_title: String,
    /// cxr-led's DICOM port on 127.0.0.1.
    pub port: u16,
}

/// A running private Orthanc (killed on drop).
#[derive(Debug)]
pub struct Orthanc {
    /// The folder holding configuration, storage and log.
    pub dir: PathBuf,
    /// REST API port (and Orthanc Explorer) on 127.0.0.1.
    pub http_port: u16,
    /// DICOM port on 127.0.0.1.
    pub dicom_port: u16,
    child: Option<Child>,
}

impl Orthanc {
    /// Writes the configuration and starts Orthanc; returns once its REST API answers.
    pub fn start(
        dir: &Path,
        http_port: u16,
        dicom_port: u16,
        cxrled: &CxrLedPeer,
        stable_age_secs: u32,
    ) -> anyhow::Result<Orthanc> {
        // Orthanc reads relative paths from its config file's folder: give it absolute ones.
        let dir = &std::path::absolute(dir)?;
        std::fs::create_dir_all(dir.join("storage"))?;
        let lua = FORWARD_LUA.replace("@CXRLED_AE@", &cxrled.ae_title).replace("@CXRLED_MODALITY@", CXRLED_MODALITY);
        std::fs::write(dir.join("forward.lua"), lua)?;
        let config = json!({
            "Name": "cxr-led-e2e",
            "StorageDirectory": dir.join("storage"),
            "IndexDirectory": dir.join("storage"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": ORTHANC_AE,
            // Loopback only and no users: a private test instance.
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "HttpServerEnabled": true,
            "DicomServerEnabled": true,
            "StableAge": stable_age_secs,
            "Plugins": [],
            "LuaScripts": [dir.join("forward.lua")],
            "UserMetadata": { "CxrLedForwarded": 1024 },
            "DicomModalities": { CXRLED_MODALITY: [cxrled.ae_title, "127.0.0.1", cxrled.port] },
            "DicomScuTimeout": 30,
            "DicomAssociationCloseDelay": 0,
        });
        std::fs::write(dir.join("orthanc.json"), serde_json::to_vec_pretty(&config)?)?;
        let mut orthanc = Orthanc { dir: dir.to_path_buf(), http_port, dicom_port, child: None };
        orthanc.launch()?;
        Ok(orthanc)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let port = self.http_port;
        let child = crate::spawn_until_ready(
            Command::new("Orthanc").arg(self.dir.join("orthanc.json")),
            &self.dir.join("orthanc.log"),
            Duration::from_secs(30),
            "Orthanc (Debian package orthanc; .ci/env.sh installs it)",
            || http::get(port, "/system").is_ok(),
        )?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops Orthanc (SIGTERM, as a service manager would) and waits for it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            crate::terminate(&mut child, Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// Stops and starts Orthanc again on the same storage and ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Uploads a DICOM file over the REST API, as a modality or a user would.
    pub fn upload(&self, file: &Path) -> anyhow::Result<()> {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        http::post(self.http_port, "/instances", &bytes).with_context(|| format!("uploading {}", file.display()))?;
        Ok(())
    }

    /// Orthanc's id of a study, by its Study Instance UID (None when absent).
    pub fn study_id(&self, study_uid: &str) -> anyhow::Result<Option<String>> {
        let found = http::post(self.http_port, "/tools/lookup", study_uid.as_bytes())?.json()?;
        Ok(found
            .as_array()
            .into_iter()
            .flatten()
            .find(|item| item["Type"] == "Study")
            .and_then(|item| item["ID"].as_str())
            .map(str::to_string))
    }

    /// The series of a study with their main DICOM tags and instance ids.
    pub fn series_of_study(&self, study_uid: &str) -> anyhow::Result<Vec<Value>> {
        let Some(id) = self.study_id(study_uid)? else { return Ok(Vec::new()) };
        let series = http::get_json(self.http_port, &format!("/studies/{id}/series"))?;
        match series {
            Value::Array(series) => Ok(series),
            other => bail!("unexpected /series answer {other}"),
        }
    }

    /// The stored DICOM file of an instance.
    pub fn instance_file(&self, instance_id: &str) -> anyhow::Result<Vec<u8>> {
        Ok(http::get(self.http_port, &format!("/instances/{instance_id}/file"))?.body)
    }

    /// Number of instances Orthanc stores in all.
    pub fn instance_count(&self) -> anyhow::Result<u64> {
        let statistics = http::get_json(self.http_port, "/statistics")?;
        statistics["CountInstances"].as_u64().context("no CountInstances in /statistics")
    }

    /// Orthanc's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("orthanc.log")).unwrap_or_default()
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
