//! Group windows: which windows an event belongs to (TUMBLE, HOP, SESSION), in microseconds.
//!
//! Semantics follow Flink's group windows: windows are `[start, end)` aligned to the epoch;
//! a session window of an event at `t` starts as `[t, t + gap)`, and two session windows of the
//! same key merge when they touch or overlap.

/// A group window of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumble { size: i64 },
    Hop { slide: i64, size: i64 },
    Session { gap: i64 },
}

/// The (row, window) pairs of a batch: row `rows[i]` belongs to `[starts[i], ends[i])`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub rows: Vec<u32>,
    pub starts: Vec<i64>,
    pub ends: Vec<i64>,
}

impl Assignment {
    fn push(&mut self, row: usize, start: i64, end: i64) {
        self.rows.push(row as u32);
        self.starts.push(start);
        self.ends.push(end);
    }
}

impl WindowKind {
    /// The SQL function name that declares this window in GROUP BY.
    pub fn sql_name(&self) -> &'static str {
        match self {
            WindowKind::Tumble { .. } => "TUMBLE",
            WindowKind::Hop { .. } => "HOP",
            WindowKind::Session { .. } => "SESSION",
        }
    }

    /// The longest a window can be before it is known to be complete (sessions: the gap).
    pub fn size(&self) -> i64 {
        match *self {
            WindowKind::Tumble { size } | WindowKind::Hop { size, .. } => size,
            WindowKind::Session { gap } => gap,
        }
    }

    pub fn is_session(&self) -> bool {
        matches!(self, WindowKind::Session { .. })
    }

    /// The windows each event time belongs to. A HOP event belongs to `size / slide` windows
    /// (rounded up), so rows may repeat.
    pub fn assign(&self, event_times: &[i64]) -> Assignment {
        let mut out = Assignment::default();
        match *self {
            WindowKind::Tumble { size } => {
                for (row, &t) in event_times.iter().enumerate() {
                    let start = t - t.rem_euclid(size);
                    out.push(row, start, start + size);
                }
            }
            WindowKind::Hop { slide, size } => {
                for (row, &t) in event_times.iter().enumerate() {
                    let mut start = t - t.rem_euclid(slide);
                    while start > t - size {
                        out.push(row, start, start + size);
                        start -= slide;
                    }
                }
            }
            WindowKind::Session { gap } => {
                for (row, &t) in event_times.iter().enumerate() {
                    out.push(row, t, t + gap);
                }
            }
        }
        out
    }
}

/// Merges touching or overlapping intervals that share a group (`groups[i]` orders and
/// identifies the group of interval `i`) and returns each interval's merged bounds.
pub fn coalesce_sessions<G: Ord>(
    groups: &[G],
    starts: &[i64],
    ends: &[i64],
) -> (Vec<i64>, Vec<i64>) {
    let mut order: Vec<usize> = (0..starts.len()).collect();
    order.sort_unstable_by(|&a, &b| groups[a].cmp(&groups[b]).then(starts[a].cmp(&starts[b])));
    let mut merged_start = vec![0; starts.len()];
    let mut merged_end = vec![0; starts.len()];
    let mut run_begin = 0;
    while run_begin < order.len() {
        let first = order[run_begin];
        let (start, mut end) = (starts[first], ends[first]);
        let mut run_end = run_begin + 1;
        while run_end < order.len() {
            let next = order[run_end];
            if groups[next] != groups[first] || starts[next] > end {
                break;
            }
            end = end.max(ends[next]);
            run_end += 1;
        }
        for &i in &order[run_begin..run_end] {
            merged_start[i] = start;
            merged_end[i] = end;
        }
        run_begin = run_end;
    }
    (merged_start, merged_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumble_aligns_to_epoch_including_negative_times() {
        let a = WindowKind::Tumble { size: 10 }.assign(&[0, 9, 10, -1]);
        assert_eq!(a.starts, vec![0, 0, 10, -10]);
        assert_eq!(a.ends, vec![10, 10, 20, 0]);
    }

    #[test]
    fn hop_assigns_every_covering_window() {
        let a = WindowKind::Hop { slide: 5, size: 15 }.assign(&[12]);
        assert_eq!(a.rows, vec![0, 0, 0]);
        assert_eq!(a.starts, vec![10, 5, 0]);
        let a = WindowKind::Hop { slide: 10, size: 5 }.assign(&[7, 3]);
        assert_eq!((a.rows, a.starts), (vec![1], vec![0]));
    }

    #[test]
    fn sessions_merge_when_touching_and_only_within_a_group() {
        let groups = ["a", "a", "a", "b"];
        let (s, e) = coalesce_sessions(&groups, &[0, 10, 30, 5], &[10, 20, 40, 15]);
        assert_eq!(s, vec![0, 0, 30, 5]);
        assert_eq!(e, vec![20, 20, 40, 15]);
    }
}
