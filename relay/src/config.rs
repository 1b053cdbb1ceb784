//! TOML configuration: embedded defaults, strict parsing (unknown keys are errors) and validation.
//! Every error names the file, the key and the line it is on.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::session::latch::{LatchMode, Relatch};

/// The embedded default configuration, as printed by `sluice --print-default-config`.
pub const DEFAULT_TOML: &str = include_str!("../sluice.default.toml");

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub log: LogConfig,
    pub media: MediaConfig,
    pub session: SessionConfig,
    pub rtpproxy: RtpproxyConfig,
    pub grpc: GrpcConfig,
    pub metrics: MetricsConfig,
    pub xdp: XdpConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing-subscriber `EnvFilter` directive.
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Datapath worker threads; 0 means one per CPU core.
    pub workers: usize,
    pub port_min: u16,
    pub port_max: u16,
    /// How long a freed port pair waits before reuse.
    #[serde(with = "humantime_serde")]
    pub quarantine: Duration,
    /// DSCP of media packets sent (46 = EF).
    pub dscp: u8,
    /// SO_RCVBUF of each media socket, bytes (capped by net.core.rmem_max).
    pub recv_buffer: usize,
    #[serde(rename = "interface")]
    pub interfaces: Vec<InterfaceConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    pub latch: LatchMode,
    pub relatch: Relatch,
    /// How long an offer/answer reopens latching (`relatch = "on-update"`).
    #[serde(with = "humantime_serde")]
    pub relatch_window: Duration,
    /// An offer never answered ends after this.
    #[serde(with = "humantime_serde")]
    pub setup_timeout: Duration,
    /// A session with no packet in either direction for this long ends.
    #[serde(with = "humantime_serde")]
    pub media_timeout: Duration,
    /// Hard cap on a session's life; 0 = off.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Concurrent sessions; 0 = unlimited.
    pub max_sessions: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub name: String,
    /// Local address media sockets bind to.
    pub address: IpAddr,
    /// Address put in SDP instead of `address` (e.g. the public side of a 1:1 NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_min: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_max: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpproxyConfig {
    pub listen: Vec<ListenSpec>,
    /// Source networks allowed on UDP listeners (unix sockets rely on file permissions).
    pub allow: Vec<ipnet::IpNet>,
    /// Where timeout notifications may go (rtpproxy `-n`): `unix:/path` or `tcp:HOST:PORT`.
    /// Empty = timeout notification is off and commands carrying a notify socket are refused.
    pub notify_socket: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub listen: SocketAddr,
    /// PEM server certificate chain; with `tls_key`, the listener speaks TLS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// Static bearer token required on sluice.v1 calls (`authorization: Bearer TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding the token (first line), instead of `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// sluice.v1 requests per second per client address; 0 = unlimited.
    pub requests_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    pub mode: XdpMode,
    /// Network devices to attach to; empty = derived from the media interface addresses.
    pub interfaces: Vec<String>,
    /// Kernel flow table size: four flows per fully offloaded stream (RTP and RTCP, both ways).
    pub max_flows: u32,
    /// Turn on `net.ipv4/ipv6.conf.<device>.forwarding` for the XDP devices at start (the
    /// kernel's route lookup for XDP needs it). Off by default: it is a host-wide decision.
    pub enable_forwarding: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    Auto,
    Native,
    Generic,
    Off,
}

/// A control-protocol listener: `udp:ADDR:PORT`, `unix:/path` (stream, no cookie) or
/// `unix-dgram:/path` (datagram, with cookie).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum ListenSpec {
    Udp(SocketAddr),
    Unix(PathBuf),
    UnixDgram(PathBuf),
}

impl FromStr for ListenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = s.strip_prefix("udp:") {
            addr.parse().map(ListenSpec::Udp).map_err(|_| {
                format!("invalid UDP listen address `{addr}` (expected ADDR:PORT or [V6ADDR]:PORT)")
            })
        } else if let Some(path) = s.strip_prefix("unix:") {
            absolute(path).map(ListenSpec::Unix)
        } else if let Some(path) = s.strip_prefix("unix-dgram:") {
            absolute(path).map(ListenSpec::UnixDgram)
        } else {
            Err(format!(
                "invalid listen spec `{s}` (expected `udp:ADDR:PORT`, `unix:/path` or `unix-dgram:/path`)"
            ))
        }
    }
}

fn absolute(path: &str) -> Result<PathBuf, String> {
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(format!("unix socket path must be absolute, got `{path}`"))
    }
}

impl TryFrom<String> for ListenSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ListenSpec> for String {
    fn from(spec: ListenSpec) -> String {
        spec.to_string()
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenSpec::Udp(addr) => write!(f, "udp:{addr}"),
            ListenSpec::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenSpec::UnixDgram(path) => write!(f, "unix-dgram:{}", path.display()),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            workers: 0,
            port_min: 30000,
            port_max: 39999,
            quarantine: Duration::from_secs(10),
            dscp: 46,
            recv_buffer: 256 * 1024,
            interfaces: vec![InterfaceConfig {
                name: "default".into(),
                address: IpAddr::from([127, 0, 0, 1]),
                advertise: None,
                port_min: None,
                port_max: None,
            }],
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            latch: LatchMode::FirstPacket,
            relatch: Relatch::OnUpdate,
            relatch_window: Duration::from_secs(10),
            setup_timeout: Duration::from_secs(180),
            media_timeout: Duration::from_secs(60),
            session_ttl: Duration::ZERO,
            max_sessions: 0,
        }
    }
}

impl Default for RtpproxyConfig {
    fn default() -> Self {
        RtpproxyConfig {
            listen: vec![ListenSpec::Udp(SocketAddr::from(([127, 0, 0, 1], 22222)))],
            allow: vec![
                "127.0.0.0/8".parse().expect("valid literal"),
                "::1/128".parse().expect("valid literal"),
            ],
            notify_socket: String::new(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            token: None,
            token_file: None,
            requests_per_second: 0,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            max_flows: sluice_common::DEFAULT_MAX_FLOWS,
            enable_forwarding: false,
            mode: XdpMode::Auto,
            interfaces: Vec::new(),
        }
    }
}

/// A configuration error, pointing at the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: key `{key}`: {message}")]
    Invalid {
        /// File name, or `<embedded defaults>` / `<command line>`.
        origin: String,
        /// Dotted key path, e.g. `media.interface[0].address`; empty for a syntax error.
        key: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A command-line override that does not validate (no file position to point at).
    #[error("{flag}: {message}")]
    Flag { flag: String, message: String },
}

impl ConfigError {
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => Some(*line),
            _ => None,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names the text in errors (usually the file path).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| toml_error(text, origin, String::new(), &e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            toml_error(text, origin, key, e.inner())
        })?;
        config.validate().map_err(|(key, message)| {
            let (line, column) = locate_key(text, &key).unwrap_or((1, 1));
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                line,
                column,
                message,
            }
        })?;
        Ok(config)
    }

    /// The embedded defaults.
    pub fn embedded() -> Config {
        Config::default()
    }

    /// Semantic checks serde cannot express. Returns the dotted key path and a message.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(("log.level".into(), format!("invalid filter: {e}")));
        }
        check_range(
            "media",
            self.media.port_min,
            self.media.port_max,
            "media.port_min",
        )?;
        if self.media.dscp > 63 {
            return Err(("media.dscp".into(), "DSCP is 6 bits (0-63)".into()));
        }
        for (key, d) in [
            ("session.setup_timeout", self.session.setup_timeout),
            ("session.media_timeout", self.session.media_timeout),
        ] {
            if d < Duration::from_secs(1) {
                return Err((key.into(), "must be at least 1s".into()));
            }
        }
        let notify = &self.rtpproxy.notify_socket;
        if !notify.is_empty() && !notify.starts_with("unix:/") && !notify.starts_with("tcp:") {
            return Err((
                "rtpproxy.notify_socket".into(),
                "expected `unix:/path` or `tcp:HOST:PORT`".into(),
            ));
        }
        let grpc = &self.grpc;
        if grpc.tls_cert.is_some() != grpc.tls_key.is_some() {
            return Err((
                "grpc.tls_cert".into(),
                "tls_cert and tls_key go together".into(),
            ));
        }
        if grpc.tls_client_ca.is_some() && grpc.tls_cert.is_none() {
            return Err((
                "grpc.tls_client_ca".into(),
                "client certificates need TLS: set tls_cert and tls_key".into(),
            ));
        }
        if grpc.token.is_some() && grpc.token_file.is_some() {
            return Err((
                "grpc.token_file".into(),
                "set token or token_file, not both".into(),
            ));
        }
        if grpc
            .token
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.contains(char::is_whitespace))
        {
            return Err((
                "grpc.token".into(),
                "must be non-empty, without spaces".into(),
            ));
        }
        if self.media.interfaces.is_empty() {
            return Err((
                "media.interface".into(),
                "at least one media interface is required".into(),
            ));
        }
        for (i, iface) in self.media.interfaces.iter().enumerate() {
            let key = format!("media.interface[{i}]");
            if iface.name.is_empty() {
                return Err((format!("{key}.name"), "must not be empty".into()));
            }
            if self.media.interfaces[..i]
                .iter()
                .any(|other| other.name == iface.name)
            {
                return Err((
                    format!("{key}.name"),
                    format!("duplicate interface name `{}`", iface.name),
                ));
            }
            if iface.address.is_unspecified() {
                return Err((
                    format!("{key}.address"),
                    "must be a concrete address (the relay sources media from it), not 0.0.0.0/::"
                        .into(),
                ));
            }
            let min = iface.port_min.unwrap_or(self.media.port_min);
            let max = iface.port_max.unwrap_or(self.media.port_max);
            let which = if iface.port_min.is_some() {
                format!("{key}.port_min")
            } else {
                format!("{key}.port_max")
            };
            if iface.port_min.is_some() || iface.port_max.is_some() {
                check_range(&key, min, max, &which)?;
            }
        }
        Ok(())
    }
}

/// A port range must hold at least one even/odd pair (RTP on even, RTCP on even + 1).
fn check_range(scope: &str, min: u16, max: u16, key: &str) -> Result<(), (String, String)> {
    if min == 0 {
        return Err((key.into(), format!("{scope}: port_min must be at least 1")));
    }
    let first_even = u32::from(min) + u32::from(min % 2);
    if first_even + 1 > u32::from(max) {
        return Err((
            key.into(),
            format!(
                "{scope}: port range {min}-{max} holds no RTP/RTCP pair (even port and port + 1)"
            ),
        ));
    }
    Ok(())
}

fn toml_error(text: &str, origin: &str, key: String, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e
        .span()
        .map(|span| line_col(text, span.start))
        .or_else(|| locate_key(text, &key))
        .unwrap_or((1, 1));
    ConfigError::Invalid {
        origin: origin.to_owned(),
        key,
        line,
        column,
        message: e.message().trim_end().to_owned(),
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Finds where a dotted key path (`a.b[2].c`) is written in the TOML text, falling back to the
/// nearest enclosing key that is written out (a value left at its default has no position).
fn locate_key(text: &str, path: &str) -> Option<(usize, usize)> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((key, value)) = table.get_key_value(name) else {
            break;
        };
        found = Some(key.span().start);
        let value = match (value.get_ref(), index) {
            (DeValue::Array(items), Some(i)) => match items.get(i) {
                Some(item) => {
                    found = Some(item.span().start);
                    item.get_ref()
                }
                None => break,
            },
            (v, _) => v,
        };
        match value {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found.map(|offset| line_col(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_text_matches_built_in_defaults() {
        let parsed = Config::from_toml(DEFAULT_TOML, "<embedded>").expect("defaults parse");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::from_toml("", "x").unwrap(), Config::default());
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = Config::from_toml("[metrics]\nlisten = \"127.0.0.1:9999\"\n", "x").unwrap();
        assert_eq!(c.metrics.listen.port(), 9999);
        assert_eq!(c.grpc, GrpcConfig::default());
        assert_eq!(c.media, MediaConfig::default());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "[log]\nlevel = \"info\"\n\n[media]\nprot_min = 20000\n";
        let err = Config::from_toml(text, "/etc/sluice.toml").unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.line(), Some(5), "{msg}");
        assert!(msg.starts_with("/etc/sluice.toml:5:"), "{msg}");
        assert!(msg.contains("prot_min"), "{msg}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let err = Config::from_toml("[metric]\nlisten = \"127.0.0.1:1\"\n", "f").unwrap_err();
        assert_eq!(err.line(), Some(1));
        assert!(err.to_string().contains("metric"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let text = "[media]\nport_min = 20000\nport_max = \"lots\"\n";
        let err = Config::from_toml(text, "f").unwrap_err();
        assert_eq!(err.key(), Some("media.port_max"));
        assert_eq!(err.line(), Some(3), "{err}");
    }

    #[test]
    fn bad_address_in_array_of_tables_points_at_it() {
        let text = "[[media.interface]]\nname = \"a\"\naddress = \"10.0.0.1\"\n\n[[media.interface]]\nname = \"b\"\naddress = \"not-an-ip\"\n";
        let err = Config::from_toml(text, "f").unwrap_err();
        assert_eq!(err.key(), Some("media.interface[1].address"), "{err}");
        assert_eq!(err.line(), Some(7), "{err}");
    }

    #[test]
    fn syntax_error_has_line() {
        let err = Config::from_toml("[media\nport_min = 1\n", "f").unwrap_err();
        assert_eq!(err.line(), Some(1), "{err}");
    }

    #[test]
    fn validation_error_points_at_key() {
        let text = "[media]\nport_min = 40000\nport_max = 40000\n";
        let err = Config::from_toml(text, "f").unwrap_err();
        assert_eq!(err.key(), Some("media.port_min"));
        assert_eq!(err.line(), Some(2), "{err}");
        assert!(err.to_string().contains("no RTP/RTCP pair"), "{err}");
    }

    #[test]
    fn duplicate_interface_names_rejected() {
        let text = "[[media.interface]]\nname = \"a\"\naddress = \"10.0.0.1\"\n[[media.interface]]\nname = \"a\"\naddress = \"10.0.0.2\"\n";
        let err = Config::from_toml(text, "f").unwrap_err();
        assert_eq!(err.key(), Some("media.interface[1].name"));
        assert_eq!(err.line(), Some(5), "{err}");
    }

    #[test]
    fn unspecified_media_address_rejected() {
        let text = "[[media.interface]]\nname = \"a\"\naddress = \"0.0.0.0\"\n";
        let err = Config::from_toml(text, "f").unwrap_err();
        assert_eq!(err.key(), Some("media.interface[0].address"));
        assert_eq!(err.line(), Some(3), "{err}");
    }

    #[test]
    fn listen_specs_parse_and_round_trip() {
        for s in [
            "udp:127.0.0.1:22222",
            "udp:[::1]:22222",
            "unix:/run/sluice/rtpp.sock",
            "unix-dgram:/run/sluice/rtpp.dgram",
        ] {
            let spec: ListenSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        for bad in [
            "tcp:1.2.3.4:5",
            "udp:localhost",
            "unix:relative",
            "unix:",
            "",
        ] {
            assert!(bad.parse::<ListenSpec>().is_err(), "{bad}");
        }
        let err = Config::from_toml("[rtpproxy]\nlisten = [\"udp:nope\"]\n", "f").unwrap_err();
        assert_eq!(err.line(), Some(2), "{err}");
        assert!(err.to_string().contains("udp:nope") || err.to_string().contains("nope"));
    }

    #[test]
    fn bad_log_filter_rejected() {
        let err = Config::from_toml("[log]\nlevel = \"=[\"\n", "f").unwrap_err();
        assert_eq!(err.key(), Some("log.level"));
        assert_eq!(err.line(), Some(2));
    }

    #[test]
    fn xdp_mode_values() {
        for (s, m) in [
            ("auto", XdpMode::Auto),
            ("native", XdpMode::Native),
            ("generic", XdpMode::Generic),
            ("off", XdpMode::Off),
        ] {
            let c = Config::from_toml(&format!("[xdp]\nmode = \"{s}\"\n"), "f").unwrap();
            assert_eq!(c.xdp.mode, m);
        }
        let err = Config::from_toml("[xdp]\nmode = \"fast\"\n", "f").unwrap_err();
        assert_eq!(err.line(), Some(2));
    }

    #[test]
    fn serialized_config_parses_back() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(Config::from_toml(&text, "f").unwrap(), Config::default());
    }
}
