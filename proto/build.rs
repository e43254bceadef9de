//! Compiles `proto/tpc/v1/*.proto` with protox (pure Rust, so no system `protoc` is needed) and generates
//! the tonic clients and servers. The encoded descriptor set is kept for server reflection.

use protox::prost::Message;

const PROTOS: &[&str] = &[
    "proto/tpc/v1/coordinator.proto",
    "proto/tpc/v1/participant.proto",
];

/// Messages that carry a plaintext password: their `Debug` is written by hand in `redact.rs`, so a
/// stray `{:?}` can never print a secret.
const SECRET_MESSAGES: &[&str] = &[
    ".tpc.v1.RegisterUserRequest",
    ".tpc.v1.UpdatePasswordRequest",
    ".tpc.v1.Register",
    ".tpc.v1.Update",
    ".tpc.v1.VerifyPasswordRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("tpc_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .skip_debug(SECRET_MESSAGES.iter().copied())
        .compile_fds(fds)?;
    Ok(())
}
