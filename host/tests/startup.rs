//! Bad configuration and unreachable dependencies: one clear error line and a
//! non-zero exit, never a panic, never a secret in the message.

mod common;

use std::time::Duration;

use common::*;

async fn run_expecting_failure(mut command: tokio::process::Command) -> String {
    command.kill_on_drop(true);
    let output = run_with_limit(command, Duration::from_secs(90)).await;
    assert!(!output.status.success(), "expected a failure");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let error_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("maskpipe: error:"))
        .collect();
    assert_eq!(error_lines.len(), 1, "expected one error line:\n{stderr}");
    error_lines[0].to_owned()
}

async fn run_command(queue: &str, database: &str) -> tokio::process::Command {
    let mut command = maskpipe();
    command
        .args(["run", "--drain", "--wait-seconds", "0"])
        .args(["--queue", queue, "--database-url", database])
        .arg("--transform")
        .arg(component_path());
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_key_is_a_clear_startup_error() {
    let mut command = run_command("q", "postgres://127.0.0.1/x").await;
    command.env_remove("MASKPIPE_MASTER_KEY");
    let line = run_expecting_failure(command).await;
    assert!(line.contains("MASKPIPE_MASTER_KEY"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_length_key_is_a_clear_startup_error_that_hides_the_key() {
    let mut command = run_command("q", "postgres://127.0.0.1/x").await;
    command.env("MASKPIPE_MASTER_KEY", "c0ffee15c0ffee15");
    let line = run_expecting_failure(command).await;
    assert!(line.contains("32 bytes, got 8"), "{line}");
    assert!(!line.contains("c0ffee15"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_a_clear_startup_error() {
    let queue = fresh_queue().await;
    let command = run_command(
        queue.queue_url(),
        "postgres://app:hunter2@127.0.0.1:1/nowhere",
    )
    .await;
    let line = run_expecting_failure(command).await;
    assert!(
        line.contains("cannot connect to PostgreSQL at postgres://app:***@127.0.0.1:1/nowhere"),
        "{line}"
    );
    assert!(!line.contains("hunter2"), "password leaked: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_queue_is_a_clear_startup_error() {
    let database = fresh_database().await;
    let mut command = run_command("login-queue", &database).await;
    command.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    let line = run_expecting_failure(command).await;
    assert!(
        line.contains("cannot find SQS queue \"login-queue\""),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_component_is_a_clear_startup_error() {
    let mut command = maskpipe();
    command.args([
        "run",
        "--queue",
        "q",
        "--database-url",
        "postgres://x",
        "--transform",
        "/nonexistent/t.wasm",
    ]);
    let line = run_expecting_failure(command).await;
    assert!(
        line.contains("cannot read transform component /nonexistent/t.wasm"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_storing_the_raw_ip_is_a_clear_startup_error() {
    // No vectors beside the fixture: the built-in canary refuses it before
    // any queue or database is touched.
    let leaky = fixture_path("fixture_leaky");
    assert!(!maskpipe::swap::vectors_path(&leaky).exists());
    let mut command = maskpipe();
    command
        .args(["run", "--queue", "q", "--database-url", "postgres://x"])
        .arg("--transform")
        .arg(&leaky);
    let line = run_expecting_failure(command).await;
    assert!(
        line.contains("failed validation")
            && line.contains("stores the message's raw `ip` unprotected in `masked_ip`"),
        "{line}"
    );
    // The error names the field, never a value from the canary set.
    assert!(!line.contains("199.172.111.135"), "{line}");
}
