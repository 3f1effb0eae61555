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

/// What the log reader of a [`Served`] saw.
pub(crate) enum Seen {
    /// The "listening" line, with the bound address.
    Listening(String),
    /// The log closed (the process exited) before that.
    Closed,
}

/// A spawned `abacus serve --addr 127.0.0.1:0 ...`, its log piped to a
/// thread that reads every line (so the server never blocks on a full
/// pipe), keeps them for failure messages, and reports the listening line
/// or the end of the log. Killed (SIGKILL) and reaped when dropped, so a
/// failing test leaves no server behind.
pub(crate) struct Served {
    pub(crate) child: std::process::Child,
    pub(crate) log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub(crate) seen: std::sync::mpsc::Receiver<Seen>,
    /// Every line as it comes, for a test that waits on what the server
    /// logs (unread lines go with the receiver). Not every binary that
    /// includes this file reads it.
    #[allow(dead_code)]
    pub(crate) lines: std::sync::mpsc::Receiver<String>,
}

impl Served {
    /// Starts `bin serve --addr 127.0.0.1:0 extra...` logging at `rust_log`
    /// (which must keep the listening line, `abacus::cli::serve` at INFO).
    pub(crate) fn spawn(bin: &std::path::Path, extra: &[&std::ffi::OsStr], rust_log: &str) -> Self {
        let mut command = Self::command(bin, rust_log);
        command.args(extra);
        Self::from_command(command)
    }

    /// `bin serve --addr 127.0.0.1:0` logging at `rust_log`, without
    /// colours, for a caller to add flags or environment to and hand to
    /// [`Served::from_command`].
    pub(crate) fn command(bin: &std::path::Path, rust_log: &str) -> std::process::Command {
        let mut command = std::process::Command::new(bin);
        command
            .args(["serve", "--addr", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", rust_log);
        command
    }

    /// Spawns `command` (an `abacus serve` that logs its listening line),
    /// its stderr read as [`Served::spawn`] does.
    pub(crate) fn from_command(mut command: std::process::Command) -> Self {
        use std::io::BufRead as _;
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, seen) = std::sync::mpsc::channel();
        let (lines_tx, lines) = std::sync::mpsc::channel();
        let kept = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            let mut listening = false;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Kept before it is reported: `logs()` after `addr()`
                // holds every line up to the listening one.
                kept.lock().unwrap().push(line.clone());
                if !listening && let Some(addr) = listening_addr(&line) {
                    listening = true;
                    let _ = tx.send(Seen::Listening(addr));
                }
                let _ = lines_tx.send(line);
            }
            let _ = tx.send(Seen::Closed);
        });
        Self {
            child,
            log,
            seen,
            lines,
        }
    }

    /// Everything logged so far.
    pub(crate) fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The bound address, once logged (a hang guard bounds the wait; the
    /// line comes at once from a healthy server).
    pub(crate) fn addr(&self) -> String {
        match self.seen.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Seen::Listening(addr)) => addr,
            Ok(Seen::Closed) => panic!("abacus serve exited early:\n{}", self.logs()),
            Err(_) => panic!("abacus serve did not log its address:\n{}", self.logs()),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // Fails only when the process was already reaped; nothing to do.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
