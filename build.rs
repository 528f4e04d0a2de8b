//! Build script of the daemon: `sqlx::migrate!` embeds `migrations/` at compile time, so a
//! new migration file must rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
