//! `Engine::add_customers`: one transaction that is all or nothing, and the same store as one
//! `add_customer` call per customer.

mod common;

use common::TempDir;
use shadowbucket::{Contract, CreateOptions, Engine, EngineConfig, Error, Rate};

fn cfg() -> EngineConfig {
    EngineConfig::new(1_000_000, Rate::tokens_per_sec(10_000))
}

fn contracts(n: u64) -> Vec<(u64, Contract)> {
    (0..n)
        .map(|i| {
            (
                1_000 + i * 3,
                Contract::new(10 + i, Rate::tokens_per_sec(1 + i % 7)).with_weight((i % 3) as u16),
            )
        })
        .collect()
}

#[test]
fn bulk_add_equals_one_at_a_time() {
    let dir = TempDir::new("bulk");
    let mut a = Engine::create(dir.join("a.sb"), CreateOptions::new(64, cfg())).unwrap();
    let mut b = Engine::create(dir.join("b.sb"), CreateOptions::new(64, cfg())).unwrap();
    // some history first, so the free-slot stack is not in its initial order
    for e in [&mut a, &mut b] {
        for id in 0..10 {
            e.add_customer(id, Contract::new(5, Rate::tokens_per_sec(1)), 0)
                .unwrap();
        }
        for id in [3, 7, 1] {
            e.remove_customer(id, 5).unwrap();
        }
    }
    let cs = contracts(40);
    let slots = a.add_customers(&cs, 9).unwrap();
    let one: Vec<u32> = cs
        .iter()
        .map(|&(id, c)| b.add_customer(id, c, 9).unwrap())
        .collect();
    assert_eq!(slots, one);
    for &(id, _) in &cs {
        assert_eq!(a.customer(id).unwrap(), b.customer(id).unwrap());
    }
    assert_eq!(a.customer_ids(), b.customer_ids());
    assert_eq!(a.stats().counters, b.stats().counters);
    a.check().unwrap();
    assert_eq!(a.ledger(9), b.ledger(9));
}

#[test]
fn bulk_add_is_all_or_nothing() {
    let dir = TempDir::new("bulk-none");
    let mut e = Engine::create(dir.join("e.sb"), CreateOptions::new(16, cfg())).unwrap();
    e.add_customer(5, Contract::new(5, Rate::tokens_per_sec(1)), 0)
        .unwrap();
    let before = (e.customer_ids(), e.stats());
    let bad: [(&str, Vec<(u64, Contract)>); 4] = [
        (
            "an id listed twice",
            vec![(1, Contract::new(1, Rate::tokens_per_sec(1))); 2],
        ),
        (
            "an id already there",
            vec![
                (1, Contract::new(1, Rate::tokens_per_sec(1))),
                (5, Contract::new(1, Rate::tokens_per_sec(1))),
            ],
        ),
        (
            "a bad contract last",
            vec![
                (1, Contract::new(1, Rate::tokens_per_sec(1))),
                (2, Contract::new(0, Rate::tokens_per_sec(1))),
            ],
        ),
        ("more than the free slots", contracts(16)),
    ];
    for (what, list) in bad {
        let r = e.add_customers(&list, 1);
        match what {
            "more than the free slots" => {
                assert!(matches!(r, Err(Error::StoreFull { .. })), "{what}: {r:?}")
            }
            "a bad contract last" => {
                assert!(matches!(r, Err(Error::InvalidArgument(_))), "{what}: {r:?}")
            }
            _ => assert!(
                matches!(r, Err(Error::DuplicateCustomer(_))),
                "{what}: {r:?}"
            ),
        }
        assert_eq!(
            (e.customer_ids(), e.stats()),
            before,
            "{what} changed the store"
        );
    }
    e.check().unwrap();
    // and exactly the free slots fit
    assert_eq!(e.add_customers(&contracts(15), 2).unwrap().len(), 15);
    assert_eq!(e.len(), 16);
}
