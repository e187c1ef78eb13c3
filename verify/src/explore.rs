//! A breadth-first explorer of every state a [`Model`] can reach, checking
//! its invariants in each. States are deduplicated by a 128-bit fingerprint
//! of their canonical form; only the frontier is kept whole, so memory grows
//! with the fingerprints, not with the states. The first violation found is
//! on a shortest path from an initial state, and comes back as the actions
//! leading to it with the state after each.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Debug,
    hash::{DefaultHasher, Hash, Hasher},
    time::{Duration, Instant},
};

/// A transition system to explore.
pub trait Model {
    /// One state; [`Model::canonical`] says when two are the same.
    type State: Clone;
    /// One step from a state.
    type Action: Clone + Debug;

    /// The initial states.
    fn init(&self) -> Vec<Self::State>;
    /// The steps enabled in `s`.
    fn actions(&self, s: &Self::State, out: &mut Vec<Self::Action>);
    /// The state after `a`; `None` when `a` turns out to change nothing.
    fn next(&self, s: &Self::State, a: &Self::Action) -> Option<Self::State>;
    /// What identifies a state: equal strings are the same state.
    fn canonical(&self, s: &Self::State) -> String;
    /// The first invariant `s` breaks: `(name, why)`.
    fn check(&self, s: &Self::State) -> Option<(&'static str, String)>;
    /// A short description of `s` for traces.
    fn describe(&self, s: &Self::State) -> String;
}

/// A broken invariant and how to get there.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which invariant.
    pub property: &'static str,
    /// Why it is broken.
    pub why: String,
    /// Initial state, then each action with the state after it.
    pub trace: Vec<(String, String)>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "property {} broken: {}", self.property, self.why)?;
        for (i, (action, state)) in self.trace.iter().enumerate() {
            writeln!(f, "  {i:>2}. {action}\n        {state}")?;
        }
        Ok(())
    }
}

/// What an exploration saw.
#[derive(Clone, Debug)]
pub struct Report {
    /// Distinct states reached.
    pub states: usize,
    /// Transitions taken (to new or known states).
    pub transitions: usize,
    /// Longest shortest path from an initial state.
    pub depth: usize,
    /// Whether the state bound stopped the exploration early.
    pub truncated: bool,
    /// How long it took.
    pub elapsed: Duration,
    /// The first violation found, if any.
    pub violation: Option<Violation>,
}

fn fingerprint(s: &str) -> u128 {
    let mut a = DefaultHasher::new();
    0u8.hash(&mut a);
    s.hash(&mut a);
    let mut b = DefaultHasher::new();
    1u8.hash(&mut b);
    s.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Explores `model` breadth-first, at most `max_states` states; stops at
/// Explores `model` (at most `max_states`), prints the state counts under
/// `label` and fails on a violation (with its trace) or when the bound cut
/// the exploration short: what every model test asserts.
pub fn assert_holds<M: Model>(label: &str, model: &M, max_states: usize) -> Report {
    let r = explore(model, max_states);
    eprintln!(
        "[{label}] states={} transitions={} depth={} truncated={} in {:.1?}",
        r.states, r.transitions, r.depth, r.truncated, r.elapsed
    );
    if let Some(v) = &r.violation {
        panic!("{v}");
    }
    assert!(!r.truncated, "the state bound cut the exploration short");
    r
}

/// the first violation.
pub fn explore<M: Model>(model: &M, max_states: usize) -> Report {
    let start = Instant::now();
    // fingerprint -> (parent fingerprint, action index into `steps`, depth)
    let mut seen: HashMap<u128, (u128, usize, usize)> = HashMap::new();
    let mut steps: Vec<M::Action> = Vec::new();
    let mut queue: VecDeque<(M::State, u128, usize)> = VecDeque::new();
    let mut roots: HashMap<u128, M::State> = HashMap::new();
    let mut report = Report {
        states: 0,
        transitions: 0,
        depth: 0,
        truncated: false,
        elapsed: Duration::ZERO,
        violation: None,
    };
    const ROOT: usize = usize::MAX;
    for s in model.init() {
        let fp = fingerprint(&model.canonical(&s));
        if seen.insert(fp, (fp, ROOT, 0)).is_none() {
            if let Some((p, why)) = model.check(&s) {
                report.violation = Some(Violation {
                    property: p,
                    why,
                    trace: vec![("initial".into(), model.describe(&s))],
                });
                report.states = seen.len();
                report.elapsed = start.elapsed();
                return report;
            }
            roots.insert(fp, s.clone());
            queue.push_back((s, fp, 0));
        }
    }
    let mut actions = Vec::new();
    while let Some((s, fp, depth)) = queue.pop_front() {
        actions.clear();
        model.actions(&s, &mut actions);
        for a in &actions {
            let Some(n) = model.next(&s, a) else { continue };
            report.transitions += 1;
            let nfp = fingerprint(&model.canonical(&n));
            if seen.contains_key(&nfp) {
                continue;
            }
            steps.push(a.clone());
            seen.insert(nfp, (fp, steps.len() - 1, depth + 1));
            report.depth = report.depth.max(depth + 1);
            if let Some((p, why)) = model.check(&n) {
                report.violation = Some(Violation {
                    property: p,
                    why,
                    trace: replay(model, &seen, &steps, &roots, nfp),
                });
                report.states = seen.len();
                report.elapsed = start.elapsed();
                return report;
            }
            if seen.len() >= max_states {
                report.truncated = true;
                break;
            }
            queue.push_back((n, nfp, depth + 1));
        }
        if report.truncated {
            break;
        }
    }
    report.states = seen.len();
    report.elapsed = start.elapsed();
    report
}

/// The path to `fp`, replayed from its initial state.
fn replay<M: Model>(
    model: &M,
    seen: &HashMap<u128, (u128, usize, usize)>,
    steps: &[M::Action],
    roots: &HashMap<u128, M::State>,
    fp: u128,
) -> Vec<(String, String)> {
    let mut path = Vec::new();
    let mut at = fp;
    loop {
        let (parent, step, _) = seen[&at];
        if step == usize::MAX {
            break;
        }
        path.push(step);
        at = parent;
    }
    path.reverse();
    let mut s = roots[&at].clone();
    let mut out = vec![("initial".to_string(), model.describe(&s))];
    for i in path {
        let a = &steps[i];
        match model.next(&s, a) {
            Some(n) => s = n,
            None => {
                out.push((format!("{a:?}"), "(replay diverged)".into()));
                break;
            }
        }
        out.push((format!("{a:?}"), model.describe(&s)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter that may go up by one or two up to `max`; "never 5".
    struct Counter {
        max: u8,
    }

    impl Model for Counter {
        type State = u8;
        type Action = u8;
        fn init(&self) -> Vec<u8> {
            vec![0]
        }
        fn actions(&self, s: &u8, out: &mut Vec<u8>) {
            if *s < self.max {
                out.extend([1, 2]);
            }
        }
        fn next(&self, s: &u8, a: &u8) -> Option<u8> {
            Some(s + a)
        }
        fn canonical(&self, s: &u8) -> String {
            s.to_string()
        }
        fn check(&self, s: &u8) -> Option<(&'static str, String)> {
            (*s == 5).then(|| ("never_five", "five".into()))
        }
        fn describe(&self, s: &u8) -> String {
            s.to_string()
        }
    }

    #[test]
    fn explores_every_state_and_finds_the_shortest_violation() {
        let r = explore(&Counter { max: 4 }, 100);
        let v = r.violation.expect("5 is reachable");
        assert_eq!(
            v.trace.len(),
            4,
            "0 -> 2 -> 4 -> 5 (or an equally short one): {v}"
        );
        let r = explore(&Counter { max: 3 }, 100);
        assert!(r.violation.is_none());
        assert_eq!(r.states, 5, "0..=4");
    }
}
