//! `shadowbucket inspect`: a store file's header, configuration, counters, customers and flagged
//! customers. The store is opened read-only, without its lock: nothing is written.

use serde_json::{Value, json};
use shadowbucket::CustomerView;
use shadowbucket::fixed::FEMTO_PER_TOKEN;

use crate::args::InspectArgs;
use crate::out::outln;
use crate::{CliError, CmdResult};

fn tokens(femto: i128) -> f64 {
    femto as f64 / FEMTO_PER_TOKEN as f64
}

fn customer_json(v: &CustomerView) -> Value {
    let u = &v.last_interval;
    json!({
        "id": v.id,
        "slot": v.slot,
        "burst": v.contract.burst,
        "rate_tokens_per_s": v.contract.rate.as_tokens_per_sec_f64(),
        "weight": v.contract.weight,
        "standard_tokens": tokens(v.std_femto),
        "shadow_tokens": tokens(v.shadow_femto),
        "reserved_rate_tokens_per_s": v.reserved_rate.as_tokens_per_sec_f64(),
        "shadow_capacity": v.shadow_capacity,
        "flagged": v.flagged,
        "outstanding": v.outstanding,
        "last_interval": {
            "granted_shadow": u.granted_shadow,
            "granted_pool": u.granted_pool,
            "requests": u.requests,
            "fallbacks": u.fallbacks,
            "denied_customer": u.denied_customer,
            "denied_pool": u.denied_pool,
        },
        "forecast": v.forecast,
        "scenarios": v.scenarios,
    })
}

/// Runs `inspect`.
pub fn run(a: InspectArgs) -> CmdResult {
    let e = crate::open_store_read_only(&a.store)?;
    let detail = match a.customer {
        Some(id) => Some(
            e.customer(id)
                .map_err(|err| CliError::Failed(format!("{}: {err}", a.store.display())))?,
        ),
        None => None,
    };
    let cfg = e.config();
    let dims = e.dims();
    let st = e.stats();
    let c = st.counters;
    let ids = e.customer_ids();
    let flagged = e.flagged();
    let listed: Vec<CustomerView> = ids
        .iter()
        .take(a.customers)
        .filter_map(|&id| e.customer(id).ok())
        .collect();
    let check = e.check().err().map(|e| e.to_string());
    if a.json {
        let v = json!({
            "store": a.store.display().to_string(),
            "capacity": e.capacity(),
            "customers": st.customers,
            "dims": {
                "state": dims.state_dim, "forecast": dims.forecast_dim,
                "scenario": dims.scenario_dim, "scale": dims.scale_dim,
            },
            "config": {
                "pool_burst": cfg.pool_burst,
                "pool_rate_tokens_per_s": cfg.pool_rate.as_tokens_per_sec_f64(),
                "alpha_ppm": cfg.alpha_ppm,
                "interval_ns": cfg.interval_ns,
                "contention_high_ppm": cfg.contention_high_ppm,
                "contention_low_ppm": cfg.contention_low_ppm,
                "contention_ticks": cfg.contention_ticks,
                "contention_min_requests": cfg.contention_min_requests,
            },
            "pool_tokens": tokens(st.pool_femto),
            "reserved_rate_tokens_per_s": st.reserved_rate_micros as f64 / 1e6,
            "reserved_capacity": st.reserved_capacity,
            "last_committed": st.last_committed,
            "last_rolled_back": st.last_rolled_back,
            "counters": {
                "requests": c.requests, "shadow_grants": c.shadow_grants,
                "pool_grants": c.pool_grants, "denied_customer": c.denied_customer,
                "denied_pool": c.denied_pool, "exceeds_burst": c.exceeds_burst,
                "unknown": c.unknown, "invalid": c.invalid,
                "tokens_shadow": c.tokens_shadow, "tokens_pool": c.tokens_pool,
                "tokens_refunded": c.tokens_refunded, "tokens_debt": c.tokens_debt,
                "settles": c.settles, "bumps": c.bumps, "ticks": c.ticks,
                "batches": c.batches, "flagged": c.flagged,
            },
            "flagged": flagged.iter().take(a.flagged).collect::<Vec<_>>(),
            "flagged_count": flagged.len(),
            "listed": listed.iter().map(customer_json).collect::<Vec<_>>(),
            "customer": detail.as_ref().map(customer_json),
            "check": check.clone().unwrap_or_else(|| "ok".into()),
        });
        outln!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
        return Ok(0);
    }
    outln!("store         {}", a.store.display());
    outln!(
        "customers     {} in {} slots; forecaster columns: state {}, forecast {}, scenario {}, scale {}",
        st.customers,
        e.capacity(),
        dims.state_dim,
        dims.forecast_dim,
        dims.scenario_dim,
        dims.scale_dim
    );
    outln!(
        "pool          burst {} tokens, rate {} tokens/s, level {:.0} tokens",
        cfg.pool_burst,
        cfg.pool_rate.as_tokens_per_sec_f64(),
        tokens(st.pool_femto)
    );
    outln!(
        "reservations  alpha {:.3}, reserved {:.1} tokens/s, shadow capacity {} tokens",
        cfg.alpha_ppm as f64 / 1e6,
        st.reserved_rate_micros as f64 / 1e6,
        st.reserved_capacity
    );
    outln!(
        "tick          every {} s; contention flag above {:.0}% for {} ticks, cleared below {:.0}%",
        cfg.interval_ns as f64 / 1e9,
        cfg.contention_high_ppm as f64 / 1e4,
        cfg.contention_ticks,
        cfg.contention_low_ppm as f64 / 1e4
    );
    outln!(
        "transactions last committed {}, last rolled back {}",
        st.last_committed,
        if st.last_rolled_back == 0 {
            "none".to_string()
        } else {
            st.last_rolled_back.to_string()
        }
    );
    outln!(
        "check         {}",
        check.as_deref().unwrap_or("ok (consistent)")
    );
    outln!();
    outln!("counters");
    for (name, v) in [
        ("requests", c.requests),
        ("granted from shadow", c.shadow_grants),
        ("granted from pool", c.pool_grants),
        ("denied: customer limit", c.denied_customer),
        ("denied: pool exhausted", c.denied_pool),
        ("exceeds burst", c.exceeds_burst),
        ("unknown customer", c.unknown),
        ("invalid", c.invalid),
        ("tokens from shadow", c.tokens_shadow),
        ("tokens from pool", c.tokens_pool),
        ("tokens refunded", c.tokens_refunded),
        ("tokens as debt", c.tokens_debt),
        ("settles", c.settles),
        ("reservation bumps", c.bumps),
        ("ticks", c.ticks),
        ("batches", c.batches),
    ] {
        outln!("  {name:<24} {v:>16}");
    }
    outln!();
    let shown: Vec<String> = flagged
        .iter()
        .take(a.flagged)
        .map(|i| i.to_string())
        .collect();
    outln!(
        "flagged       {} customers{}{}",
        flagged.len(),
        if shown.is_empty() { "" } else { ": " },
        shown.join(", ")
    );
    if flagged.len() > shown.len() {
        outln!("              ... and {} more", flagged.len() - shown.len());
    }
    outln!();
    outln!(
        "customers (first {} of {}, slot order)",
        listed.len(),
        ids.len()
    );
    outln!(
        "  {:>12} {:>8} {:>12} {:>12} {:>12} {:>12} {:>12} {:>4} {:>12}",
        "id",
        "slot",
        "burst",
        "rate/s",
        "standard",
        "shadow",
        "reserved/s",
        "flag",
        "last used"
    );
    for v in &listed {
        let u = &v.last_interval;
        outln!(
            "  {:>12} {:>8} {:>12} {:>12.1} {:>12.0} {:>12.0} {:>12.1} {:>4} {:>12}",
            v.id,
            v.slot,
            v.contract.burst,
            v.contract.rate.as_tokens_per_sec_f64(),
            tokens(v.std_femto),
            tokens(v.shadow_femto),
            v.reserved_rate.as_tokens_per_sec_f64(),
            if v.flagged { "yes" } else { "" },
            u.granted_shadow + u.granted_pool
        );
    }
    if let Some(v) = detail {
        outln!();
        outln!("customer {}", v.id);
        outln!(
            "{}",
            serde_json::to_string_pretty(&customer_json(&v)).map_err(|e| e.to_string())?
        );
    }
    Ok(0)
}
