//! A check, no code: `cargo xtask test` builds xtask first (to run it), then the rest of the
//! workspace, and Cargo unifies a dependency's features per build. A crate both builds use gets
//! compiled twice when they enable different features of it (or of anything under it): on a
//! fresh clone that was 30 crates, tokio, ring, quinn and rustls among them (building xtask,
//! then the workspace: 253 + 400 s; aligned: 291 + 258 s, 104 s less on 2 cores). The "Feature alignment" block of `xtask/Cargo.toml` asks for the workspace's features
//! directly; this test fails when a dependency change makes the two builds drift apart again,
//! and names the crates and features to add there. (Build-side crates, such as proc macros'
//! `syn`, are not compared: `cargo tree` cannot show them apart from the target side.)

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::process::Command;

    /// `package version -> enabled features` of the target-side crates `cargo tree ARGS` lists.
    fn features(args: &[&str]) -> BTreeMap<String, String> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let out = Command::new(cargo)
            .current_dir(root)
            .args(["tree", "--prefix", "none", "--format", "{p}|{f}"])
            .args(args)
            .output()
            .expect("running cargo tree");
        assert!(out.status.success(), "cargo tree {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .expect("UTF-8 from cargo tree")
            .lines()
            .filter_map(|l| l.trim_end_matches(" (*)").split_once('|'))
            .map(|(p, f)| (p.to_string(), f.to_string()))
            .collect()
    }

    #[test]
    fn xtask_dependencies_are_built_with_the_features_the_rest_of_the_workspace_uses() {
        let xtask = features(&["-p", "xtask", "--edges", "normal,no-proc-macro"]);
        let rest = features(&["--workspace", "--exclude", "xtask", "--edges", "normal,dev,no-proc-macro"]);
        assert!(xtask.len() > 20 && rest.len() > xtask.len(), "{} / {} crates listed", xtask.len(), rest.len());
        let differ: Vec<String> = xtask
            .iter()
            .filter_map(|(p, f)| match rest.get(p) {
                Some(g) if g != f => Some(format!("{p}: xtask [{f}], workspace [{g}]")),
                _ => None,
            })
            .collect();
        assert!(
            differ.is_empty(),
            "compiled twice by `cargo xtask test`; align them in xtask/Cargo.toml:\n{}",
            differ.join("\n")
        );
    }
}
