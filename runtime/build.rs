//! Gives `libdsm.so` a SONAME, so programs linked with `-ldsm` record `libdsm.so` and find it
//! through `ldconfig`'s cache or an rpath wherever it is installed (rustc sets none for cdylibs).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdsm.so");
    println!("cargo:rerun-if-changed=build.rs");
}
