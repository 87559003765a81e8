//! Log set-up shared by `dsm-coordinator` and `dsm`: `tracing` to stderr, filtered by
//! `RUST_LOG`, with ANSI colours only when stderr is a terminal and `NO_COLOR` is not set
//! (<https://no-color.org>), so logs redirected to a file or a journal hold no escape bytes.

use std::ffi::OsString;
use std::io::IsTerminal;

/// Whether log output should be coloured: only on a terminal, and not when `NO_COLOR` is set
/// to a non-empty value.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber: stderr, `RUST_LOG` (else `default_filter`), colours per
/// [`use_colour`]. Does nothing if a subscriber is already installed.
pub fn init(default_filter: &str) {
    let ansi = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, Some("1".into())));
        // The convention: an empty NO_COLOR counts as unset.
        assert!(use_colour(true, Some("".into())));
    }
}
