//! The real `ocha-server` binary: configuration, the `token` command,
//! logging and SIGTERM.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;

use common::*;
use http::StatusCode;

/// Runs `ocha-server token ...` and returns (exit code, stdout, stderr).
async fn token_command(args: &[&str], secret: Option<&str>) -> (i32, String, String) {
    let mut command = binary();
    command.arg("token").args(args).stdout(Stdio::piped());
    if let Some(secret) = secret {
        command.env("JWT_SECRET", secret);
    }
    let output = command.output().await.expect("run ocha-server token");
    (
        output.status.code().expect("an exit code"),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

// The default port, 5001, is left to the `config` unit tests: something
// else on the machine may hold it.
#[tokio::test]
async fn serves_on_every_interface_by_default() {
    let dir = TempDir::new("default-host");
    let (mut child, addr, _) = start(server_command(&dir).env_remove("HOST")).await;
    assert_eq!(addr.ip(), Ipv4Addr::UNSPECIFIED);
    assert_healthy(SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))).await;
    stop_binary(&mut child).await;
}

#[tokio::test]
async fn serves_on_the_configured_address() {
    let dir = TempDir::new("address");
    let (mut child, addr) = start_binary(&dir).await;
    assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST);
    // The log gives the port bound, not the 0 asked for.
    assert_ne!(addr.port(), 0);
    assert_healthy(addr).await;
    // WebSocket clients join on the same port.
    drop(ws_connect(addr).await);
    stop_binary(&mut child).await;
}

#[tokio::test]
async fn ws_max_connections_refuses_upgrades_past_the_limit_with_503() {
    let dir = TempDir::new("max-connections");
    let (mut child, addr, _) = start(server_command(&dir).env("WS_MAX_CONNECTIONS", "1")).await;

    let first = ws_connect(addr).await;
    match tokio_tungstenite::connect_async(format!("ws://{addr}/")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        other => panic!("expected a 503 refusal, got {other:?}"),
    }
    drop(first);
    stop_binary(&mut child).await;
}

#[tokio::test]
async fn sigterm_closes_every_websocket_with_1001_and_exits_0() {
    let dir = TempDir::new("sigterm");
    let (mut child, addr) = start_binary(&dir).await;
    let mut clients = [
        ws_connect(addr).await,
        ws_connect(addr).await,
        ws_connect(addr).await,
    ];

    sigterm(&child);
    for client in &mut clients {
        assert_eq!(close_code(client).await, 1001);
    }
    let status = exit_status(&mut child).await;
    assert_eq!(status.code(), Some(0), "{}", stderr(&mut child).await);
}

#[tokio::test]
async fn the_token_command_prints_tokens_the_server_accepts() {
    let (code, admin, _) = token_command(&["--role", "admin", "--ttl", "1h"], Some(SECRET)).await;
    assert_eq!(code, 0);
    let admin = admin.lines().last().expect("a token line").to_owned();
    let (code, user, _) = token_command(&["--role=user", "--id", "u1"], Some(SECRET)).await;
    assert_eq!(code, 0);
    let user = user.lines().last().unwrap().to_owned();

    let dir = TempDir::new("token");
    let (mut child, addr) = start_binary(&dir).await;

    let created = post_product(addr, Some(&admin), &product_body(1)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    post_product(addr, Some(&user), &product_body(2))
        .await
        .assert_json(403, r#"{"message":"Access restricted to administrators"}"#);
    stop_binary(&mut child).await;
}

#[tokio::test]
async fn the_token_command_reports_usage_and_configuration_errors() {
    for args in [
        &[][..],
        &["--role"],
        &["--role", "admin", "--ttl", "7w"],
        &["--bogus"],
    ] {
        let (code, stdout, stderr) = token_command(args, Some(SECRET)).await;
        assert_eq!(code, 2, "{args:?}");
        assert!(stdout.is_empty());
        assert!(stderr.contains("Usage:"), "{stderr}");
    }
    let (code, _, stderr) = token_command(&["--role", "admin"], None).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("JWT_SECRET must be set"), "{stderr}");

    let help = binary()
        .arg("--help")
        .stdout(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8(help.stdout)
        .unwrap()
        .contains("ocha-server token --role ROLE"));
}

#[tokio::test]
async fn bad_configuration_fails_with_a_clear_message() {
    let dir = TempDir::new("bad-config");
    let database = format!("sqlite:{}", dir.database().display());
    let missing_dir = format!("sqlite:{}", dir.path().join("no/such/dir/x.db").display());
    for (vars, message) in [
        (
            vec![("PORT", "abc")],
            r#"PORT must be a port number from 0 to 65535, got "abc""#,
        ),
        (vec![("PORT", "65536")], "PORT must be a port number"),
        (vec![("HOST", "example.com")], "HOST must be an IP address"),
        (
            vec![("DATABASE_URL", "mysql://db/ocha")],
            "DATABASE_URL must be sqlite:<path>, sqlite::memory: or postgres://",
        ),
        (
            // Nothing listens on port 1.
            vec![("DATABASE_URL", "postgres://ocha:s3cret@127.0.0.1:1/ocha")],
            "cannot open the database: Postgres: error connecting to server: Connection refused",
        ),
        (
            vec![("DATABASE_URL", missing_dir.as_str())],
            "cannot open the database",
        ),
        (
            vec![("REDIS_URL", "redis://127.0.0.1:6379")],
            "REDIS_URL shares events between nodes, which must share their database",
        ),
        (
            vec![("REDIS_URL", "127.0.0.1:6379")],
            r#"REDIS_URL must be redis://HOST:PORT, got "127.0.0.1:6379""#,
        ),
        (
            vec![("EVENT_HISTORY", "many")],
            r#"EVENT_HISTORY must be a whole number of events, got "many""#,
        ),
        (
            vec![("WS_OUTBOUND_CAPACITY", "zero")],
            r#"WS_OUTBOUND_CAPACITY must be a positive integer, got "zero""#,
        ),
    ] {
        // Should a case start by mistake, it listens where it harms nothing.
        let mut command = binary();
        command
            .env("DATABASE_URL", &database)
            .env("PORT", "0")
            .env("HOST", "127.0.0.1");
        for (name, value) in &vars {
            command.env(name, value);
        }
        let output = command.output().await.unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(1), "{vars:?}: {stderr}");
        assert!(stderr.contains(message), "{vars:?}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{vars:?}: {stderr}");
    }
}

#[tokio::test]
async fn without_a_secret_it_logs_a_working_admin_token_and_every_request() {
    let dir = TempDir::new("random-secret");
    let mut child = server_command(&dir)
        .env_remove("JWT_SECRET")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = Log::of(&mut child);

    let warning = log.line("admin_token=").await;
    assert!(warning.contains("WARN"), "{warning}");
    let token: String = warning
        .split("admin_token=")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    let startup = log.line("ocha-server listening").await;
    let addr = logged_addr(&startup);
    assert_eq!(addr.ip(), Ipv4Addr::LOCALHOST, "{startup}");
    assert!(
        startup.contains(&format!("database=sqlite:{}", dir.database().display())),
        "{startup}"
    );

    let created = post_product(addr, Some(&token), &product_body(1)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let request = log.line("path=/api/v1/products").await;
    for field in ["method=POST", "status=201", "elapsed="] {
        assert!(request.contains(field), "{request}");
    }

    sigterm(&child);
    log.line("shutdown complete").await;
    assert_eq!(exit_status(&mut child).await.code(), Some(0));
}

#[tokio::test]
async fn a_short_jwt_secret_is_warned_about_but_used() {
    let dir = TempDir::new("short-secret");
    // The tests' shared secret is 17 bytes: short.
    let mut child = server_command(&dir).stdout(Stdio::piped()).spawn().unwrap();
    let mut log = Log::of(&mut child);
    let warning = log.line("JWT_SECRET is shorter than 32 bytes").await;
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("bytes=17"), "{warning}");
    assert!(!warning.contains(SECRET), "{warning}");
    let addr = logged_addr(&log.line("ocha-server listening").await);
    // Tokens signed with it still work.
    let created = post_product(addr, Some(&admin_token()), &product_body(1)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    stop_binary(&mut child).await;

    let mut child = server_command(&dir)
        .env("JWT_SECRET", "a".repeat(32))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = Log::of(&mut child);
    loop {
        // Every line contains "": this reads the next one.
        let line = log.line("").await;
        assert!(!line.contains("JWT_SECRET"), "{line}");
        if line.contains("ocha-server listening") {
            break;
        }
    }
    stop_binary(&mut child).await;
}
