//! The committed header `include/shadowbucket.h` must be what cbindgen generates from the
//! crate today. Regenerate it with `SB_UPDATE_HEADER=1 cargo test -p shadowbucket-ffi --test
//! header` and commit it.

use std::path::Path;

#[test]
fn header_is_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("ffi/cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("cbindgen wrote UTF-8");
    let path = dir.join("../include/shadowbucket.h");
    if std::env::var_os("SB_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("write include/shadowbucket.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/shadowbucket.h is stale: it differs from what cbindgen generates from \
             ffi/src, first at line {}.\n  committed: {:?}\n  generated: {:?}\nRegenerate it with \
             `SB_UPDATE_HEADER=1 cargo test -p shadowbucket-ffi --test header` and commit it.",
            line + 1,
            committed.lines().nth(line).unwrap_or("<end of file>"),
            generated.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}
