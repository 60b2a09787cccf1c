//! The controller's API over HTTPS: the certificate from the configuration, the unmodified
//! Python `cs` client trusting it through its `verify` setting, and a new certificate taken on
//! `SIGHUP`.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Output;

use cks_controller::listen::TlsFiles;
use cks_controller::server;
use cloudsim::{SimConfig, Simulator};
use tokio::process::Command;

fn write_cert(dir: &Path, name: &str) -> (TlsFiles, String) {
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let files = TlsFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.cert, generated.cert.pem()).unwrap();
    std::fs::write(&files.key, generated.signing_key.serialize_pem()).unwrap();
    (files, generated.cert.pem())
}

async fn cs(
    bin: &Path,
    home: &Path,
    endpoint: &str,
    keys: &cloudsim::Keys,
    ca: Option<&Path>,
) -> Output {
    let mut command = Command::new(bin);
    command
        .arg("listZones")
        .env_clear()
        .env("HOME", home)
        .env("PATH", "/usr/bin:/bin")
        .env("CLOUDSTACK_ENDPOINT", endpoint)
        .env("CLOUDSTACK_KEY", &keys.api_key)
        .env("CLOUDSTACK_SECRET", &keys.secret_key)
        .env("CLOUDSTACK_TIMEOUT", "60")
        .kill_on_drop(true);
    if let Some(ca) = ca {
        command.env("CLOUDSTACK_VERIFY", ca);
    }
    tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .expect("cs timed out")
        .expect("run cs")
}

/// GET over HTTPS on a new connection, trusting only `ca_pem`.
async fn https_get(url: &str, ca_pem: &str) -> Result<reqwest::StatusCode, reqwest::Error> {
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes())?])
        .build()?;
    Ok(client.get(url).send().await?.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_and_takes_a_new_certificate_on_sighup() {
    let sim = Simulator::start(SimConfig::for_tests()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (files, first_pem) = write_cert(dir.path(), "api");
    let mut config = common::controller_config(&sim, dir.path().join("controller"));
    config.api_tls = Some(files.clone());
    let controller = server::start(&config).await.unwrap();
    let endpoint = format!("https://{}/client/api", controller.api_addr);

    // `cs` trusts the controller's certificate through its `verify` setting, and only then.
    let bin = cks_fixtures::tools::cs_binary(dir.path()).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &first_pem).unwrap();
    let trusted = cs(&bin, dir.path(), &endpoint, sim.user_keys(), Some(&ca)).await;
    let text = String::from_utf8_lossy(&trusted.stdout);
    assert!(
        trusted.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(text.contains("\"zone\""), "{text}");
    let untrusted = cs(&bin, dir.path(), &endpoint, sim.user_keys(), None).await;
    assert!(
        !untrusted.status.success(),
        "a certificate nobody trusts was accepted"
    );

    // New files, then SIGHUP: new connections get the new certificate.
    let (next, next_pem) = write_cert(dir.path(), "next");
    std::fs::rename(&next.cert, &files.cert).unwrap();
    std::fs::rename(&next.key, &files.key).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut switched = false;
    for _ in 0..200 {
        if https_get(&endpoint, &next_pem).await.is_ok() {
            switched = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(switched, "the new certificate was not taken");
    assert!(
        https_get(&endpoint, &first_pem).await.is_err(),
        "the old one is still served"
    );
    controller.stop().await;
}

#[tokio::test]
async fn plain_http_on_a_wildcard_address_is_refused_at_start() {
    let sim = Simulator::start(SimConfig::for_tests()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::controller_config(&sim, dir.path().join("controller"));
    config.api_listen = "0.0.0.0:0".parse().unwrap();
    let Err(err) = server::start(&config).await else {
        panic!("plain HTTP on 0.0.0.0 was served");
    };
    assert!(err.to_string().contains("api.allow_plain_http"), "{err}");
    config.api_allow_plain_http = true;
    server::start(&config).await.unwrap().stop().await;
}

/// The shipped binary: HTTPS from files named in the environment, and `SIGHUP` (what
/// `systemctl reload` sends) reloads them without stopping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_its_certificate_on_sighup_and_keeps_serving() {
    let sim = Simulator::start(SimConfig::for_tests()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (files, first_pem) = write_cert(dir.path(), "api");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let keys = sim.admin_keys();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cks-controller"))
        .arg("serve")
        .env_clear()
        .env("CKS_CLOUDSTACK_ENDPOINT", sim.endpoint())
        .env("CKS_CLOUDSTACK_API_KEY", &keys.api_key)
        .env("CKS_CLOUDSTACK_SECRET_KEY", &keys.secret_key)
        .env("CKS_API_LISTEN", format!("127.0.0.1:{port}"))
        .env("CKS_AGENTS_LISTEN", "127.0.0.1:0")
        .env("CKS_DATA_DIR", dir.path().join("data"))
        .env("CKS_API_TLS_CERT_FILE", &files.cert)
        .env("CKS_API_TLS_KEY_FILE", &files.key)
        .stderr(std::fs::File::create(dir.path().join("controller.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let endpoint = format!("https://127.0.0.1:{port}/client/api");
    let answers = |pem: String| {
        let endpoint = endpoint.clone();
        async move {
            for _ in 0..400 {
                if https_get(&endpoint, &pem).await.is_ok() {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            false
        }
    };
    assert!(
        answers(first_pem.clone()).await,
        "the controller never answered over HTTPS"
    );

    let (next, next_pem) = write_cert(dir.path(), "next");
    std::fs::rename(&next.cert, &files.cert).unwrap();
    std::fs::rename(&next.key, &files.key).unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(answers(next_pem).await, "the new certificate was not taken");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP stopped the controller"
    );
    assert!(https_get(&endpoint, &first_pem).await.is_err());

    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
        .await
        .expect("the controller did not stop")
        .unwrap();
    assert!(status.success(), "{status}");
}
