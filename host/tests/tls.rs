//! TLS to PostgreSQL: with `sslmode=require` the connection is encrypted;
//! with a CA file (`--database-ca`) TLS is required and the server must also
//! prove its name with a certificate from that CA: a server without TLS, a
//! certificate from any other CA, or one for another name is refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use maskpipe::sink::{Database, PgSink};
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};

/// A certificate authority that issues server certificates.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names`, and its key (PEM).
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `contents` where the PostgreSQL server (run as `postgres` when we
/// are root) can read it, private to that user as the server demands of keys.
fn write_for_server(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let status = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// Turns TLS on in a running cluster with this certificate and key, or
/// replaces them (a reload is enough since PostgreSQL 10).
async fn enable_tls(url: &str, dir: &Path, (cert_pem, key_pem): &(String, String)) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    write_for_server(&cert, cert_pem);
    write_for_server(&key, key_pem);
    let admin = query_client(url).await;
    // One statement at a time: ALTER SYSTEM refuses to run in a transaction.
    for statement in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
    let probe = Database::new(&format!("{url}?sslmode=require"), None).unwrap();
    wait_for(
        "PostgreSQL to offer TLS",
        Duration::from_secs(10),
        async || PgSink::connect(&probe).await.is_ok(),
    )
    .await;
}

/// `maskpipe run --drain` expected to fail at startup: its one error line.
async fn startup_error(queue: &str, url: &str, ca: &Path) -> String {
    let mut command = maskpipe();
    command
        .args(["run", "--drain", "--wait-seconds", "0"])
        .args(["--queue", queue, "--database-url", url])
        .arg("--database-ca")
        .arg(ca)
        .arg("--transform")
        .arg(component_path());
    let output = run_with_limit(command, Duration::from_secs(90)).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("maskpipe: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_owned()
}

/// Whether the server sees an encrypted session under `application_name`.
async fn encrypted_sessions(url: &str, application: &str) -> i64 {
    count(
        &query_client(url).await,
        &format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.application_name = '{application}'"
        ),
    )
    .await
}

fn ca_file(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_are_encrypted_and_the_ca_is_enforced() {
    let private = PrivateStack::new(5);
    private.stack("postgres-up");
    let url = private.database_url();
    let tls_dir = private.dir().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let ours = Ca::new("maskpipe test CA");
    enable_tls(&url, &tls_dir, &ours.issue(&["127.0.0.1", "localhost"])).await;
    let our_ca = ca_file(&tls_dir, "ca.pem", &ours.pem());
    let other_ca = ca_file(
        &tls_dir,
        "other-ca.pem",
        &Ca::new("someone else's CA").pem(),
    );

    // Encrypted without a CA (libpq's sslmode=require).
    let require = format!("{url}?sslmode=require&application_name=tls-require");
    let sink = PgSink::connect(&Database::new(&require, None).unwrap())
        .await
        .unwrap();
    sink.ping().await.unwrap();
    assert_eq!(encrypted_sessions(&url, "tls-require").await, 1);

    // Verified against the right CA, with the default sslmode (prefer).
    let verified = format!("{url}?application_name=tls-verified");
    let sink = PgSink::connect(&Database::new(&verified, Some(&our_ca)).unwrap())
        .await
        .unwrap();
    sink.ping().await.unwrap();
    assert_eq!(encrypted_sessions(&url, "tls-verified").await, 1);

    // Refused against another CA.
    let error = PgSink::connect(&Database::new(&verified, Some(&other_ca)).unwrap())
        .await
        .err()
        .expect("a certificate from another CA must be refused");
    let message = format!("{error:#}");
    assert!(message.contains("certificate"), "{message}");

    // The host end to end: the sample through a verified, encrypted connection.
    let queue = fresh_queue().await;
    queue.send(&sample_bodies()).await.unwrap();
    let ca_arg = our_ca.to_str().unwrap();
    let output = drain(&queue, &url, &["--database-ca", ca_arg]).await;
    assert!(output.status.success(), "{output:?}");
    let db = query_client(&url).await;
    assert_eq!(count(&db, "SELECT count(*) FROM user_logins").await, 99);

    // The binary with another CA: exit 1 at startup.
    let empty = fresh_queue().await;
    let line = startup_error(empty.queue_url(), &url, &other_ca).await;
    assert!(line.contains("certificate"), "{line}");

    // A certificate from our CA, but for another name: refused too.
    enable_tls(&url, &tls_dir, &ours.issue(&["db.example.invalid"])).await;
    let strict = Database::new(&url, Some(&our_ca)).unwrap();
    wait_for(
        "PostgreSQL to present the new certificate",
        Duration::from_secs(10),
        async || PgSink::connect(&strict).await.is_err(),
    )
    .await;
    let line = startup_error(empty.queue_url(), &url, &our_ca).await;
    assert!(line.contains("not valid for name"), "{line}");
}

/// A CA means TLS is required: a server that declines TLS is refused, not
/// talked to in plaintext, and `sslmode=disable` beside a CA is refused at
/// startup.
#[tokio::test(flavor = "multi_thread")]
async fn a_ca_refuses_a_server_without_tls() {
    // The shared stack's PostgreSQL has TLS off.
    let database = fresh_database().await;
    let queue = fresh_queue().await;
    let dir = std::env::temp_dir().join(unique_name("maskpipe-tls-off"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ca_file(&dir, "ca.pem", &Ca::new("maskpipe test CA").pem());

    let line = startup_error(queue.queue_url(), &database, &ca).await;
    assert!(line.contains("TLS"), "{line}");
    // Nothing was done over a plaintext session: the schema is not there.
    let db = query_client(&database).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'maskpipe_processed'"
        )
        .await,
        0
    );

    let line = startup_error("q", &format!("{database}?sslmode=disable"), &ca).await;
    assert!(
        line.contains("sslmode=disable") && line.contains("CA requires TLS"),
        "{line}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreadable_ca_file_is_a_startup_error() {
    let error = Database::new(
        "postgres://127.0.0.1/x",
        Some(Path::new("/nonexistent/ca.pem")),
    )
    .expect_err("must fail");
    assert!(
        format!("{error:#}").contains("cannot read the database CA file /nonexistent/ca.pem"),
        "{error:#}"
    );
    let empty = std::env::temp_dir().join(unique_name("empty-ca"));
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let error = Database::new("postgres://127.0.0.1/x", Some(&empty)).expect_err("must fail");
    std::fs::remove_file(&empty).unwrap();
    assert!(format!("{error:#}").contains("no certificate"), "{error:#}");
}
