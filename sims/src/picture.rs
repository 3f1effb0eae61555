//! A picture of one run's history: an SVG timeline, self-contained (no
//! script, no external asset), drawn from the typed records alone.
//!
//! - a **lane per host** (servers or replicas, the store, the clients),
//!   labelled on the left; time runs left to right in simulated seconds;
//! - each **call** as a bar on its client's lane from its start to its
//!   end, coloured by outcome: ok, not-applied, unknown (or unfinished),
//!   with its **attempts** as ticks and failed attempts as dots; calls
//!   that overlap (hedged copies, per-replica clients)
//!   take rows of their own;
//! - what the servers and the store did as marks: applies, replays, joins,
//!   sheds, injected faults, lost replies and rollbacks;
//! - **faults** as shaded bands over the lanes they strike (a crash over
//!   its host, a partition or hold over both ends of its links), an open
//!   breaker as a band on its client's lane, and the moment every fault
//!   stops as a dashed line;
//! - named **probes** as small diamonds where they were reached;
//! - a **violation** as a red banner naming the invariant, with what it
//!   involves ([`Spot`]) outlined in red on the timeline.
//!
//! Every element carries a class (`lane`, `call ok`, `attempt`, `fault
//! crash`, …), so a test can count what was drawn, and a `<title>` (the
//! record as the timeline prints it), which browsers show on hover.

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    time::Duration,
};

use abacus::{
    client::breaker::State,
    trace::{Event, Outcome},
};

use crate::{
    check::{Spot, Violation},
    faults::{Hosts, SimFault},
    history::{Entry, Record},
    probes,
    scenario::Scenario,
    workload::Note,
    world::{Run, disk, store},
};

/// Width of the time axis, in px.
const PLOT_W: f64 = 1400.0;
/// Left margin for lane labels.
const LEFT: f64 = 130.0;
/// Right margin.
const RIGHT: f64 = 20.0;
/// Height of one row of bars.
const ROW: f64 = 14.0;
/// Padding above and below a lane's rows.
const PAD: f64 = 6.0;
/// Height of the header (title, plan, verdict lines) before the lanes.
const HEADER_LINE: f64 = 18.0;

/// Fill of a call that succeeded (the legend and the styles use these).
pub const OK: &str = "#2a9d8f";
/// Fill of a call that failed, certainly not applied.
pub const NOT_APPLIED: &str = "#8d99ae";
/// Fill of a call whose outcome is unknown.
pub const UNKNOWN: &str = "#f4a261";
/// Fill of a call that never finished.
pub const UNFINISHED: &str = "#e9c46a";
/// Outline of a violation.
pub const VIOLATION: &str = "#d62828";

/// Escapes text for XML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number as SVG wants it: one decimal, no exponent.
struct Px(f64);

impl fmt::Display for Px {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}", self.0)
    }
}

/// How a call ended, as its bar is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ok,
    NotApplied,
    Unknown,
    Unfinished,
}

impl Fate {
    fn class(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotApplied => "not-applied",
            Self::Unknown => "unknown",
            Self::Unfinished => "unfinished",
        }
    }
}

/// One call, as drawn.
#[derive(Debug)]
struct Call {
    /// The client host that made it (`client-1/replica-2` in the
    /// replicated world).
    host: String,
    start: Duration,
    end: Option<Duration>,
    fate: Fate,
    /// The `call` and `call-finished` lines.
    title: String,
    /// Attempts started and failed.
    marks: Vec<(Duration, Mark)>,
    row: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Attempt,
    AttemptFailed,
}

/// The lane a record's host belongs to: `client-1/replica-2` is drawn on
/// `client-1`'s lane.
fn lane_of(host: &str) -> &str {
    host.split('/').next().unwrap_or(host)
}

/// A stretch of a lane shaded for a fault or an open breaker.
#[derive(Debug)]
struct Band {
    lane: String,
    from: Duration,
    to: Option<Duration>,
    class: &'static str,
    title: String,
}

/// What the timeline shows, gathered from the records in one pass.
#[derive(Debug, Default)]
struct Picture {
    lanes: Vec<String>,
    calls: Vec<Call>,
    bands: Vec<Band>,
    /// Server and store marks: (lane, time, class, title).
    marks: Vec<(String, Duration, &'static str, String)>,
    /// When every fault stopped.
    all_stop: Option<Duration>,
    end: Duration,
}

impl Picture {
    fn of(scenario: &Scenario, run: &Run) -> Self {
        let hosts = Hosts {
            servers: scenario.server_hosts(),
            store: scenario.replicated().map(|_| store::HOST.to_owned()),
            clients: scenario.client_hosts(),
            disks: Default::default(),
        };
        let mut p = Picture {
            end: run
                .records
                .iter()
                .map(|r| r.at)
                .max()
                .unwrap_or_default()
                .max(Duration::from_millis(100)),
            ..Picture::default()
        };
        p.lanes.extend(hosts.servers.iter().cloned());
        p.lanes.extend(hosts.store.iter().cloned());
        p.lanes.extend(hosts.clients.iter().cloned());
        for r in &run.records {
            let lane = lane_of(&r.host);
            if r.host != "sim" && !p.lanes.iter().any(|l| l == lane) {
                p.lanes.push(lane.to_owned());
            }
        }
        // Open calls, breakers and faults, by what closes them.
        let mut open: BTreeMap<(String, u64), usize> = BTreeMap::new();
        let mut breakers: BTreeMap<String, usize> = BTreeMap::new();
        let mut faults: Vec<(SimFault, Duration)> = Vec::new();
        for r in &run.records {
            match &r.entry {
                Entry::Event(e) => p.event(r, e, &mut open, &mut breakers),
                Entry::Fault(SimFault::AllStop) => p.all_stop = Some(r.at),
                Entry::Fault(f) => {
                    if let Some(i) = faults.iter().position(|(start, _)| ends(*start, *f)) {
                        let (start, from) = faults.remove(i);
                        p.fault_bands(&hosts, start, from, Some(r.at));
                    } else {
                        faults.push((*f, r.at));
                    }
                }
                Entry::Note(n @ Note::Failover { .. }) => {
                    p.mark(r, "failover", n.to_string());
                }
                Entry::Note(n @ (Note::LivenessFailed { .. } | Note::Wrong(_))) => {
                    p.mark(r, "wrong", n.to_string());
                }
                Entry::Note(_) => {}
                Entry::Store(n) => {
                    let class = match n {
                        store::StoreNote::RolledBack { .. } => "rolled-back",
                        store::StoreNote::ReplyLost { .. } => "reply-lost",
                        store::StoreNote::CommitAbandoned { .. } => "abandoned",
                        store::StoreNote::IdleReleased { .. } => "abandoned",
                    };
                    p.mark(r, class, format!("model {n}"));
                }
                // What the simulated disk did: marked like a lost reply;
                // what the server loaded is in the trace, not the picture.
                Entry::Disk(disk::DiskNote::Loaded { .. }) => {}
                Entry::Disk(n) => p.mark(r, "reply-lost", format!("disk {n}")),
            }
        }
        for (start, from) in faults {
            p.fault_bands(&hosts, start, from, None);
        }
        for h in probes::hits(&run.records) {
            p.marks.push((
                lane_of(&h.host).to_owned(),
                h.at,
                "probe",
                format!("probe {}", h.probe),
            ));
        }
        p.assign_rows();
        p
    }

    fn mark(&mut self, r: &Record, class: &'static str, title: String) {
        self.marks
            .push((lane_of(&r.host).to_owned(), r.at, class, title));
    }

    fn event(
        &mut self,
        r: &Record,
        e: &Event,
        open: &mut BTreeMap<(String, u64), usize>,
        breakers: &mut BTreeMap<String, usize>,
    ) {
        let call_mark = |p: &mut Picture, call: u64, mark: Mark| {
            if let Some(&i) = open.get(&(r.host.clone(), call)) {
                p.calls[i].marks.push((r.at, mark));
                let _ = write!(p.calls[i].title, "\n{} {e}", at(r.at));
            }
        };
        match e {
            Event::CallStarted { call, .. } => {
                open.insert((r.host.clone(), *call), self.calls.len());
                self.calls.push(Call {
                    host: r.host.clone(),
                    start: r.at,
                    end: None,
                    fate: Fate::Unfinished,
                    title: format!("{} {}: {e}", at(r.at), r.host),
                    marks: Vec::new(),
                    row: 0,
                });
            }
            Event::AttemptStarted { call, .. } => call_mark(self, *call, Mark::Attempt),
            Event::AttemptFailed { call, .. } => call_mark(self, *call, Mark::AttemptFailed),
            Event::CallFinished {
                call,
                result,
                outcome,
                ..
            } => {
                if let Some(i) = open.remove(&(r.host.clone(), *call)) {
                    let c = &mut self.calls[i];
                    c.end = Some(r.at);
                    c.fate = match (result, outcome) {
                        (Ok(_), _) => Fate::Ok,
                        (Err(_), Outcome::Unknown) => Fate::Unknown,
                        (Err(_), _) => Fate::NotApplied,
                    };
                    let _ = write!(c.title, "\n{} {e}", at(r.at));
                }
            }
            Event::BreakerTransition { to, .. } => {
                if let Some(i) = breakers.remove(&r.host) {
                    self.bands[i].to = Some(r.at);
                }
                if *to == State::Open {
                    breakers.insert(r.host.clone(), self.bands.len());
                    self.bands.push(Band {
                        lane: lane_of(&r.host).to_owned(),
                        from: r.at,
                        to: None,
                        class: "breaker-open",
                        title: format!("{}: {e}", r.host),
                    });
                }
            }
            Event::Applied { .. } => self.mark(r, "applied", e.to_string()),
            Event::DedupHit { .. } => self.mark(r, "replay", e.to_string()),
            Event::DedupJoined { .. } => self.mark(r, "joined", e.to_string()),
            Event::Shed { .. } => self.mark(r, "shed", e.to_string()),
            Event::FaultInjected { .. } => self.mark(r, "injected", e.to_string()),
            Event::Rejected { .. } => self.mark(r, "rejected", e.to_string()),
            _ => {}
        }
    }

    /// Shades the lanes `start` strikes from `from` to `to`.
    fn fault_bands(
        &mut self,
        hosts: &Hosts,
        start: SimFault,
        from: Duration,
        to: Option<Duration>,
    ) {
        let (class, lanes): (&'static str, Vec<&str>) = match start {
            SimFault::Crash(n) => ("crash", hosts.node(n)),
            SimFault::Partition(l) | SimFault::Hold(l) => {
                let mut lanes: Vec<&str> = Vec::new();
                for (a, b) in hosts.pairs(l) {
                    for h in [a, b] {
                        if !lanes.contains(&h) {
                            lanes.push(h);
                        }
                    }
                }
                let class = if matches!(start, SimFault::Hold(_)) {
                    "hold"
                } else {
                    "partition"
                };
                (class, lanes)
            }
            _ => return,
        };
        for lane in lanes {
            self.bands.push(Band {
                lane: lane.to_owned(),
                from,
                to,
                class,
                title: format!("{} {start}", at(from)),
            });
        }
    }

    /// Rows within each lane, so that no two calls on one row overlap
    /// (first fit, in start order).
    fn assign_rows(&mut self) {
        let mut ends: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        let end = self.end;
        for c in &mut self.calls {
            let rows = ends.entry(lane_of(&c.host).to_owned()).or_default();
            let stop = c.end.unwrap_or(end);
            match rows.iter().position(|e| *e <= c.start) {
                Some(i) => {
                    rows[i] = stop;
                    c.row = i;
                }
                None => {
                    c.row = rows.len();
                    rows.push(stop);
                }
            }
        }
    }

    fn rows(&self, lane: &str) -> usize {
        self.calls
            .iter()
            .filter(|c| lane_of(&c.host) == lane)
            .map(|c| c.row + 1)
            .max()
            .unwrap_or(1)
    }
}

/// True when `end` closes the fault `start` opened.
fn ends(start: SimFault, end: SimFault) -> bool {
    matches!(
        (start, end),
        (SimFault::Partition(a), SimFault::Repair(b)) | (SimFault::Hold(a), SimFault::Release(b)) if a == b
    ) || matches!((start, end), (SimFault::Crash(a), SimFault::Restart(b)) if a == b)
}

fn at(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

/// The styles, inside the SVG so that it stands alone.
fn style() -> String {
    format!(
        "text{{font:12px sans-serif;fill:#222}}\
         .title{{font-size:15px;font-weight:bold}}\
         .verdict.ok{{fill:{OK};font-weight:bold}}\
         .verdict.violated{{fill:{VIOLATION};font-weight:bold}}\
         .lane-bg{{fill:#f7f7f7}}\
         .lane-label{{font-weight:bold}}\
         .grid{{stroke:#ddd;stroke-width:1}}\
         .axis{{font-size:10px;fill:#666}}\
         .call{{stroke:#333;stroke-width:0.5}}\
         .call.ok{{fill:{OK}}}.call.not-applied{{fill:{NOT_APPLIED}}}\
         .call.unknown{{fill:{UNKNOWN}}}.call.unfinished{{fill:{UNFINISHED}}}\
         .attempt{{stroke:#111;stroke-width:1.5}}\
         .attempt-failed{{fill:#111}}\
         .hedge{{fill:#5e2ca5}}\
         .fault.crash{{fill:#d62828;fill-opacity:0.18}}\
         .fault.partition{{fill:#264653;fill-opacity:0.16}}\
         .fault.hold{{fill:#7b2cbf;fill-opacity:0.14}}\
         .fault.breaker-open{{fill:#e76f51;fill-opacity:0.22}}\
         .all-stop{{stroke:#264653;stroke-width:1.5;stroke-dasharray:5 4}}\
         .mark{{stroke:none}}\
         .mark.applied{{fill:{OK}}}.mark.replay{{fill:#1d3557}}.mark.joined{{fill:#457b9d}}\
         .mark.shed{{fill:#e76f51}}.mark.injected{{fill:#9d0208}}.mark.rejected{{fill:{NOT_APPLIED}}}\
         .mark.failover{{fill:#5e2ca5}}.mark.wrong{{fill:{VIOLATION}}}\
         .mark.rolled-back{{fill:#6c757d}}.mark.reply-lost{{fill:#9d0208}}.mark.abandoned{{fill:#000}}\
         .mark.probe{{fill:#ffb703;stroke:#8a5a00;stroke-width:0.6}}\
         .spot{{fill:none;stroke:{VIOLATION};stroke-width:2.5}}\
         .violation-frame{{fill:none;stroke:{VIOLATION};stroke-width:4}}\
         .legend text{{font-size:11px}}"
    )
}

/// Draws one run of `scenario` as a standalone SVG document.
pub fn svg(scenario: &Scenario, run: &Run, violations: &[Violation]) -> String {
    let p = Picture::of(scenario, run);
    let x = |d: Duration| LEFT + d.as_secs_f64() / p.end.as_secs_f64() * PLOT_W;
    let width = LEFT + PLOT_W + RIGHT;
    let header_lines = 3 + violations.len().min(5);
    let top = HEADER_LINE * header_lines as f64 + 24.0;

    // Lane geometry: y and height per lane.
    let mut lanes: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut y = top;
    for lane in &p.lanes {
        let h = p.rows(lane) as f64 * ROW + 2.0 * PAD;
        lanes.insert(lane.as_str(), (y, h));
        y += h + 4.0;
    }
    let lanes_end = y;
    let height = lanes_end + 60.0;

    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\" class=\"history\">\n<style>{}</style>\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n",
        Px(width),
        Px(height),
        Px(width),
        Px(height),
        style()
    );

    // Header: what ran, and the verdict.
    let mut line = HEADER_LINE;
    let _ = writeln!(
        s,
        "<text class=\"title\" x=\"10\" y=\"{}\">{} · seed {}</text>",
        Px(line),
        esc(scenario.name),
        run.seed
    );
    line += HEADER_LINE;
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"{}\">plan: {}</text>",
        Px(line),
        esc(&scenario.plan.to_string())
    );
    line += HEADER_LINE;
    if violations.is_empty() {
        let _ = writeln!(
            s,
            "<text class=\"verdict ok\" x=\"10\" y=\"{}\">all invariants hold</text>",
            Px(line)
        );
    } else {
        for v in violations.iter().take(5) {
            let first = v.detail.lines().next().unwrap_or_default();
            let _ = writeln!(
                s,
                "<text class=\"verdict violated\" x=\"10\" y=\"{}\">VIOLATED [{}] {}</text>",
                Px(line),
                esc(v.invariant),
                esc(first)
            );
            line += HEADER_LINE;
        }
    }

    // Time grid.
    let secs = p.end.as_secs_f64();
    let step = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]
        .into_iter()
        .find(|step| secs / step <= 20.0)
        .unwrap_or(60.0);
    let mut t = 0.0;
    while t <= secs + 1e-9 {
        let gx = x(Duration::from_secs_f64(t));
        let _ = writeln!(
            s,
            "<line class=\"grid\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/><text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{t:.2}s</text>",
            Px(gx),
            Px(top - 4.0),
            Px(gx),
            Px(lanes_end),
            Px(gx),
            Px(lanes_end + 12.0)
        );
        t += step;
    }

    // Lanes, with their bands, marks and calls.
    for lane in &p.lanes {
        let (ly, lh) = lanes[lane.as_str()];
        let _ = writeln!(
            s,
            "<g class=\"lane\" data-host=\"{}\">\n<rect class=\"lane-bg\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>\n<text class=\"lane-label\" x=\"10\" y=\"{}\">{}</text>",
            esc(lane),
            Px(LEFT),
            Px(ly),
            Px(PLOT_W),
            Px(lh),
            Px(ly + lh / 2.0 + 4.0),
            esc(lane)
        );
        for b in p.bands.iter().filter(|b| b.lane == *lane) {
            let (x1, x2) = (x(b.from), x(b.to.unwrap_or(p.end)));
            let _ = writeln!(
                s,
                "<rect class=\"fault {}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>{}</title></rect>",
                b.class,
                Px(x1),
                Px(ly),
                Px((x2 - x1).max(1.0)),
                Px(lh),
                esc(&b.title)
            );
        }
        for c in p.calls.iter().filter(|c| lane_of(&c.host) == lane) {
            let by = ly + PAD + c.row as f64 * ROW + 1.0;
            let (x1, x2) = (x(c.start), x(c.end.unwrap_or(p.end)));
            let _ = write!(
                s,
                "<g><rect class=\"call {}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>{}</title></rect>",
                c.fate.class(),
                Px(x1),
                Px(by),
                Px((x2 - x1).max(2.0)),
                Px(ROW - 3.0),
                esc(&c.title)
            );
            for (t, mark) in &c.marks {
                let mx = x(*t);
                match mark {
                    Mark::Attempt => {
                        let _ = write!(
                            s,
                            "<line class=\"attempt\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>",
                            Px(mx),
                            Px(by - 1.0),
                            Px(mx),
                            Px(by + ROW - 2.0)
                        );
                    }
                    Mark::AttemptFailed => {
                        let _ = write!(
                            s,
                            "<circle class=\"attempt-failed\" cx=\"{}\" cy=\"{}\" r=\"2.2\"/>",
                            Px(mx),
                            Px(by + (ROW - 3.0) / 2.0)
                        );
                    }
                }
            }
            s.push_str("</g>\n");
        }
        for (_, t, class, title) in p.marks.iter().filter(|m| m.0 == *lane) {
            let mx = x(*t);
            if *class == "probe" {
                let my = ly + lh - 4.0;
                let _ = writeln!(
                    s,
                    "<path class=\"mark probe\" d=\"M{} {}l3 3l-3 3l-3 -3z\"><title>{}</title></path>",
                    Px(mx),
                    Px(my - 3.0),
                    esc(title)
                );
            } else {
                let my = ly + 2.0;
                let _ = writeln!(
                    s,
                    "<rect class=\"mark {class}\" x=\"{}\" y=\"{}\" width=\"4\" height=\"{}\"><title>{}</title></rect>",
                    Px(mx - 2.0),
                    Px(my),
                    Px(lh - 8.0),
                    esc(title)
                );
            }
        }
        s.push_str("</g>\n");
    }
    if let Some(t) = p.all_stop {
        let _ = writeln!(
            s,
            "<line class=\"all-stop\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"><title>{} all faults stop</title></line>",
            Px(x(t)),
            Px(top - 4.0),
            Px(x(t)),
            Px(lanes_end),
            at(t)
        );
    }

    // The violation's spots, outlined over the lanes they involve.
    for v in violations {
        for Spot { host, from, to } in &v.spots {
            if let Some((ly, lh)) = lanes.get(lane_of(host)) {
                let (x1, x2) = (x(*from), x(*to));
                let _ = writeln!(
                    s,
                    "<rect class=\"spot\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>[{}] {}</title></rect>",
                    Px(x1 - 3.0),
                    Px(ly - 2.0),
                    Px((x2 - x1).max(0.0) + 6.0),
                    Px(lh + 4.0),
                    esc(v.invariant),
                    esc(host)
                );
            }
        }
    }
    if !violations.is_empty() {
        let _ = writeln!(
            s,
            "<rect class=\"violation-frame\" x=\"2\" y=\"2\" width=\"{}\" height=\"{}\"/>",
            Px(width - 4.0),
            Px(height - 4.0)
        );
    }
    legend(&mut s, lanes_end + 26.0);
    s.push_str("</svg>\n");
    s
}

/// The key to the colours and marks.
fn legend(s: &mut String, y: f64) {
    let items: [(&str, &str); 9] = [
        ("call ok", "ok"),
        ("call not-applied", "not applied"),
        ("call unknown", "outcome unknown"),
        ("call unfinished", "unfinished"),
        ("fault crash", "crash"),
        ("fault partition", "partition"),
        ("fault hold", "hold"),
        ("fault breaker-open", "breaker open"),
        ("mark probe", "probe"),
    ];
    let _ = writeln!(s, "<g class=\"legend\">");
    let mut lx = LEFT;
    for (class, label) in items {
        let _ = writeln!(
            s,
            "<rect class=\"key {class}\" x=\"{}\" y=\"{}\" width=\"14\" height=\"10\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            Px(lx),
            Px(y),
            Px(lx + 18.0),
            Px(y + 9.0)
        );
        lx += 26.0 + 7.0 * label.len() as f64;
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\">ticks: attempts · dots: failed attempts · bars on server lanes: applies, replays, joins, injected faults</text>",
        Px(lx),
        Px(y + 9.0)
    );
    s.push_str("</g>\n");
}

/// The same picture as a self-contained HTML page (the SVG inline, no
/// script, no external asset).
pub fn html(scenario: &Scenario, run: &Run, violations: &[Violation]) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>abacus simulation: {} seed {}</title>\n<style>body{{margin:0;background:#fff}}</style>\n</head>\n<body>\n{}</body>\n</html>\n",
        esc(scenario.name),
        run.seed,
        svg(scenario, run, violations)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_xml() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn faults_close_only_their_own_window() {
        use crate::faults::{Link, Node};
        let crash = SimFault::Crash(Node::Replica(1));
        assert!(ends(crash, SimFault::Restart(Node::Replica(1))));
        assert!(!ends(crash, SimFault::Restart(Node::Replica(2))));
        let cut = SimFault::Partition(Link::SERVER_CLIENTS);
        assert!(ends(cut, SimFault::Repair(Link::SERVER_CLIENTS)));
        assert!(!ends(cut, SimFault::Release(Link::SERVER_CLIENTS)));
    }
}
