//! Latency summaries: nearest-rank percentiles over recorded samples. Pure; must not time
//! anything itself.

use std::time::Duration;

use serde::Serialize;

/// p50/p90/p99/max and mean of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// How many samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

/// Milliseconds of a duration, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// The nearest-rank percentile `p` (0–100) of sorted values; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorted milliseconds of `samples`.
pub fn sorted_ms(samples: &[Duration]) -> Vec<f64> {
    sorted(samples.iter().copied().map(ms).collect())
}

/// `values`, sorted ascending (NaN last).
pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// The summary of samples given in milliseconds.
pub fn summarize_ms(values: &[f64]) -> Summary {
    let sorted = sorted(values.to_vec());
    let n = sorted.len();
    let mean_ms = if n == 0 {
        0.0
    } else {
        sorted.iter().sum::<f64>() / n as f64
    };
    Summary {
        n,
        p50_ms: percentile(&sorted, 50.0),
        p90_ms: percentile(&sorted, 90.0),
        p99_ms: percentile(&sorted, 99.0),
        max_ms: sorted.last().copied().unwrap_or(0.0),
        mean_ms,
    }
}

/// The summary of duration samples.
pub fn summarize(samples: &[Duration]) -> Summary {
    summarize_ms(&samples.iter().copied().map(ms).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize_ms(&values);
        assert_eq!(
            (s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(s.n, 100);
        assert_eq!(summarize_ms(&[]).n, 0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
