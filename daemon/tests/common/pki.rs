//! A throw-away public key infrastructure for the DICOM TLS tests, made with
//! the `openssl` command the way a hospital's IT would: a CA, and leaf
//! certificates it signs for 127.0.0.1 / localhost (server and client use).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and the certificates it issued, in a temporary folder.
pub struct Pki {
    dir: tempfile::TempDir,
}

/// One issued certificate: its PEM files.
pub struct Issued {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running openssl: {e} (is the openssl package installed?)"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pki {
    /// A new CA named `name` (its key and self-signed certificate).
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let subject = format!("/CN={name}");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki { dir }
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A certificate for `name` (CN) valid for 127.0.0.1 and localhost, for
    /// both server and client authentication, signed by this CA.
    pub fn issue(&self, name: &str) -> Issued {
        let dir = self.dir.path();
        let (key, request, certificate, extensions) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        std::fs::write(
            dir.join(&extensions),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        let subject = format!("/CN={name}");
        openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &request, "-subj", &subject]);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &request,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &certificate,
                "-days",
                "2",
                "-extfile",
                &extensions,
            ],
        );
        Issued { certificate: dir.join(certificate), private_key: dir.join(key) }
    }
}

impl Issued {
    /// dcmtk's `+tls KEY CERT` arguments.
    pub fn dcmtk_args(&self) -> Vec<String> {
        vec!["+tls".into(), self.private_key.display().to_string(), self.certificate.display().to_string()]
    }
}
