//! gRPC control-plane protection on loopback: TLS with client certificates (mTLS), the bearer
//! token, the per-client rate limit, and health staying reachable for probes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use sluice::config::Config;
use sluice::daemon::Daemon;
use sluice_proto::v1::GetInfoRequest;
use sluice_proto::v1::relay_client::RelayClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    dir: PathBuf,
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

fn pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("sluice-pki-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["sip-proxy".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("token"), "s3cret-token\n").unwrap();
    Pki {
        ca_pem: ca.pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
        dir,
    }
}

fn start(rt: &tokio::runtime::Runtime, grpc_extra: &str, ports: (u16, u16)) -> Daemon {
    let toml = format!(
        "[log]\nlevel = \"warn\"\n[media]\nport_min = {}\nport_max = {}\n\
         [[media.interface]]\nname = \"lo\"\naddress = \"127.0.0.1\"\n\
         [rtpproxy]\nlisten = [\"udp:127.0.0.1:0\"]\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [grpc]\nlisten = \"127.0.0.1:0\"\n{grpc_extra}",
        ports.0, ports.1
    );
    let config = Config::from_toml(&toml, "test").expect("config");
    rt.block_on(Daemon::start(&config)).expect("daemon starts")
}

fn tls(pki: &Pki, with_client_cert: bool) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if with_client_cert {
        tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key))
    } else {
        tls
    }
}

async fn get_info(channel: Channel, token: Option<&str>) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(GetInfoRequest {});
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    RelayClient::new(channel)
        .get_info(request)
        .await
        .map(|r| r.into_inner().version)
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn mtls_and_token_reject_unauthenticated_clients() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pki = pki("mtls");
    let daemon = start(
        &rt,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\ntoken_file = \"{}\"\n",
            path(&pki.dir, "server.crt"),
            path(&pki.dir, "server.key"),
            path(&pki.dir, "ca.crt"),
            path(&pki.dir, "token")
        ),
        (44000, 44099),
    );
    let url = format!("https://{}", daemon.grpc_addr());
    rt.block_on(async {
        let endpoint = Channel::from_shared(url.clone()).unwrap();
        // Certificate and token: accepted.
        let channel = endpoint
            .clone()
            .tls_config(tls(&pki, true))
            .unwrap()
            .connect()
            .await;
        let channel = channel.expect("mTLS handshake");
        assert_eq!(
            get_info(channel.clone(), Some("s3cret-token"))
                .await
                .unwrap(),
            env!("CARGO_PKG_VERSION")
        );
        // TLS handshakes run on a thread of their own, not on the session core's runtime.
        let threads = common::thread_names();
        assert!(threads.iter().any(|n| n == "sluice-grpc"), "{threads:?}");
        // Certificate, wrong or no token: UNAUTHENTICATED.
        for token in [None, Some("wrong")] {
            let status = get_info(channel.clone(), token).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
        }
        // No client certificate: the handshake (or the first call) fails.
        let no_cert = async {
            let channel = endpoint
                .clone()
                .tls_config(tls(&pki, false))
                .unwrap()
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            get_info(channel, Some("s3cret-token"))
                .await
                .map_err(|e| e.to_string())
        };
        assert!(
            no_cert.await.is_err(),
            "a client without certificate is refused"
        );
        // Plain text against a TLS listener: refused.
        let plain = Channel::from_shared(format!("http://{}", daemon.grpc_addr()))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .connect()
            .await;
        let plain_ok = match plain {
            Ok(channel) => get_info(channel, Some("s3cret-token")).await.is_ok(),
            Err(_) => false,
        };
        assert!(!plain_ok, "plain-text gRPC is refused");

        // sluicectl with the same credentials, and without the token.
        std::fs::write(pki.dir.join("client.crt"), &pki.client_cert).unwrap();
        std::fs::write(pki.dir.join("client.key"), &pki.client_key).unwrap();
        let dir = pki.dir.clone();
        let ctl = move |token: Option<&'static str>| {
            let dir = dir.clone();
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluicectl"));
                cmd.args(["--endpoint", &url, "--tls-name", "localhost", "-o", "json"])
                    .arg("--ca")
                    .arg(dir.join("ca.crt"))
                    .arg("--cert")
                    .arg(dir.join("client.crt"))
                    .arg("--key")
                    .arg(dir.join("client.key"))
                    .env_remove("SLUICE_TOKEN");
                if let Some(token) = token {
                    cmd.args(["--token", token]);
                }
                cmd.arg("info").output().unwrap()
            })
        };
        let ok = ctl(Some("s3cret-token")).await.unwrap();
        assert!(ok.status.success(), "{ok:?}");
        assert!(String::from_utf8_lossy(&ok.stdout).contains(env!("CARGO_PKG_VERSION")));
        let refused = ctl(None).await.unwrap();
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
            "{refused:?}"
        );
        daemon.shutdown().await.unwrap();
    });
    std::fs::remove_dir_all(&pki.dir).unwrap();
}

#[test]
fn rate_limit_and_open_health() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let daemon = start(
        &rt,
        "token = \"t0k\"\nrequests_per_second = 5\n",
        (44100, 44199),
    );
    let url = format!("http://{}", daemon.grpc_addr());
    rt.block_on(async {
        let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
        let mut ok = 0;
        let mut limited = 0;
        for _ in 0..20 {
            match get_info(channel.clone(), Some("t0k")).await {
                Ok(_) => ok += 1,
                Err(s) if s.code() == tonic::Code::ResourceExhausted => limited += 1,
                Err(s) => panic!("unexpected {s}"),
            }
        }
        assert!(ok >= 5, "the burst is served ({ok})");
        assert!(limited > 0, "the excess is refused with RESOURCE_EXHAUSTED");
        // Health needs no token (load balancer and systemd probes).
        let health = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health without token")
            .into_inner();
        assert_eq!(
            health.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
        daemon.shutdown().await.unwrap();
    });
}

#[test]
fn bad_tls_config_fails_startup_with_the_file_named() {
    let toml = "[grpc]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n\
                [rtpproxy]\nlisten = [\"udp:127.0.0.1:0\"]\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let config = Config::from_toml(toml, "test").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = match rt.block_on(Daemon::start(&config)) {
        Ok(_) => panic!("started without its certificate"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("/nonexistent/c.pem"), "{err}");
    let half = Config::from_toml("[grpc]\ntls_cert = \"/x\"\n", "f").unwrap_err();
    assert_eq!(half.key(), Some("grpc.tls_cert"));
}
