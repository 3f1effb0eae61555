//! Reading the bound address from `abacus serve`'s log, shared by the
//! test binaries that start real servers on `127.0.0.1:0` (no port race,
//! no polling: the line is printed after bind).

/// `addr=127.0.0.1:PORT` from the "listening" log line, ANSI colours or not.
pub(crate) fn listening_addr(line: &str) -> Option<String> {
    let plain = strip_ansi(line);
    if !plain.contains("listening") {
        return None;
    }
    let rest = &plain[plain.find("addr=")? + "addr=".len()..];
    Some(rest.split_whitespace().next()?.to_owned())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `ESC [ ... letter`.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn log_line_parsing() {
    let colored = "\u{1b}[2m2026\u{1b}[0m INFO abacus listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:37337 \u{1b}[3mfaults";
    assert_eq!(listening_addr(colored).as_deref(), Some("127.0.0.1:37337"));
    let plain = "INFO abacus::cli::serve: abacus listening (no faults) addr=127.0.0.1:45265";
    assert_eq!(listening_addr(plain).as_deref(), Some("127.0.0.1:45265"));
    assert_eq!(listening_addr("INFO server-started"), None);
}
