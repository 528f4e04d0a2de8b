//! Build script: compiles the protos without a system protoc (protox) and links libtorch so
//! that the binaries find it at run time (rpath) and keep libtorch_cuda (CUDA where present).
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/cnn/v1/orchestrator.proto",
        "proto/cnn/v1/worker.proto",
    ];
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("cnn_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // sqlx::migrate! embeds migrations/ at compile time; a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");

    // libtorch: tch-sys links it; we add an rpath so no LD_LIBRARY_PATH is needed, and force
    // libtorch_cuda into the binary (the linker drops it otherwise: tch-rs issue 907).
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let version_py = PathBuf::from(&libtorch).join("version.py");
        if let Ok(text) = std::fs::read_to_string(&version_py) {
            let version = text
                .lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string());
            if let Some(v) = version {
                println!("cargo:rustc-env=CNND_LIBTORCH_VERSION={v}");
            }
            // `cuda: Optional[str] = '13.0'` (None in CPU-only builds).
            let cuda = text
                .lines()
                .find_map(|l| l.strip_prefix("cuda"))
                .and_then(|rest| rest.split('=').nth(1))
                .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
                .filter(|v| v != "None");
            if let Some(c) = cuda {
                println!("cargo:rustc-env=CNND_TORCH_CUDA_VERSION={c}");
            }
        }
        let lib = PathBuf::from(libtorch).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-L{}", lib.display());
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
    Ok(())
}
