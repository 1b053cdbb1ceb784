//! Rebuild when the bpf-linker binary changes: building this crate for BPF depends on it, and
//! cargo cannot express a dependency on a binary. On the host (clippy, tests) the linker is not
//! used, so its absence is not an error here; relay/build.rs reports it when it matters.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    }
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
