//! Logging off the request path: formatted lines go into a bounded queue,
//! and one thread of their own writes them to stderr.
//!
//! With `tracing`'s default writer every log line is a blocking `write(2)`
//! on the task that logs: once stderr is a pipe nobody reads, the first
//! full pipe buffer blocks the runtime's worker threads one by one, and
//! every call — health checks included — times out. Here a request's task
//! only formats its line and queues it; when the queue is full (the sink
//! is slower than the server), the line is **dropped and counted**, never
//! waited for. The writer thread reports the count once the sink drains
//! again (at most once a second) and at shutdown
//! ([`finish`]), so a lossy log says that it is.
//!
//! Why our own rather than `tracing-appender`'s non-blocking writer, which
//! does the same: that crate pulls in `time` with its formatting and
//! parsing macros for its rolling files, which this binary does not use;
//! this is one mutex, two condvars and a thread.

use std::{
    collections::VecDeque,
    io::Write,
    sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of formatted lines the queue holds at most. A line is a few
/// hundred bytes, so this is thousands of lines: enough to ride out a
/// burst, small enough to bound the memory a stalled sink costs.
pub const QUEUE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Shortest interval between two "lines dropped" reports.
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Queue {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The writer holds lines it took out of the queue and is writing.
    writing: bool,
    /// Lines dropped because the queue was full, ever.
    dropped: u64,
    /// Of those, the ones already reported.
    reported: u64,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a line is queued (the writer waits on it).
    queued: Condvar,
    /// Signalled when the queue is empty and nothing is being written.
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding it cannot leave the queue inconsistent
        // (every update is a single push, pop or counter change).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one line, or drops and counts it when the queue is full.
    fn push(&self, line: &[u8]) {
        let mut queue = self.lock();
        if queue.bytes + line.len() > QUEUE_BYTES_MAX {
            queue.dropped += 1;
            return;
        }
        queue.bytes += line.len();
        queue.lines.push_back(line.to_vec());
        drop(queue);
        self.queued.notify_one();
    }
}

/// The process's one writer, started by the first [`writer`] call.
static WRITER: OnceLock<Arc<Shared>> = OnceLock::new();

/// The non-blocking writer for `tracing_subscriber::fmt`, writing to
/// stderr through a background thread.
pub fn writer() -> NonBlocking {
    let shared = WRITER.get_or_init(|| {
        let shared = Arc::new(Shared::default());
        let for_thread = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("abacus-log".into())
            .spawn(move || write_loop(&for_thread, &mut std::io::stderr()));
        if let Err(e) = spawned {
            // Without the thread, lines would only fill the queue and be
            // dropped; say so once, the only way left.
            eprintln!("abacus: cannot start the log writer thread ({e}); logs are lost");
        }
        shared
    });
    NonBlocking {
        shared: Arc::clone(shared),
    }
}

/// Waits until queued lines are written, at most `wait`, after queueing a
/// last report of dropped lines if any were. Returns the number of lines
/// dropped in all. For the end of `main`: the process exits right after,
/// so a stalled sink must not keep it alive.
pub fn finish(wait: Duration) -> u64 {
    let Some(shared) = WRITER.get() else {
        return 0;
    };
    let dropped = {
        let mut queue = shared.lock();
        let unreported = queue.dropped - queue.reported;
        if unreported > 0 {
            queue.reported = queue.dropped;
            let line = drop_report(unreported, queue.dropped);
            queue.bytes += line.len();
            queue.lines.push_back(line);
            shared.queued.notify_one();
        }
        queue.dropped
    };
    let deadline = Instant::now() + wait;
    let mut queue = shared.lock();
    while !queue.lines.is_empty() || queue.writing {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        queue = shared
            .drained
            .wait_timeout(queue, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    dropped
}

/// Log lines dropped so far because the sink was not keeping up.
pub fn dropped() -> u64 {
    WRITER.get().map_or(0, |shared| shared.lock().dropped)
}

fn drop_report(unreported: u64, total: u64) -> Vec<u8> {
    format!(
        " WARN abacus::log: {unreported} log lines dropped: the log sink (stderr) did not keep up ({total} in all)\n"
    )
    .into_bytes()
}

/// The writer thread: takes every queued line, writes them, and reports
/// dropped lines once the queue has drained.
fn write_loop(shared: &Shared, sink: &mut impl Write) {
    let mut last_report: Option<Instant> = None;
    loop {
        let batch = {
            let mut queue = shared.lock();
            while queue.lines.is_empty() {
                queue.writing = false;
                shared.drained.notify_all();
                let due = last_report.is_none_or(|t| t.elapsed() >= DROP_REPORT_INTERVAL);
                if queue.dropped > queue.reported && due {
                    // Drained with drops unreported: the sink keeps up
                    // again, so say what was lost.
                    let line = drop_report(queue.dropped - queue.reported, queue.dropped);
                    queue.reported = queue.dropped;
                    last_report = Some(Instant::now());
                    queue.bytes += line.len();
                    queue.lines.push_back(line);
                    break;
                }
                queue = match queue.dropped > queue.reported {
                    // Drops to report, but too soon: look again shortly.
                    true => {
                        shared
                            .queued
                            .wait_timeout(queue, DROP_REPORT_INTERVAL)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    false => shared.queued.wait(queue).unwrap_or_else(|e| e.into_inner()),
                };
            }
            queue.writing = true;
            queue.bytes = 0;
            std::mem::take(&mut queue.lines)
        };
        // Outside the lock: this is where a stalled sink blocks, and only
        // this thread.
        for line in batch {
            // Nowhere to report a failing stderr; keep draining the queue
            // so that loggers never wait.
            let _ = sink.write_all(&line);
        }
        let _ = sink.flush();
    }
}

/// `MakeWriter` for `tracing_subscriber::fmt`: each formatted event is
/// queued whole.
#[derive(Debug, Clone)]
pub struct NonBlocking {
    shared: Arc<Shared>,
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            shared: &self.shared,
        }
    }
}

/// One event's writer: `fmt` formats the event into a buffer and writes it
/// in one call, which queues it.
#[derive(Debug)]
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// A sink that blocks until the test lets it write, and reports what
    /// it wrote.
    struct Gate {
        entered: mpsc::Sender<()>,
        open: mpsc::Receiver<()>,
        written: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.open.recv();
            let _ = self.written.send(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_drops_and_counts_lines_and_reports_them_once_it_drains() {
        let shared = Arc::new(Shared::default());
        let (open, gate) = mpsc::channel();
        let (written_tx, written) = mpsc::channel();
        let (entered_tx, entered) = mpsc::channel();
        let for_thread = Arc::clone(&shared);
        std::thread::spawn(move || {
            write_loop(
                &for_thread,
                &mut Gate {
                    entered: entered_tx,
                    open: gate,
                    written: written_tx,
                },
            )
        });
        let line = vec![b'x'; 1024];
        shared.push(&line);
        // The writer took that line and is blocked writing it, as on a
        // full pipe. The queue fills to its bound and the rest are
        // dropped, each push returning at once.
        entered.recv().unwrap();
        let fit = QUEUE_BYTES_MAX / line.len();
        for _ in 0..fit + 100 {
            shared.push(&line);
        }
        assert_eq!(shared.lock().dropped, 100);
        assert_eq!(shared.lock().bytes, QUEUE_BYTES_MAX);
        // Open the gate: everything queued is written, then the report.
        for _ in 0..fit + 2 {
            open.send(()).unwrap();
        }
        for _ in 0..fit + 1 {
            assert_eq!(written.recv().unwrap(), line);
        }
        let report = String::from_utf8(written.recv().unwrap()).unwrap();
        assert!(report.contains("100 log lines dropped"), "{report}");
        assert_eq!(shared.lock().reported, 100);
    }
}
