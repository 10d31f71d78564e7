//! Compiles the .proto files with protox (pure Rust), so no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "ipcplane/v1/segment.proto",
        "ipcplane/v1/grant.proto",
        "ipcplane/v1/control.proto",
    ];
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("ipcplane_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=ipcplane");
    Ok(())
}
