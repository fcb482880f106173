//! The four baseline forecasters on the real ServeGen `m-small` trace (43 tenants, 14 days of
//! 10-minute windows; see `shared/data/README.md` for its source and licence): train on the first
//! 10 days, score the last 4 at horizons 1 and 2, print the table, and check that the numbers are
//! sane and that last-value and EWMA beat same-time-yesterday on p50 pinball loss, as the data
//! README's autocorrelations predict.

use std::path::PathBuf;

use shadowbucket::forecast::{
    Autopilot, Ewma, Forecaster, LastValue, Report, SeasonalNaive, UsageHistory,
    WINDOWS_PER_DAY_10MIN, evaluate, format_reports,
};

const TRAIN_WINDOWS: usize = 10 * WINDOWS_PER_DAY_10MIN;
const HORIZONS: [usize; 2] = [1, 2];
const EWMA_ALPHA: f64 = 0.5;

fn trace() -> UsageHistory {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/servegen/m-small.csv");
    assert!(
        path.is_file(),
        "the ServeGen trace {} is missing: this test needs the project's shared data \
         (shared/data/servegen/m-small.csv next to the repository)",
        path.display()
    );
    UsageHistory::from_servegen_csv(&path)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

#[test]
fn baselines_on_servegen_m_small() {
    let history = trace();
    assert_eq!(history.num_customers(), 43);
    assert_eq!(history.num_windows(), 14 * WINDOWS_PER_DAY_10MIN);
    assert_eq!(history.window_s(), 600);

    let mut forecasters: Vec<Box<dyn Forecaster>> = vec![
        Box::new(LastValue::new()),
        Box::new(Ewma::new(EWMA_ALPHA).unwrap()),
        Box::new(SeasonalNaive::new(WINDOWS_PER_DAY_10MIN).unwrap()),
        Box::new(Autopilot::default()),
    ];
    let reports: Vec<Report> = forecasters
        .iter_mut()
        .map(|f| evaluate(&history, f.as_mut(), TRAIN_WINDOWS, &HORIZONS).unwrap())
        .collect();
    println!(
        "ServeGen m-small: {} customers, train {} windows (10 days), test {} windows (4 days); \
         tokens per 10-minute window; reservation = p90\n{}",
        history.num_customers(),
        TRAIN_WINDOWS,
        history.num_windows() - TRAIN_WINDOWS,
        format_reports(&reports)
    );

    let test_samples = (history.num_customers() * (history.num_windows() - TRAIN_WINDOWS)) as u64;
    for r in &reports {
        assert_eq!(r.horizons.len(), HORIZONS.len());
        for h in &r.horizons {
            let m = &h.metrics;
            let name = format!("{} h={}", r.forecaster, h.horizon);
            assert_eq!(m.samples, test_samples, "{name}");
            for (what, v) in [
                ("mean_used", m.mean_used),
                ("mae", m.mae),
                ("pinball50", m.pinball_p50),
                ("pinball90", m.pinball_p90),
                ("pinball99", m.pinball_p99),
                ("slack", m.slack),
                ("over", m.over_reserved),
            ] {
                assert!(v.is_finite(), "{name}: {what} = {v}");
            }
            for (what, v) in [
                ("coverage90", m.coverage_p90),
                ("coverage99", m.coverage_p99),
                ("exceed", m.exceed_rate),
            ] {
                assert!((0.0..=1.0).contains(&v), "{name}: {what} = {v}");
            }
            assert!(m.mae >= 0.0 && m.pinball_p50 >= 0.0, "{name}");
            assert!(m.coverage_p99 >= m.coverage_p90, "{name}");
        }
    }

    let p50 = |i: usize, h: usize| reports[i].horizons[h].metrics.pinball_p50;
    assert!(
        reports[0].horizons[0].metrics.mae > 0.0,
        "last-value MAE must be > 0"
    );
    for (h, horizon) in HORIZONS.iter().enumerate() {
        let seasonal = p50(2, h);
        assert!(
            p50(0, h) < seasonal,
            "h={horizon}: last-value p50 pinball {} should beat seasonal-naive {seasonal}",
            p50(0, h)
        );
        assert!(
            p50(1, h) < seasonal,
            "h={horizon}: ewma p50 pinball {} should beat seasonal-naive {seasonal}",
            p50(1, h)
        );
    }
}
