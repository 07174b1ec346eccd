//! The offline checks of SPEC §6.1, window by window, from what the clients recorded, every
//! incarnation's count log and the callback receiver.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

use verve::sketch::{self, HashKey};

use crate::common::{Line, Received, rfc3339};
use crate::{Fault, Kind, RECOVERY_LIMIT_MS, WINDOW_SECS};

/// One request as a client saw it. `window` is the window start (epoch seconds) on the
/// harness's clock, which every instance shares for it (clients keep off the boundaries).
pub struct Answer {
    pub window: i64,
    pub id: i64,
    /// The callback endpoint's path on the receiver, when the request carried one.
    pub endpoint: Option<String>,
    /// The HTTP status; 0 when the connection failed.
    pub status: u16,
    pub sent_ms: i64,
    pub done_ms: i64,
}

/// Each window's HyperLogLog registers as Redis held them soon after its count was read.
pub type Registers = HashMap<i64, Vec<u8>>;

pub struct Evidence<'a> {
    /// The window starts checked: the full windows while clients ran.
    pub windows: &'a [i64],
    pub answers: &'a [Answer],
    /// Every incarnation's name and count log.
    pub logs: &'a [(String, Vec<Line>)],
    pub posts: &'a [Received],
    /// The ids Redis held for a window soon after its count was read.
    pub audit: &'a HashMap<i64, HashSet<i64>>,
    /// Approx mode: the fleet's hash key (if it could be read) and each window's HyperLogLog
    /// registers as Redis held them soon after its count was read.
    pub sketches: Option<(Option<HashKey>, &'a Registers)>,
    pub faults: &'a [Fault],
}

pub struct Violation {
    pub window: Option<i64>,
    pub invariant: &'static str,
    pub detail: String,
}

pub struct Summary {
    pub windows: usize,
    pub requests: usize,
    pub oks: usize,
    pub posts: usize,
    /// POSTs repeated for one endpoint and window (allowed across a leader's death).
    pub repeated: usize,
    /// Approx mode: windows whose HyperLogLog was checked register by register.
    pub audited: usize,
    pub violations: Vec<Violation>,
    /// Per fault (in order): milliseconds from its lifting to the next `ok`.
    pub recovery: Vec<Option<i64>>,
}

/// A POST's window, count and scope.
fn body(post: &Received) -> Option<(String, u64, String)> {
    let json: serde_json::Value = serde_json::from_str(&post.body).ok()?;
    Some((
        json["window_start"].as_str()?.to_string(),
        json["unique_requests"].as_u64()?,
        json["scope"].as_str()?.to_string(),
    ))
}

pub fn check(e: &Evidence) -> Summary {
    let mut violations = Vec::new();
    let mut by_window: HashMap<i64, Vec<&Answer>> = HashMap::new();
    for a in e.answers {
        by_window.entry(a.window).or_default().push(a);
    }
    let posts: Vec<(&Received, (String, u64, String))> = e
        .posts
        .iter()
        .filter(|p| p.method == "POST")
        .filter_map(|p| Some((p, body(p)?)))
        .collect();
    let mut repeated = 0;
    let mut audited = 0;
    for &w in e.windows {
        let shown = rfc3339(w);
        let mut flag = |invariant: &'static str, detail: String| {
            violations.push(Violation {
                window: Some(w),
                invariant,
                detail,
            });
        };
        let answers = by_window.get(&w).map(Vec::as_slice).unwrap_or_default();
        let sent: HashSet<i64> = answers.iter().map(|a| a.id).collect();
        let ok: HashSet<i64> = answers
            .iter()
            .filter(|a| a.status == 200)
            .map(|a| a.id)
            .collect();
        let ok_endpoints: HashSet<&str> = answers
            .iter()
            .filter(|a| a.status == 200)
            .filter_map(|a| a.endpoint.as_deref())
            .collect();
        // Each incarnation's lines for the window: at most one `scope=local partial=true
        // reason=store` line, then at most one `scope=fleet` line (SPEC §6.3, late counts).
        for (name, lines) in e.logs {
            let kinds: Vec<&str> = lines
                .iter()
                .filter(|l| l.kind == "unique_requests" && l.get("window_start") == shown)
                .map(|l| match (l.get("scope"), l.partial()) {
                    ("fleet", _) => "fleet",
                    (_, true) => "partial",
                    _ => "local",
                })
                .collect();
            if !matches!(
                kinds.as_slice(),
                [] | ["fleet"] | ["partial"] | ["partial", "fleet"]
            ) {
                flag(
                    "I-agree",
                    format!(
                        "{name} logged the window as {kinds:?}, not one line (or a partial one, then one fleet line)"
                    ),
                );
            }
        }
        // Who says which count: `scope=fleet` lines and POSTs.
        let mut said: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (name, lines) in e.logs {
            for line in lines.iter().filter(|l| {
                l.kind == "unique_requests"
                    && l.get("window_start") == shown
                    && l.fields.get("scope").map(String::as_str) == Some("fleet")
            }) {
                said.entry(line.count()).or_default().push(name.clone());
            }
        }
        let mut called: HashMap<&str, usize> = HashMap::new();
        for (post, (start, count, scope)) in posts.iter().filter(|(_, b)| b.0 == shown) {
            debug_assert_eq!(start, &shown);
            if scope != "fleet" {
                flag(
                    "I-agree",
                    format!("POST {} carried scope {scope}", post.path),
                );
            }
            said.entry(*count)
                .or_default()
                .push(format!("POST {}", post.path));
            *called.entry(post.path.as_str()).or_default() += 1;
        }
        repeated += called.values().map(|n| n - 1).sum::<usize>();
        if said.len() > 1 {
            let who: Vec<String> = said
                .iter()
                .map(|(count, by)| format!("{count} by {}", summarize(by)))
                .collect();
            flag("I-agree", format!("counts differ: {}", who.join("; ")));
        }
        if said.is_empty() && !ok.is_empty() {
            flag(
                "I-ok",
                format!(
                    "{} ids answered ok but no fleet count was logged or POSTed",
                    ok.len()
                ),
            );
        }
        if let Some((key, registers)) = e.sketches {
            // An instance killed while the window was open (or within a merge after it)
            // takes its last second's updates with it, as promised: not held against it.
            // (A fault's span runs from when it began, a leader kill's wait for a leader
            // included, to the restart.)
            let killed = e.faults.iter().any(|f| {
                matches!(f.kind, Kind::InstanceKill | Kind::LeaderKill)
                    && f.lifted_ms >= w * 1000
                    && f.at_ms <= (w + WINDOW_SECS) * 1000 + 1500
            });
            if !killed && approx_checks(key, registers.get(&w), &said, &ok, &sent, &mut flag) {
                audited += 1;
            }
        }
        for &count in said.keys().filter(|_| e.sketches.is_none()) {
            if (count as usize) < ok.len() {
                let missing: Vec<i64> = match e.audit.get(&w) {
                    Some(held) => {
                        let mut m: Vec<i64> = ok.difference(held).copied().collect();
                        m.sort_unstable();
                        m
                    }
                    None => Vec::new(),
                };
                flag(
                    "I-ok",
                    format!(
                        "fleet count {count} < {} ids answered ok; not in Redis after the count: \
                         {} {:?}",
                        ok.len(),
                        missing.len(),
                        &missing[..missing.len().min(10)]
                    ),
                );
            }
            if count as usize > sent.len() {
                flag(
                    "I-bound",
                    format!("fleet count {count} > {} distinct ids sent", sent.len()),
                );
            }
        }
        let mut uncalled: Vec<&str> = ok_endpoints
            .iter()
            .filter(|p| !called.contains_key(*p))
            .copied()
            .collect();
        if !uncalled.is_empty() {
            uncalled.sort_unstable();
            flag(
                "I-endpoint",
                format!(
                    "{} endpoints of ok requests got no POST: {:?}",
                    uncalled.len(),
                    &uncalled[..uncalled.len().min(10)]
                ),
            );
        }
    }
    // Available: an `ok` again soon after each fault was lifted.
    let mut oks: Vec<(i64, i64)> = e
        .answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| (a.sent_ms, a.done_ms))
        .collect();
    oks.sort_unstable();
    let recovery: Vec<Option<i64>> = e
        .faults
        .iter()
        .map(|f| {
            let i = oks.partition_point(|&(sent, _)| sent < f.lifted_ms);
            let first = oks[i..].iter().map(|&(_, done)| done).min()?;
            Some((first - f.lifted_ms).max(0))
        })
        .collect();
    for f in e.faults {
        if let Some(why) = &f.broke {
            violations.push(Violation {
                window: None,
                invariant: "ready",
                detail: format!("{} ({}): {why}", f.kind.name(), f.detail),
            });
        }
    }
    for (f, r) in e.faults.iter().zip(&recovery) {
        if r.is_none_or(|ms| ms > RECOVERY_LIMIT_MS) {
            violations.push(Violation {
                window: None,
                invariant: "available",
                detail: format!(
                    "no ok within {RECOVERY_LIMIT_MS} ms after {} ({}) was lifted at {}",
                    f.kind.name(),
                    f.detail,
                    f.lifted_ms
                ),
            });
        }
    }
    Summary {
        windows: e.windows.len(),
        requests: e.answers.len(),
        oks: oks.len(),
        posts: posts.len(),
        repeated,
        audited,
        violations,
        recovery,
    }
}

/// Approx mode's promises for one window (SPEC §3a), in place of the exact count's: every
/// `ok` id's register is in the window's HyperLogLog as Redis held it for the count (I-ok,
/// register by register: exact, not within the error), no register exceeds what the ids
/// sent give (the count holds nothing but them, hashed with the fleet's one key), and the
/// one count is within the error bound of the truth, which lies between the ids answered
/// `ok` and those sent. The registers are judged only when their estimate is the count
/// that was fixed (Redis may have restarted, or a late merge landed, since); true when they
/// were.
fn approx_checks(
    key: Option<HashKey>,
    registers: Option<&Vec<u8>>,
    said: &BTreeMap<u64, Vec<String>>,
    ok: &HashSet<i64>,
    sent: &HashSet<i64>,
    flag: &mut impl FnMut(&'static str, String),
) -> bool {
    let Some(&count) = said.keys().next() else {
        return false;
    };
    let bound = |n: usize| (n as f64 * 0.025).max(3.0);
    if (count as f64) < ok.len() as f64 - bound(ok.len())
        || count as f64 > sent.len() as f64 + bound(sent.len())
    {
        flag(
            "I-error",
            format!(
                "fleet count {count} outside the error bound of {} ids ok, {} sent",
                ok.len(),
                sent.len()
            ),
        );
    }
    let (Some(key), Some(registers)) = (key, registers) else {
        return false;
    };
    if sketch::estimate(registers) != count {
        return false;
    }
    let offered = |ids: &HashSet<i64>| {
        let mut max = vec![0u8; sketch::REGISTERS];
        for &id in ids {
            let (index, value) = sketch::pattern(&key.keyed(id));
            max[index] = max[index].max(value);
        }
        max
    };
    let needed = offered(ok);
    let missing = (0..sketch::REGISTERS)
        .filter(|&i| registers[i] < needed[i])
        .count();
    if missing > 0 {
        flag(
            "I-ok",
            format!(
                "{missing} registers of ids answered ok are below their value in the window's HyperLogLog (count {count})"
            ),
        );
    }
    let possible = offered(sent);
    let beyond = (0..sketch::REGISTERS)
        .filter(|&i| registers[i] > possible[i])
        .count();
    if beyond > 0 {
        flag(
            "I-bound",
            format!("{beyond} registers of the window's HyperLogLog exceed every id sent"),
        );
    }
    true
}

/// `a, b, c and 7 more`.
fn summarize(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
    match names.len() {
        n if n > 3 => format!("{} and {} more", shown.join(", "), n - 3),
        _ => shown.join(", "),
    }
}

impl Summary {
    pub fn report(&self, faults: &[Fault]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "chaos: {} windows checked; {} requests, {} answered ok; {} POSTs ({} repeated)",
            self.windows, self.requests, self.oks, self.posts, self.repeated
        );
        if self.audited > 0 {
            let _ = writeln!(
                out,
                "approx: {} windows' HyperLogLogs checked register by register",
                self.audited
            );
        }
        let mut kinds: BTreeMap<Kind, Vec<Option<i64>>> = BTreeMap::new();
        for (f, r) in faults.iter().zip(&self.recovery) {
            kinds.entry(f.kind).or_default().push(*r);
        }
        let _ = writeln!(out, "faults: {}", faults.len());
        for (kind, times) in &kinds {
            let mut known: Vec<i64> = times.iter().flatten().copied().collect();
            known.sort_unstable();
            let median = known.get(known.len() / 2).copied().unwrap_or(-1);
            let worst = known.last().copied().unwrap_or(-1);
            let _ = writeln!(
                out,
                "  {:<14} {:>4}   recovery to the next ok: median {median} ms, worst {worst} ms",
                kind.name(),
                times.len(),
            );
        }
        // Failovers by way: how long the promotion took, then the next `ok` after it.
        let mut ways: BTreeMap<&str, (Vec<i64>, Vec<i64>)> = BTreeMap::new();
        for (f, r) in faults.iter().zip(&self.recovery) {
            if let Some((how, promoted)) = f.failover {
                let (promotions, recoveries) = ways.entry(how.name()).or_default();
                promotions.push(promoted);
                recoveries.extend(r);
            }
        }
        for (how, (mut promotions, mut recoveries)) in ways {
            promotions.sort_unstable();
            recoveries.sort_unstable();
            let mid = |v: &[i64]| v.get(v.len() / 2).copied().unwrap_or(-1);
            let _ = writeln!(
                out,
                "    {how}: {} — promoted after median {} ms (worst {}); next ok after the \
                 promotion: median {} ms, worst {} ms",
                promotions.len(),
                mid(&promotions),
                promotions.last().unwrap_or(&-1),
                mid(&recoveries),
                recoveries.last().unwrap_or(&-1)
            );
        }
        let _ = writeln!(out, "violations: {}", self.violations.len());
        for v in &self.violations {
            let window = v.window.map_or_else(|| "-".to_string(), rfc3339);
            let _ = writeln!(out, "  {window} {}: {}", v.invariant, v.detail);
            // The faults that struck from the window before to the end of this one's report.
            let Some(w) = v.window else { continue };
            let (from, to) = (
                (w - WINDOW_SECS) * 1000,
                (w + 2 * WINDOW_SECS) * 1000 + 4000,
            );
            for f in faults
                .iter()
                .filter(|f| f.lifted_ms >= from && f.at_ms <= to)
            {
                let _ = writeln!(
                    out,
                    "      near: {} {:+} ms into the window: {}",
                    f.kind.name(),
                    f.at_ms - w * 1000,
                    f.detail
                );
            }
        }
        out
    }
}
