//! The picture of a history (`abacus_sims::picture`): parsed back as XML
//! (a lane per host, a bar per call, a band per fault, the violation
//! outlined), and rendered by a real browser — Debian's `chromium`,
//! headless — whose screenshot must show the picture's colours. A machine
//! without chromium fails this test, saying how to install it (`.ci/run`
//! does).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use abacus::trace::Event;
use abacus_sims::{
    Scenario,
    catalogue::{exactly_once, replicated_failover},
    check::Violation,
    history::Entry,
    picture,
    sweep::run_checked,
    world::Run,
};

/// A run of the written replicated scenario (a replica crash, a store
/// crash, lost commit replies) and the dedup-off control's first violating
/// seed.
fn runs() -> Vec<(Scenario, Run, Vec<Violation>)> {
    let replicated = replicated_failover("picture_replicated");
    let (run, violations) = run_checked(&replicated, 7);
    let mut out = vec![(replicated, run, violations)];
    let mut broken = exactly_once("picture_dedup_off");
    broken.dedup = false;
    let (run, violations) = (0..16)
        .map(|seed| run_checked(&broken, seed))
        .find(|(_, v)| !v.is_empty())
        .expect("the dedup-off control violates on one of 16 seeds");
    out.push((broken, run, violations));
    out
}

fn class_of<'a>(n: &roxmltree::Node<'a, '_>) -> &'a str {
    n.attribute("class").unwrap_or_default()
}

/// Elements whose class list starts with `prefix`'s words.
fn count(doc: &roxmltree::Document<'_>, prefix: &str) -> usize {
    doc.descendants()
        .filter(|n| n.is_element() && class_of(n).starts_with(prefix))
        .count()
}

#[test]
fn the_picture_holds_a_lane_per_host_and_a_bar_per_call() {
    for (scenario, run, violations) in runs() {
        let svg = picture::svg(&scenario, &run, &violations);
        let doc = roxmltree::Document::parse(&svg).expect("the SVG is well-formed XML");
        let name = scenario.name;

        let mut hosts = scenario.server_hosts();
        if scenario.replicated().is_some() {
            hosts.push("store".into());
        }
        hosts.extend(scenario.client_hosts());
        let lanes: Vec<&str> = doc
            .descendants()
            .filter(|n| n.is_element() && class_of(n) == "lane")
            .filter_map(|n| n.attribute("data-host"))
            .collect();
        assert_eq!(lanes, hosts, "{name}: one lane per host, in order");

        let calls = run
            .records
            .iter()
            .filter(|r| matches!(r.entry, Entry::Event(Event::CallStarted { .. })))
            .count();
        assert!(calls > 10, "{name}: {calls} calls");
        assert_eq!(count(&doc, "call "), calls, "{name}: one bar per call");
        let attempts = run
            .records
            .iter()
            .filter(|r| matches!(r.entry, Entry::Event(Event::AttemptStarted { .. })))
            .count();
        assert_eq!(
            count(&doc, "attempt"),
            attempts + count(&doc, "attempt-failed")
        );

        let spots: usize = violations.iter().map(|v| v.spots.len()).sum();
        assert_eq!(count(&doc, "spot"), spots, "{name}: every spot outlined");
        if violations.is_empty() {
            assert_eq!(count(&doc, "verdict ok"), 1);
            // A replica and the store crash: each shades its own lane.
            assert_eq!(count(&doc, "fault crash"), 2, "{name}");
        } else {
            assert!(spots > 0, "{name}: the violation says where it is");
            assert_eq!(count(&doc, "violation-frame"), 1);
            assert_eq!(
                count(&doc, "verdict violated"),
                violations.len().min(5),
                "{name}"
            );
        }
        // The page is the same SVG, with no script and nothing fetched.
        let html = picture::html(&scenario, &run, &violations);
        assert!(html.contains(&svg));
        for banned in ["<script", "src=", "href=", "@import", "url("] {
            assert!(!html.contains(banned), "{name}: {banned}");
        }
    }
}

/// The picture is a function of the run: the same seed draws the same
/// bytes.
#[test]
fn the_same_seed_draws_the_same_picture() {
    let s = replicated_failover("picture_replicated");
    let draw = || {
        let (run, violations) = run_checked(&s, 3);
        picture::html(&s, &run, &violations)
    };
    assert_eq!(draw(), draw());
}

/// chromium, from `ABACUS_CHROMIUM` or the PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("ABACUS_CHROMIUM") {
        return path.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|b| dir.join(b)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium not found on PATH (nor ABACUS_CHROMIUM): the picture test renders \
                 the timeline in a real browser. Install it: apt-get install chromium \
                 (.ci/run does)"
            )
        })
}

/// Screenshots `page` with headless chromium into `png`, within two
/// minutes.
fn screenshot(page: &Path, png: &Path, dir: &Path) {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1600,520",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let pid = child.id();
    let stderr = child.stderr.take();
    let (done, wait) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        let _ = done.send((child.wait(), text));
    });
    match wait.recv_timeout(Duration::from_secs(120)) {
        Ok((Ok(status), stderr)) => {
            assert!(status.success(), "chromium failed ({status}):\n{stderr}")
        }
        Ok((Err(e), _)) => panic!("waiting for chromium: {e}"),
        Err(_) => {
            // Ours to end, by its id.
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("chromium did not finish its screenshot within two minutes");
        }
    }
}

/// The screenshot's pixels as RGB triples.
fn pixels(png: &Path) -> Vec<[u8; 3]> {
    let file = std::fs::File::open(png).expect("chromium wrote the screenshot");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a sane size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf[..info.buffer_size()]
        .chunks_exact(step)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

fn rgb(hex: &str) -> [u8; 3] {
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex");
    [byte(1), byte(3), byte(5)]
}

/// The page rendered in a real browser is not blank: it has the colours
/// of the bars (calls that succeeded and calls whose outcome is unknown)
/// over hundreds of pixels each, and many colours in all.
#[test]
fn a_real_browser_draws_the_picture() {
    let dir = std::env::temp_dir().join(format!("abacus-picture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (scenario, run, violations) = runs().swap_remove(0);
    let page = dir.join("history.html");
    std::fs::write(&page, picture::html(&scenario, &run, &violations)).expect("write the page");
    let png = dir.join("history.png");
    screenshot(&page, &png, &dir);
    let pixels = pixels(&png);
    let _ = std::fs::remove_dir_all(&dir);

    let colours: std::collections::BTreeSet<[u8; 3]> = pixels.iter().copied().collect();
    assert!(
        colours.len() > 20,
        "a blank or broken render: {} colours",
        colours.len()
    );
    for (what, hex) in [("ok", picture::OK), ("not-applied", picture::NOT_APPLIED)] {
        let n = pixels.iter().filter(|p| **p == rgb(hex)).count();
        assert!(n > 300, "{what} bars ({hex}) cover {n} pixels");
    }
}
