//! Gate for tests that need root (network namespaces, XDP): they skip, saying why, when run
//! unprivileged, and fail instead when `SLUICE_REQUIRE_PRIVILEGED_TESTS=1` (set by
//! `cargo xtask test` as root, hence in CI) so CI never skips them silently.

/// Environment variable that turns a skip into a failure.
pub const REQUIRE_ENV: &str = "SLUICE_REQUIRE_PRIVILEGED_TESTS";

/// True when the caller may create namespaces and load BPF programs. Otherwise prints why the
/// test is skipped and returns false, or panics when skipping is not allowed.
pub fn privileged_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let why = "needs root (network namespaces, veth, XDP/BPF)";
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: {why}, and {REQUIRE_ENV}=1 forbids skipping it");
    }
    eprintln!("SKIPPED {test}: {why}; run `sudo -E cargo xtask test`");
    false
}
