//! The README's Rust snippets run as written: each ```rust block of README.md must be the body
//! of an example in `examples/src/bin` (its `//!` header aside), and that example is run with
//! `dsm run -n 3` as the README says, to a correct result.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use dsm_tests::programs::{artifacts, finish, root, text, TIMEOUT};

/// The contents of every fenced block of `lang` in `markdown`.
fn blocks(markdown: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start().strip_prefix("```").is_some_and(|l| l.trim() == lang) => {
                current = Some(Vec::new());
            }
            Some(lines) if line.trim_start().starts_with("```") => {
                out.push(lines.join("\n"));
                current = None;
            }
            Some(lines) => lines.push(line),
            None => {}
        }
    }
    out
}

/// The example whose source, without its `//!` lines, is `snippet`.
fn example_of(snippet: &str) -> Option<String> {
    let dir = root().join("examples/src/bin");
    std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
        let path = e.path();
        let source = std::fs::read_to_string(&path).ok()?;
        let body: Vec<&str> = source.lines().filter(|l| !l.starts_with("//!")).collect();
        let stem = path.file_stem()?.to_string_lossy().into_owned();
        (body.join("\n").trim() == snippet.trim()).then_some(stem)
    })
}

#[test]
fn every_rust_snippet_of_the_readme_is_an_example_and_runs_with_dsm_run_n_3() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("read README.md");
    let snippets = blocks(&readme, "rust");
    assert!(!snippets.is_empty(), "the README has no ```rust block");
    for snippet in snippets {
        let name = example_of(&snippet).unwrap_or_else(|| {
            panic!("this README snippet is not the body of any examples/src/bin/*.rs file:\n{snippet}")
        });
        let exe: PathBuf = artifacts().join(&name);
        assert!(exe.is_file(), "{} was not built", exe.display());
        let certs = tempfile::tempdir().unwrap();
        let child = Command::new(artifacts().join("dsm"))
            .args(["run", "-n", "3", "--cert-dir"])
            .arg(certs.path())
            .arg("--")
            .arg(&exe)
            .env_remove("DSM_COORDINATOR")
            .env_remove("DSM_CERT_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dsm run");
        let o = finish(child, TIMEOUT);
        assert!(o.status.success(), "{name}: {}", text(&o));
        if name == "quickstart" {
            // Three processes each add 1 atomically and 10 under the mutex.
            assert!(String::from_utf8_lossy(&o.stdout).contains("3 processes: counter=3 sum=30"), "{}", text(&o));
        }
    }
}

#[test]
fn fenced_blocks_are_found() {
    let md = "text\n```rust\nfn a() {}\n```\n```sh\nls\n```\n  ```rust\nlet x = 1;\n  ```\n";
    assert_eq!(blocks(md, "rust"), vec!["fn a() {}".to_string(), "let x = 1;".to_string()]);
    assert_eq!(blocks(md, "sh"), vec!["ls".to_string()]);
}
