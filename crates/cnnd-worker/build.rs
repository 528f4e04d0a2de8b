//! Links libtorch (through tch-sys) so that `cnnd-worker` finds it at run time without
//! LD_LIBRARY_PATH (an rpath to `LIBTORCH/lib`) and keeps libtorch_cuda, so CUDA is there
//! where a GPU is (the linker drops it otherwise: tch-rs issue 907). Records the libtorch
//! and CUDA versions `cnnd-worker --version` shows. This is the only crate that does this:
//! the daemon and cnnctl never link libtorch.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
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
