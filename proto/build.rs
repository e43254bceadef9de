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

/// Fails the build when a message has a field named like a password but is not in `SECRET_MESSAGES`:
/// its derived `Debug` would print the secret the first time anyone logs it with `{:?}`.
fn check_secrets_are_redacted(
    fds: &protox::prost_reflect::prost_types::FileDescriptorSet,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut unredacted = Vec::new();
    for file in &fds.file {
        let package = file.package();
        for message in &file.message_type {
            let name = format!(".{package}.{}", message.name());
            let secret = message.field.iter().any(|f| f.name().contains("password"));
            if secret && !SECRET_MESSAGES.contains(&name.as_str()) {
                unredacted.push(name);
            }
        }
    }
    if unredacted.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "messages with a password field are missing from SECRET_MESSAGES (proto/build.rs): {}; add \
             them there and write their Debug by hand in src/redact.rs",
            unredacted.join(", ")
        )
        .into())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    check_secrets_are_redacted(&fds)?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("tpc_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .skip_debug(SECRET_MESSAGES.iter().copied())
        .compile_fds(fds)?;
    Ok(())
}
