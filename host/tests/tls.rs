//! TLS to PostgreSQL: with `sslmode=require` the connection is encrypted;
//! with a CA file (`--database-ca`) the server must also prove its name with a
//! certificate from that CA, and a certificate from any other CA is refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use maskpipe::sink::{Database, PgSink};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA, and a server certificate for 127.0.0.1 signed by it.
struct Pki {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
}

fn pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca_cert, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
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

/// Turns TLS on in a running cluster (a reload is enough since PostgreSQL 10).
async fn enable_tls(url: &str, dir: &Path, pki: &Pki) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    write_for_server(&cert, &pki.server_pem);
    write_for_server(&key, &pki.server_key_pem);
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
    let ours = pki("maskpipe test CA");
    enable_tls(&url, &tls_dir, &ours).await;
    let our_ca = ca_file(&tls_dir, "ca.pem", &ours.ca_pem);
    let other_ca = ca_file(&tls_dir, "other-ca.pem", &pki("someone else's CA").ca_pem);

    // Encrypted without a CA (libpq's sslmode=require).
    let require = format!("{url}?sslmode=require&application_name=tls-require");
    let sink = PgSink::connect(&Database::new(&require, None).unwrap())
        .await
        .unwrap();
    sink.ping().await.unwrap();
    assert_eq!(encrypted_sessions(&url, "tls-require").await, 1);

    // Verified against the right CA.
    let verified = format!("{url}?sslmode=require&application_name=tls-verified");
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
    let output = drain(
        &queue,
        &format!("{url}?sslmode=require"),
        &["--database-ca", ca_arg],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let db = query_client(&url).await;
    assert_eq!(count(&db, "SELECT count(*) FROM user_logins").await, 99);
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
