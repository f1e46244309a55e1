//! Bad configuration and unreachable dependencies: one clear error line and a
//! non-zero exit, never a panic, never a secret in the message.

mod common;

use std::time::Duration;

use common::*;

async fn run_expecting_failure(command: tokio::process::Command) -> String {
    run_expecting_failure_with_output(command).await.0
}

/// The one error line, and everything the run wrote (stdout, then stderr).
async fn run_expecting_failure_with_output(
    mut command: tokio::process::Command,
) -> (String, String) {
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
    let everything = format!("{}{stderr}", String::from_utf8_lossy(&output.stdout));
    (error_lines[0].to_owned(), strip_colours(&everything))
}

/// Text logs without their ANSI colour codes (a password must not hide
/// behind one either way).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("\x1b[") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        rest = match after.find(|c: char| c.is_ascii_alphabetic()) {
            Some(end) => &after[end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
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

/// Every form a password takes in a connection string, against a port
/// nothing listens on, at the most verbose logging: the password is in no
/// output (stdout, the "starting" line, the error line or any other log).
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_a_clear_startup_error_that_hides_the_password() {
    let queue = fresh_queue().await;
    for (url, shown) in [
        (
            "postgres://app:hunter2@127.0.0.1:1/nowhere",
            Some("postgres://app:***@127.0.0.1:1/nowhere"),
        ),
        (
            "postgres://127.0.0.1:1/nowhere?user=app&password=hunter2",
            Some("postgres://127.0.0.1:1/nowhere?user=app&password=***"),
        ),
        (
            "postgresql://app:hunter2@127.0.0.1:1/nowhere?pass%77ord=hunter2&application_name=t",
            Some("postgresql://app:***@127.0.0.1:1/nowhere?pass%77ord=***&application_name=t"),
        ),
        (
            "host=127.0.0.1 port=1 user=app password='hunter2 hunter2' dbname=nowhere",
            Some("host=127.0.0.1 port=1 user=app password=*** dbname=nowhere"),
        ),
        // Refused by the driver before any connection: its parse errors
        // quote the input, and a stray word may be part of the password.
        ("host=127.0.0.1 port=1 password=hunter2 hunter2", None),
        ("postgres://127.0.0.1:1/nowhere?sslpassword=hunter2", None),
    ] {
        let mut command = run_command(queue.queue_url(), url).await;
        command.args(["--log", "trace"]);
        let (line, output) = run_expecting_failure_with_output(command).await;
        match shown {
            Some(shown) => {
                assert!(
                    line.contains(&format!("cannot connect to PostgreSQL at {shown}:")),
                    "{line}"
                );
                // The INFO line that names the database ran too.
                assert!(output.contains(&format!("database={shown}")), "{output}");
            }
            None => assert!(
                line.contains("is not a valid PostgreSQL connection string"),
                "{line}"
            ),
        }
        assert!(!output.contains("hunter2"), "password leaked:\n{output}");
    }
}

/// A base64 key pasted into MASKPIPE_RETIRED_KEYS without its `ID=`: its
/// padding `=` once made 43 key characters the "id", echoed in the error.
#[tokio::test(flavor = "multi_thread")]
async fn a_retired_key_without_its_id_is_named_by_position_and_never_echoed() {
    const KEY: &str = "ssJnOKL5NmWjjgO+z2Y7g2DoI4cMY+5kJO5F9ZDvsXQ=";
    let mut command = run_command("q", "postgres://127.0.0.1/x").await;
    command
        .env("MASKPIPE_RETIRED_KEYS", KEY)
        .args(["--log", "trace"]);
    let (line, output) = run_expecting_failure_with_output(command).await;
    assert!(
        line.contains("MASKPIPE_RETIRED_KEYS is unusable: retired key 1 is not of the form ID=KEY"),
        "{line}"
    );
    for window in KEY.as_bytes().windows(8) {
        let window = std::str::from_utf8(window).unwrap();
        assert!(
            !output.contains(window),
            "key material {window:?} in:\n{output}"
        );
    }
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
            && line
                .contains("stores the message's raw `ip` unprotected in `user_logins.masked_ip`"),
        "{line}"
    );
    // The error names the field, never a value from the canary set.
    assert!(!line.contains("199.172.111.135"), "{line}");
}

/// stderr's lines apart from info logs: what an operator has to read.
fn not_info(stderr: &str) -> Vec<String> {
    strip_colours(stderr)
        .lines()
        .filter(|line| !line.contains(" INFO "))
        .map(str::to_owned)
        .collect()
}

/// A bad flag or a bad environment value is bad configuration like any
/// other: one `maskpipe: error:` line and exit code 1 (clap alone would
/// print several lines and exit 2).
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_flag_or_env_value_is_one_error_line_and_exit_code_1() {
    let mut bad_env = run_command("q", "postgres://127.0.0.1:9/x").await;
    bad_env.env("MASKPIPE_POLLERS", "lots");
    let mut bad_flag = run_command("q", "postgres://127.0.0.1:9/x").await;
    bad_flag.arg("--no-such-flag");
    let mut missing_command = maskpipe();
    missing_command.arg("--log").arg("info");
    for (command, expected) in [
        (bad_env, "'lots'"),
        (bad_flag, "--no-such-flag"),
        (missing_command, "subcommand"),
    ] {
        let (line, everything) = run_expecting_failure_with_output(command).await;
        assert!(line.contains(expected), "{line}");
        assert_eq!(everything.trim_end(), line, "more than the error line");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn help_and_version_still_exit_0() {
    for args in [["--help"], ["--version"]] {
        let mut command = maskpipe();
        command.args(args);
        let output = run_with_limit(command, Duration::from_secs(30)).await;
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(!output.stdout.is_empty(), "{args:?}");
    }
}

/// No AWS configuration at all (no region, no credentials, no profile, an
/// instance-metadata service that refuses): the error line is all there is,
/// not preceded by the AWS SDK's warnings about each provider it tried.
#[tokio::test(flavor = "multi_thread")]
async fn an_unconfigured_aws_setup_is_one_error_line_without_sdk_warnings() {
    let home = temp_dir("no-aws-home");
    let mut command = run_command("login-queue", "postgres://127.0.0.1:9/x").await;
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
        .env("HOME", &home)
        // Nothing listens there: metadata fails at once on any machine,
        // as it does on one with IMDS disabled (and warns the same way).
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv4");
    let (line, everything) = run_expecting_failure_with_output(command).await;
    assert!(line.contains("cannot find SQS queue"), "{line}");
    assert_eq!(not_info(&everything), vec![line.clone()], "{everything}");
}

/// `reveal` without a key names the key the values need, and does not
/// advise generating one (a new key opens nothing).
#[tokio::test(flavor = "multi_thread")]
async fn reveal_without_a_key_names_the_key_it_needs() {
    for values in [vec!["mp2.demo1.AAAA"], vec![]] {
        let mut command = maskpipe();
        command
            .env_remove("MASKPIPE_MASTER_KEY")
            .env_remove("MASKPIPE_KEY_ID")
            .args(["reveal", "--field", "ip"])
            .args(&values)
            .stdin(std::process::Stdio::null());
        let line = run_expecting_failure(command).await;
        assert!(!line.contains("keygen"), "{line}");
        assert!(line.contains("MASKPIPE_MASTER_KEY"), "{line}");
        if !values.is_empty() {
            assert!(line.contains("key id demo1"), "{line}");
            assert!(line.contains("MASKPIPE_KEY_ID=demo1"), "{line}");
        }
    }
}
