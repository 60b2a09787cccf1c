//! The people's CLI (`cks-controller version|cluster …`) against a controller in front of the
//! simulator: its output, its errors and its exit codes. (Clusters reaching Running with the CLI
//! are shown by `make demo`; here no node joins.)

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::Env;
use sha2::{Digest, Sha256};

async fn cli(env: &Env, keys: &cloudsim::Keys, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_cks-controller"))
        .args(args)
        .env_clear()
        .env("CLOUDSTACK_ENDPOINT", env.endpoint())
        .env("CLOUDSTACK_KEY", &keys.api_key)
        .env("CLOUDSTACK_SECRET", &keys.secret_key)
        .output()
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_and_lists_versions_and_creates_lists_and_refuses_clusters() {
    let env = Env::start().await;
    let (admin, user) = (env.sim.admin_keys().clone(), env.sim.user_keys().clone());
    let iso = env.dir.path().join("cli.iso");
    std::fs::write(&iso, b"an ISO for the CLI").unwrap();
    let checksum = format!(
        "{{SHA-256}}{}",
        hex::encode(Sha256::digest(std::fs::read(&iso).unwrap()))
    );
    let url = format!("file://{}", iso.display());
    let added = cli(
        &env,
        &admin,
        &[
            "version",
            "add",
            "--semver",
            "1.33.1",
            "--url",
            &url,
            "--checksum",
            &checksum,
        ],
    )
    .await;
    assert!(added.status.success(), "{}", text(&added));
    let version: serde_json::Value = serde_json::from_slice(&added.stdout).unwrap();
    let version = version["kubernetessupportedversion"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.wait_iso_ready(&version).await;

    // A user may not add versions: a clear error and exit 1.
    let refused = cli(
        &env,
        &user,
        &["version", "add", "--semver", "1.33.2", "--url", &url],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused).contains("error 432"), "{}", text(&refused));

    let listed = cli(&env, &user, &["version", "list"]).await;
    assert!(listed.status.success());
    assert!(text(&listed).contains("v1.33.1"), "{}", text(&listed));
    assert!(text(&listed).contains("Ready"), "{}", text(&listed));

    let (zone, offering, small) = env.zone_and_offerings().await;
    let create = |offering: String| {
        let (zone, version) = (zone.clone(), version.clone());
        let (env, user) = (&env, &user);
        async move {
            cli(
                env,
                user,
                &[
                    "cluster",
                    "create",
                    "--name",
                    "cli",
                    "--zone",
                    &zone,
                    "--version",
                    &version,
                    "--offering",
                    &offering,
                    "--size",
                    "1",
                    "--no-wait",
                ],
            )
            .await
        }
    };
    // CKS's validation message reaches the person.
    let too_small = create(small).await;
    assert_eq!(too_small.status.code(), Some(1));
    assert!(
        text(&too_small).contains("needs minimum 2 vCPUs and 2048 MB RAM"),
        "{}",
        text(&too_small)
    );
    let created = create(offering).await;
    assert!(created.status.success(), "{}", text(&created));
    let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
    assert_eq!(id.len(), 36, "prints the cluster id: {id}");

    let list = cli(&env, &user, &["cluster", "list"]).await;
    assert!(text(&list).contains(&id), "{}", text(&list));
    let config = cli(&env, &user, &["cluster", "kubeconfig", &id]).await;
    assert_eq!(config.status.code(), Some(1));
    assert!(
        text(&config).contains("Setup is in progress"),
        "{}",
        text(&config)
    );

    // The history names the operation and its first step.
    let history = cli(&env, &user, &["cluster", "events", &id]).await;
    assert!(history.status.success(), "{}", text(&history));
    let history = String::from_utf8_lossy(&history.stdout).into_owned();
    assert!(history.starts_with("TIME"), "{history}");
    assert!(history.contains("create began"), "{history}");

    // Without the secret in the environment it says what to set, and never takes it as an
    // argument.
    let no_secret = tokio::process::Command::new(env!("CARGO_BIN_EXE_cks-controller"))
        .args(["cluster", "list"])
        .env_clear()
        .env("CLOUDSTACK_ENDPOINT", env.endpoint())
        .env("CLOUDSTACK_KEY", &user.api_key)
        .output()
        .await
        .unwrap();
    assert_eq!(no_secret.status.code(), Some(1));
    assert!(text(&no_secret).contains("CLOUDSTACK_SECRET"));
    env.stop().await;
}

#[tokio::test]
async fn serve_refuses_a_bad_configuration_with_exit_64_and_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[api]\nlisten = \"nowhere\"\n").unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cks-controller"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let text = text(&output);
    for needle in ["cloudstack.endpoint", "api_key", "secret_key", "api.listen"] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}
