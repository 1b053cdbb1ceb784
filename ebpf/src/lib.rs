//! Empty library target: relay/build.rs lists this crate as a build-dependency so cargo rebuilds
//! the embedded XDP object when the program changes, and cargo only accepts crates with a lib.
#![no_std]
