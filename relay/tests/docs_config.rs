//! The configuration reference stays complete and true:
//!
//! - `docs/configuration.md` has a row for every key the daemon accepts (and none for keys it
//!   does not), whose default cell is the real default;
//! - the Debian package's `/etc/sluice/sluice.toml` (`deploy/debian/sluice.toml`) is exactly
//!   the defaults, shows every key (optional ones commented out), each under a comment line.
//!
//! The key list comes from a configuration with every optional key set, written as struct
//! literals without `..Default::default()`: a new key does not compile here until it is added,
//! and then fails these tests until it is documented.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sluice::config::{
    Config, GrpcConfig, InterfaceConfig, ListenSpec, LogConfig, MediaConfig, MetricsConfig,
    RtpproxyConfig, SessionConfig, XdpConfig, XdpMode,
};
use sluice::session::latch::{LatchMode, Relatch};

const CONFIGURATION_MD: &str = include_str!("../../docs/configuration.md");
const PACKAGED_TOML: &str = include_str!("../../deploy/debian/sluice.toml");

/// A configuration with every key present, optional ones included.
fn every_key() -> Config {
    Config {
        log: LogConfig {
            level: "info".into(),
        },
        media: MediaConfig {
            workers: 0,
            port_min: 30000,
            port_max: 39999,
            quarantine: Duration::from_secs(10),
            dscp: 46,
            recv_buffer: 1,
            interfaces: vec![InterfaceConfig {
                name: "a".into(),
                address: IpAddr::from([127, 0, 0, 1]),
                advertise: Some(IpAddr::from([192, 0, 2, 1])),
                port_min: Some(40000),
                port_max: Some(40009),
            }],
        },
        session: SessionConfig {
            latch: LatchMode::Strict,
            relatch: Relatch::Never,
            relatch_window: Duration::from_secs(1),
            setup_timeout: Duration::from_secs(1),
            media_timeout: Duration::from_secs(1),
            session_ttl: Duration::from_secs(1),
            max_sessions: 1,
        },
        rtpproxy: RtpproxyConfig {
            listen: vec![ListenSpec::Unix(PathBuf::from("/run/x.sock"))],
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            notify_socket: "unix:/run/n.sock".into(),
        },
        grpc: GrpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1)),
            tls_cert: Some("/c".into()),
            tls_key: Some("/k".into()),
            tls_client_ca: Some("/ca".into()),
            token: Some("t".into()),
            token_file: Some("/t".into()),
            requests_per_second: 1,
        },
        metrics: MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2)),
        },
        xdp: XdpConfig {
            mode: XdpMode::Off,
            interfaces: vec!["eth0".into()],
            max_flows: 1,
            enable_forwarding: true,
        },
    }
}

/// Dotted key paths of a TOML document; array-of-tables elements are `name[]`.
fn keys(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                match v {
                    toml::Value::Table(_) => keys(v, &join(k), out),
                    toml::Value::Array(items)
                        if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
                    {
                        for item in items {
                            keys(item, &format!("{}[]", join(k)), out);
                        }
                    }
                    _ => {
                        out.insert(join(k));
                    }
                }
            }
        }
        _ => panic!("not a table: {value:?}"),
    }
}

fn all_keys() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    keys(&toml::Value::try_from(every_key()).unwrap(), "", &mut out);
    out
}

/// (key, default cell) of every row of the "## Keys" table.
fn documented_rows() -> Vec<(String, String)> {
    let section = CONFIGURATION_MD
        .split("\n## Keys")
        .nth(1)
        .expect("docs/configuration.md has a `## Keys` section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").map(str::trim).collect();
            let key = cells[0]
                .trim_start_matches("| ")
                .trim_matches('`')
                .to_owned();
            (key, cells.get(1).copied().unwrap_or_default().to_owned())
        })
        .collect()
}

#[test]
fn every_key_is_documented_and_no_other() {
    let documented: BTreeSet<String> = documented_rows().into_iter().map(|(k, _)| k).collect();
    let keys = all_keys();
    let missing: Vec<_> = keys.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md has no row for {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/configuration.md documents keys the daemon does not accept: {stale:?}"
    );
}

#[test]
fn documented_defaults_are_the_real_defaults() {
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let mut with_default = BTreeSet::new();
    keys(&defaults, "", &mut with_default);
    let mut interface = String::new();
    for (key, cell) in documented_rows() {
        if let Some(field) = key.strip_prefix("media.interface[].") {
            match field {
                "port_min" | "port_max" => assert_eq!(
                    cell,
                    format!("`media.{field}`"),
                    "{key}: the per-interface range defaults to the global one"
                ),
                _ if !with_default.contains(&key) => {
                    assert_eq!(cell, "unset", "{key} has no default");
                }
                _ => interface.push_str(&format!("{field} = {}\n", cell.trim_matches('`'))),
            }
            continue;
        }
        if !with_default.contains(&key) {
            assert_eq!(
                cell, "unset",
                "{key} has no default: its cell must say `unset`"
            );
            continue;
        }
        let (section, name) = key.split_once('.').unwrap();
        let value = cell
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .unwrap_or_else(|| panic!("{key}: default cell {cell:?} is not a `value`"));
        let text = format!("[{section}]\n{name} = {value}\n");
        let parsed = Config::from_toml(&text, "docs")
            .unwrap_or_else(|e| panic!("{key}: documented default {value} does not parse: {e}"));
        assert_eq!(
            parsed,
            Config::default(),
            "{key}: documented default {value} is not the default"
        );
    }
    let text = format!("[[media.interface]]\n{interface}");
    let parsed = Config::from_toml(&text, "docs").unwrap();
    assert_eq!(
        parsed.media.interfaces,
        Config::default().media.interfaces,
        "documented media.interface defaults:\n{text}"
    );
}

/// `# key = value` lines uncommented; prose comments stay comments.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match commented_key(line) {
            Some(_) => line.trim_start_matches('#').trim_start().to_owned(),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The key of a `key = value` or `# key = value` line.
fn commented_key(line: &str) -> Option<&str> {
    let (key, _) = line.strip_prefix('#')?.trim_start().split_once(" = ")?;
    key.chars()
        .all(|c| c.is_ascii_lowercase() || c == '_')
        .then_some(key)
}

fn key_line(line: &str) -> bool {
    commented_key(line).is_some()
        || line
            .split_once(" = ")
            .is_some_and(|(k, _)| !k.starts_with('#') && !k.is_empty())
}

#[test]
fn packaged_config_is_the_defaults() {
    let parsed = Config::from_toml(PACKAGED_TOML, "deploy/debian/sluice.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed, Config::default());
}

#[test]
fn packaged_config_shows_every_key_with_a_comment() {
    let text = uncommented(PACKAGED_TOML);
    let value: toml::Value = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("the commented-out keys are not valid TOML: {e}\n{text}"));
    let mut shown = BTreeSet::new();
    keys(&value, "", &mut shown);
    assert_eq!(shown, all_keys(), "keys shown in deploy/debian/sluice.toml");

    let lines: Vec<&str> = PACKAGED_TOML.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if key_line(line) {
            let above = i.checked_sub(1).map(|j| lines[j]).unwrap_or_default();
            assert!(
                above.starts_with('#') && !key_line(above),
                "deploy/debian/sluice.toml:{}: `{line}` needs a one-line comment above it",
                i + 1
            );
        }
    }
}

#[test]
fn every_key_finds_what_a_new_key_would_add() {
    // The flattening itself: a nested key and an array-of-tables key.
    let keys = all_keys();
    assert!(keys.contains("media.interface[].advertise"), "{keys:?}");
    assert!(keys.contains("grpc.token_file"), "{keys:?}");
    assert!(keys.contains("rtpproxy.listen"), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.starts_with("media.interface.")),
        "{keys:?}"
    );
}
