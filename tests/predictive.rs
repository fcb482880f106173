//! The predictive tick: features, predictor step, forecasts and reservations, end to end.

mod common;

use common::TempDir;
use shadowbucket::forecast::QuantileLevel;
use shadowbucket::model::features::{IntervalUsage, Scale, customer_features, global_features};
use shadowbucket::model::{LstmModel, ModelSpec, decode, step_one};
use shadowbucket::{
    Contract, CreateOptions, Engine, EngineConfig, Error, Event, Outcome, Predictor, Rate,
    ReservationPolicy, Target,
};

const SEC: u64 = 1_000_000_000;
const MIN: u64 = 60 * SEC;

fn cfg() -> EngineConfig {
    EngineConfig::new(10_000_000, Rate::tokens_per_sec(100_000))
}

fn contract() -> Contract {
    Contract::new(1_000_000, Rate::tokens_per_sec(10_000))
}

fn engine(dir: &TempDir, name: &str, spec: &ModelSpec) -> Engine {
    let opts = CreateOptions::new(64, cfg()).for_model(spec);
    Engine::create(dir.join(name), opts).expect("create")
}

/// Grants `n` tokens to `id` at `t` (must be granted); whether it came from the pool.
fn use_tokens(e: &mut Engine, id: u64, n: u64, t: u64) -> bool {
    let d = e.allocate(id, n, t).expect("allocate");
    assert!(
        matches!(d.outcome, Outcome::GrantedPool | Outcome::GrantedShadow),
        "{d:?}"
    );
    d.outcome == Outcome::GrantedPool
}

#[test]
fn last_value_reserves_last_interval_use() {
    let dir = TempDir::new("pred-last");
    let mut e = engine(&dir, "a.sb", &ModelSpec::default());
    e.add_customer(1, contract(), 0).unwrap();
    e.add_customer(2, contract(), 0).unwrap();
    e.set_predictor(Predictor::LastValue).unwrap();
    use_tokens(&mut e, 1, 6_000, SEC);
    use_tokens(&mut e, 1, 6_000, 2 * SEC);
    let rep = e.tick(MIN).unwrap();
    assert_eq!(rep.customers, 2);
    let f = e.forecast(1).unwrap();
    assert_eq!(f.horizons, vec![1, 5, 10, 15]);
    assert_eq!(f.values[0].p90, 12_000.0);
    // 12,000 tokens per 60 s interval = 200 tokens/s, one interval of capacity
    let v = e.customer(1).unwrap();
    assert_eq!(v.reserved_rate, Rate::tokens_per_sec(200));
    assert_eq!(v.shadow_capacity, 12_000);
    assert_eq!(e.customer(2).unwrap().reserved_rate.micros(), 0);
    // the scale is seeded by the first interval with use
    assert_eq!(f.scale, 12_000.0);
    // the closed interval, as the predictor saw it
    let closed = e.closed_usage();
    assert_eq!(closed.len(), 2);
    assert_eq!(closed[0].0, 1);
    assert_eq!(closed[0].1.tokens, 12_000.0);
    assert_eq!(closed[0].1.requests, 2.0);
    assert_eq!(closed[0].1.fallbacks, 2.0);
    assert_eq!(closed[1].1.tokens, 0.0);
    // the next request is served from the reservation
    let d = e.allocate(1, 100, MIN + 10 * SEC).unwrap();
    assert_eq!(d.outcome, Outcome::GrantedShadow);
    assert!(e.ledger(MIN + 10 * SEC).balanced());
    e.check().unwrap();
}

#[test]
fn policy_headroom_mean_and_contract_cap() {
    let dir = TempDir::new("pred-policy");
    let mut e = engine(&dir, "a.sb", &ModelSpec::default());
    // a small contract: 50 tokens/s
    e.add_customer(1, Contract::new(100_000, Rate::tokens_per_sec(50)), 0)
        .unwrap();
    e.add_customer(2, contract(), 0).unwrap();
    e.set_predictor(Predictor::LastValue).unwrap();
    e.set_policy(ReservationPolicy {
        target: Target::Mean,
        headroom: 1.5,
        capacity_intervals: 0.5,
        ..ReservationPolicy::default()
    })
    .unwrap();
    use_tokens(&mut e, 1, 6_000, SEC);
    use_tokens(&mut e, 2, 6_000, SEC);
    e.tick(MIN).unwrap();
    // customer 1 would get 150 tokens/s but its contract is 50
    assert_eq!(
        e.customer(1).unwrap().reserved_rate,
        Rate::tokens_per_sec(50)
    );
    let v2 = e.customer(2).unwrap();
    assert_eq!(v2.reserved_rate, Rate::tokens_per_sec(150));
    assert_eq!(v2.shadow_capacity, 4_500);
    // bad policies
    for bad in [
        ReservationPolicy {
            headroom: -1.0,
            ..ReservationPolicy::default()
        },
        ReservationPolicy {
            horizon: 4,
            ..ReservationPolicy::default()
        },
        ReservationPolicy {
            target: Target::Scenario { probability: 0.0 },
            ..ReservationPolicy::default()
        },
    ] {
        assert!(matches!(e.set_policy(bad), Err(Error::InvalidArgument(_))));
    }
}

#[test]
fn reservations_stay_within_the_budget() {
    let dir = TempDir::new("pred-budget");
    let mut e = engine(&dir, "a.sb", &ModelSpec::default());
    for id in 0..40 {
        e.add_customer(id, contract(), 0).unwrap();
    }
    e.set_predictor(Predictor::LastValue).unwrap();
    for id in 0..40 {
        // 40 x 200,000 tokens per minute = 133,333 tokens/s > the 80,000 reservable
        use_tokens(&mut e, id, 200_000, SEC + id);
    }
    let rep = e.tick(MIN).unwrap();
    assert!(rep.cut_back);
    assert!(rep.reserved_rate_micros <= cfg().rate_budget());
    assert!(rep.reserved_capacity <= cfg().capacity_budget());
    assert!(e.ledger(MIN).balanced());
    e.check().unwrap();
}

/// The LSTM tick equals the reference step and decoding applied to features built by hand.
#[test]
fn lstm_tick_matches_the_reference_pipeline() {
    let spec = ModelSpec {
        hidden: 8,
        layers: 2,
        horizons: vec![1, 3],
        feeds: vec!["news".into()],
    };
    let mut model = LstmModel::random(spec.clone(), 11).unwrap();
    model.scaling.mean[0] = 0.3;
    model.scaling.std[0] = 2.0;
    let dir = TempDir::new("pred-lstm");
    let mut e = engine(&dir, "a.sb", &spec);
    e.add_customer(5, contract(), 0).unwrap();
    e.add_customer(6, contract(), 0).unwrap();
    e.set_predictor(Predictor::Lstm(Box::new(model.clone())))
        .unwrap();
    e.set_signal("news", 2.5).unwrap();
    e.add_event(Event {
        customer: Some(5),
        kind: 1,
        intensity: 1.5,
        start_ns: 0,
        end_ns: 10 * MIN,
    })
    .unwrap();
    e.add_event(Event {
        customer: None,
        kind: 2,
        intensity: 0.5,
        start_ns: MIN,
        end_ns: 2 * MIN,
    })
    .unwrap();

    let mut state = [vec![0f32; spec.state_dim()], vec![0f32; spec.state_dim()]];
    let mut scale = [Scale::default(); 2];
    let beta = model.scaling.scale_beta();
    let uses = [[3_000u64, 0], [5_000, 700], [0, 900]];
    for (k, u) in uses.iter().enumerate() {
        let t0 = k as u64 * MIN;
        let mut fell_back = [false; 2];
        for (i, &n) in u.iter().enumerate() {
            if n > 0 {
                fell_back[i] = use_tokens(&mut e, 5 + i as u64, n, t0 + SEC);
            }
        }
        let now = t0 + MIN;
        e.tick(now).unwrap();
        let ev_global = if (MIN..2 * MIN).contains(&now) {
            0.5
        } else {
            0.0
        };
        let mut glob = vec![0f32; 6];
        global_features(now, ev_global, &[2.5], &mut glob);
        for i in 0..2 {
            let usage = IntervalUsage {
                tokens: u[i] as f64,
                requests: (u[i] > 0) as u64 as f64,
                fallbacks: fell_back[i] as u64 as f64,
                ..Default::default()
            };
            let ev = if i == 0 { 1.5 } else { 0.0 };
            let mut x: Vec<f32> = customer_features(&usage, &scale[i], ev).to_vec();
            x.extend_from_slice(&glob);
            let s_old = scale[i].s();
            scale[i].update(&usage, beta);
            let mut y = vec![0f32; spec.head_dim()];
            step_one(&model, &x, &mut state[i], &mut y);
            let mut f = vec![0f32; spec.forecast_dim()];
            let mut sc = [0f32; 4];
            decode(&y, s_old, x[0], &mut f, &mut sc);
            let got = e.forecast(5 + i as u64).unwrap();
            for (j, q) in got.values.iter().enumerate() {
                let want = &f[j * 4..(j + 1) * 4];
                let have = [q.mean, q.p50, q.p90, q.p99];
                for (a, b) in have.iter().zip(want) {
                    let tol = 1e-4 * b.abs().max(1.0) as f64;
                    assert!(
                        (a - *b as f64).abs() <= tol,
                        "tick {k} customer {i}: {a} vs {b}"
                    );
                }
            }
            for (a, b) in got.scenario.iter().zip(&sc) {
                assert!((a - b).abs() < 1e-5);
            }
            assert!((got.scale - scale[i].tokens).abs() <= 1e-3 * scale[i].tokens.max(1.0));
        }
    }
    assert!(e.ledger(3 * MIN).balanced());
    e.check().unwrap();
}

/// The recurrent state lives in the store: reopening and setting the same model resumes exactly.
#[test]
fn lstm_state_survives_reopen() {
    let spec = ModelSpec {
        hidden: 4,
        ..ModelSpec::default()
    };
    let model = LstmModel::random(spec.clone(), 3).unwrap();
    let dir = TempDir::new("pred-reopen");
    let mut a = engine(&dir, "a.sb", &spec);
    let mut b = engine(&dir, "b.sb", &spec);
    for e in [&mut a, &mut b] {
        e.add_customer(1, contract(), 0).unwrap();
        e.set_predictor(Predictor::Lstm(Box::new(model.clone())))
            .unwrap();
        use_tokens(e, 1, 4_000, SEC);
        e.tick(MIN).unwrap();
    }
    drop(a);
    let mut a = Engine::open(dir.join("a.sb")).unwrap();
    a.set_predictor(Predictor::Lstm(Box::new(model.clone())))
        .unwrap();
    for e in [&mut a, &mut b] {
        use_tokens(e, 1, 9_000, MIN + SEC);
        e.tick(2 * MIN).unwrap();
    }
    assert_eq!(a.forecast(1).unwrap(), b.forecast(1).unwrap());
    assert_eq!(
        a.customer(1).unwrap().reserved_rate,
        b.customer(1).unwrap().reserved_rate
    );
    // a different model after a reset starts from zero state: forecasts differ
    a.reset_model_state().unwrap();
    b.reset_model_state().unwrap();
    let other = LstmModel::random(spec, 4).unwrap();
    a.set_predictor(Predictor::Lstm(Box::new(other))).unwrap();
    a.tick(3 * MIN).unwrap();
    b.tick(3 * MIN).unwrap();
    assert_ne!(a.forecast(1).unwrap(), b.forecast(1).unwrap());
}

#[test]
fn scenario_target_and_quantile_targets_order() {
    let dir = TempDir::new("pred-scen");
    let mut e = engine(&dir, "a.sb", &ModelSpec::default());
    e.add_customer(1, contract(), 0).unwrap();
    e.set_predictor(Predictor::Ewma { alpha: 0.5 }).unwrap();
    let mut rates = Vec::new();
    for target in [
        Target::Quantile(QuantileLevel::P50),
        Target::Quantile(QuantileLevel::P90),
        Target::Quantile(QuantileLevel::P99),
    ] {
        e.set_policy(ReservationPolicy {
            target,
            ..ReservationPolicy::default()
        })
        .unwrap();
        let t = (rates.len() as u64 + 1) * MIN;
        use_tokens(&mut e, 1, 1_000 + 2_000 * rates.len() as u64, t - 30 * SEC);
        e.tick(t).unwrap();
        let f = e.forecast(1).unwrap();
        let q = f.values[0];
        assert!(q.p50 <= q.p90 && q.p90 <= q.p99);
        let want = match target {
            Target::Quantile(l) => q.get(l),
            _ => unreachable!(),
        };
        let v = e.customer(1).unwrap();
        let got = v.reserved_rate.micros() as f64 / 1e6 * 60.0;
        assert!(
            (got - want).abs() <= 1e-3 * want.max(1.0),
            "{got} vs {want}"
        );
        // baselines give a one-hot scenario
        assert_eq!(f.scenario.iter().sum::<f32>(), 1.0);
        rates.push(v.reserved_rate);
    }
    e.set_policy(ReservationPolicy {
        target: Target::Scenario { probability: 1.0 },
        ..ReservationPolicy::default()
    })
    .unwrap();
    e.tick(4 * MIN).unwrap();
    let f = e.forecast(1).unwrap();
    let v = e.customer(1).unwrap();
    let got = v.reserved_rate.micros() as f64 / 1e6 * 60.0;
    let k = f.scenario.iter().position(|&p| p == 1.0).unwrap();
    let want = match k {
        3 => f.values[0].p99,
        k => [0.5, 1.5, 3.0][k] * f.scale.max(1.0) as f64,
    };
    assert!(
        (got - want).abs() <= 1e-3 * want.max(1.0),
        "{got} vs {want}"
    );
}

#[test]
fn bad_predictors_signals_and_stores() {
    let dir = TempDir::new("pred-bad");
    let plain = CreateOptions::new(8, cfg()).without_model();
    let mut e = Engine::create(dir.join("plain.sb"), plain).unwrap();
    assert!(matches!(e.tick(MIN), Err(Error::InvalidArgument(m)) if m.contains("tick_with")));
    assert!(e.set_predictor(Predictor::LastValue).is_err());
    let mut e = engine(&dir, "a.sb", &ModelSpec::default());
    let big = LstmModel::random(
        ModelSpec {
            hidden: 64,
            ..ModelSpec::default()
        },
        1,
    )
    .unwrap();
    assert!(matches!(
        e.set_predictor(Predictor::Lstm(Box::new(big))),
        Err(Error::InvalidArgument(m)) if m.contains("for_model")
    ));
    assert!(e.set_predictor(Predictor::Ewma { alpha: 0.0 }).is_err());
    assert!(
        e.set_predictor(Predictor::SeasonalNaive { period: 0 })
            .is_err()
    );
    assert!(e.set_signal("", 1.0).is_err());
    assert!(e.set_signal("a,b", 1.0).is_err());
    assert!(e.set_signal("news", f32::INFINITY).is_err());
    assert!(e.remove_event(99).is_err());
    // still usable
    e.add_customer(1, contract(), 0).unwrap();
    e.tick(MIN).unwrap();
    drop(e);
    let mut ro = Engine::open_read_only(dir.join("a.sb")).unwrap();
    assert!(matches!(ro.tick(2 * MIN), Err(Error::ReadOnly)));
    assert!(matches!(ro.set_signal("news", 1.0), Err(Error::ReadOnly)));
}

#[test]
fn events_and_signals_survive_reopen() {
    let dir = TempDir::new("pred-sidecar");
    let mut e = engine(&dir, "a.sb", &ModelSpec::default());
    e.add_customer(1, contract(), 0).unwrap();
    let keep = e
        .add_event(Event {
            customer: Some(1),
            kind: 7,
            intensity: 2.0,
            start_ns: 0,
            end_ns: 100 * MIN,
        })
        .unwrap();
    let gone = e
        .add_event(Event {
            customer: None,
            kind: 1,
            intensity: 1.0,
            start_ns: 0,
            end_ns: 30 * SEC,
        })
        .unwrap();
    e.set_signal("news", 4.0).unwrap();
    // the tick drops the event that ended
    e.tick(MIN).unwrap();
    drop(e);
    let ro = Engine::open_read_only(dir.join("a.sb")).unwrap();
    let ids: Vec<u64> = ro.events().iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![keep]);
    assert_eq!(ro.signals().get("news"), Some(&4.0));
    drop(ro);
    let mut e = Engine::open(dir.join("a.sb")).unwrap();
    assert_eq!(e.events().len(), 1);
    assert!(e.remove_event(gone).is_err());
    // ids keep counting after a reopen
    let next = e
        .add_event(Event {
            customer: None,
            kind: 1,
            intensity: 1.0,
            start_ns: 0,
            end_ns: 1,
        })
        .unwrap();
    assert!(next > gone);
    drop(e);
    // a new store at the same path starts without them
    std::fs::remove_file(dir.join("a.sb")).unwrap();
    let e = engine(&dir, "a.sb", &ModelSpec::default());
    assert!(e.events().is_empty());
    assert!(e.signals().is_empty());
}

/// A model saved to a safetensors file and loaded into the engine forecasts exactly as the model
/// set directly; a bad file is refused and leaves the predictor as it was.
#[test]
fn load_model_from_file() {
    let spec = ModelSpec {
        hidden: 6,
        ..ModelSpec::default()
    };
    let model = LstmModel::random(spec.clone(), 21).unwrap();
    let dir = TempDir::new("pred-load");
    let file = dir.join("m.safetensors");
    model.save(&file).unwrap();
    let mut a = engine(&dir, "a.sb", &spec);
    let mut b = engine(&dir, "b.sb", &spec);
    a.load_model(&file).unwrap();
    b.set_predictor(Predictor::Lstm(Box::new(model))).unwrap();
    for e in [&mut a, &mut b] {
        e.add_customer(3, contract(), 0).unwrap();
        use_tokens(e, 3, 2_500, SEC);
        e.tick(MIN).unwrap();
    }
    assert_eq!(a.forecast(3).unwrap(), b.forecast(3).unwrap());
    assert!(a.predictor_name().starts_with("lstm(hidden=6"));
    std::fs::write(dir.join("junk.safetensors"), b"not a model").unwrap();
    assert!(a.load_model(dir.join("junk.safetensors")).is_err());
    assert!(a.load_model(dir.join("missing.safetensors")).is_err());
    assert!(a.predictor_name().starts_with("lstm(hidden=6"));
}
