//! A real SMTP server for the tests: `tests/smtp/capture.py` on aiosmtpd (Debian's
//! python3-aiosmtpd; `scripts/test.sh` installs it). It saves every accepted message;
//! this side reads them back as parsed MIME.

use mail_parser::MessageParser;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Plain,
    Starttls,
    Implicit,
}

#[derive(Clone)]
pub struct SmtpOptions {
    /// Recipients starting with one of these are refused with 550 at RCPT.
    pub reject: Vec<String>,
    pub tls: Tls,
    /// `(certificate, key)` PEM files for TLS.
    pub cert: Option<(PathBuf, PathBuf)>,
    pub auth: Option<(String, String)>,
    /// A stalled server: every RCPT waits until [`SmtpServer::release`].
    pub stalled: bool,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        Self {
            reject: Vec::new(),
            tls: Tls::Plain,
            cert: None,
            auth: None,
            stalled: false,
        }
    }
}

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub rcpt_tos: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub message_id: String,
    pub to_header: String,
    pub raw: String,
}

impl Received {
    fn parse(record: &serde_json::Value) -> Self {
        let raw = record["data"].as_str().unwrap().to_owned();
        let msg = MessageParser::default().parse(raw.as_bytes()).unwrap();
        let to_header = msg
            .to()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.address().map(str::to_owned))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        Self {
            rcpt_tos: record["rcpt_tos"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect(),
            subject: msg.subject().unwrap_or_default().to_owned(),
            text: msg.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
            html: msg.body_html(0).map(|t| t.into_owned()).unwrap_or_default(),
            message_id: msg.message_id().unwrap_or_default().to_owned(),
            to_header,
            raw,
        }
    }

    /// The HTML part with entities decoded, to look for text in it.
    pub fn html_text(&self) -> String {
        self.html
            .replace("&#x2f;", "/")
            .replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }

    pub fn to(&self) -> &str {
        assert_eq!(self.rcpt_tos.len(), 1, "one recipient per message");
        &self.rcpt_tos[0]
    }
}

pub struct SmtpServer {
    pub port: u16,
    out: tempfile::TempDir,
    opts: SmtpOptions,
    child: Option<Child>,
}

impl SmtpServer {
    /// A running server on a free port.
    pub async fn start(opts: SmtpOptions) -> Self {
        let mut s = Self::down(opts);
        s.up().await;
        s
    }

    /// A server whose port is chosen but that does not run yet: SMTP is down.
    pub fn down(opts: SmtpOptions) -> Self {
        Self {
            port: crate::helpers::free_port(),
            out: tempfile::tempdir().unwrap(),
            opts,
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Starts the server and returns once it accepts connections (it says READY).
    pub async fn up(&mut self) {
        assert!(self.child.is_none(), "already running");
        let python = std::env::var("TOKENGATE_TEST_SMTP_PYTHON")
            .unwrap_or_else(|_| "/usr/bin/python3".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/capture.py");
        let mut cmd = Command::new(&python);
        cmd.arg(script)
            .args(["--port", &self.port.to_string()])
            .arg("--out")
            .arg(self.out.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for r in &self.opts.reject {
            cmd.args(["--reject", r]);
        }
        match self.opts.tls {
            Tls::Plain => {}
            Tls::Starttls => {
                cmd.args(["--tls", "starttls"]);
            }
            Tls::Implicit => {
                cmd.args(["--tls", "implicit"]);
            }
        }
        if let Some((cert, key)) = &self.opts.cert {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some((user, pass)) = &self.opts.auth {
            cmd.args(["--auth", &format!("{user}:{pass}")]);
        }
        if self.opts.stalled {
            cmd.arg("--hold-until").arg(self.gate());
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {python} for the SMTP server (scripts/test.sh installs python3-aiosmtpd): {e}")
        });
        let stdout = child.stdout.take().unwrap();
        // Read off the test thread: the app under test serves on it.
        let line = actix_web::rt::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            line.trim(),
            "READY",
            "SMTP server did not start (is python3-aiosmtpd installed?)"
        );
        self.child = Some(child);
    }

    /// Stops the server; the messages it received stay readable.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn gate(&self) -> PathBuf {
        self.out.path().join("release")
    }

    /// How many RCPT commands a stalled server has held so far.
    pub fn held(&self) -> usize {
        std::fs::read_dir(self.out.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("release.held-"))
            })
            .count()
    }

    /// Lets a stalled server answer again.
    pub fn release(&self) {
        std::fs::write(self.gate(), b"").unwrap();
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.out.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                let record: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                Received::parse(&record)
            })
            .collect()
    }

    /// Waits (bounded) until at least `n` messages arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        crate::helpers::wait_until(Duration::from_secs(30), || {
            let count = self.messages().len();
            async move { count >= n }
        })
        .await;
        self.messages()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}
