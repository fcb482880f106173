/* The whole life cycle of a store through the C ABI: create, customers, single and batch
 * allocation, tick, settle, queries, stats, ledger, grow, flush, close, reopen, snapshot,
 * read-only.
 * Usage: lifecycle DIR (an empty directory for the store files). */
#include "test_util.h"

static __int128 femto(sb_femto f) { return (__int128)(((unsigned __int128)(uint64_t)f.hi << 64) | f.lo); }

static const __int128 FEMTO_PER_TOKEN = (__int128)1000000000000000ll;

static __int128 floor_div(__int128 a, __int128 b) {
  __int128 q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  char path[4096];
  sb_test_path(path, sizeof path, argv[1], "life.sb");

  const char *version = sb_version();
  CHECK(version != NULL && strlen(version) > 0);

  /* create */
  sb_create_options opts;
  CHECK_OK(sb_create_options_default(16, 1000000, TOKENS_PER_SEC(100000), &opts));
  CHECK(opts.config.alpha_ppm == 800000 && opts.config.interval_ns == 60 * SECOND);
  CHECK(opts.forecast_dim >= 4 && opts.forecast_dim <= 64 && opts.scenario_dim == 4);
  sb_engine *eng = NULL;
  CHECK_OK(sb_engine_create(path, &opts, &eng));
  CHECK(eng != NULL);

  sb_config cfg;
  CHECK_OK(sb_engine_config(eng, &cfg));
  CHECK(cfg.pool_burst == 1000000 && cfg.pool_rate_micros == TOKENS_PER_SEC(100000));
  sb_dims dims;
  CHECK_OK(sb_engine_dims(eng, &dims));
  CHECK(dims.capacity == 16 && dims.forecast_dim == opts.forecast_dim && dims.scenario_dim == 4);

  /* customers: one, then two in one transaction */
  sb_contract c = {.burst = 5000, .rate_micros = TOKENS_PER_SEC(100), .weight = 1};
  uint32_t slot42 = 0;
  CHECK_OK(sb_engine_add_customer(eng, 42, &c, 0, &slot42));
  uint64_t ids[2] = {43, 44};
  sb_contract cs[2] = {c, c};
  uint32_t slots[2] = {0, 0};
  CHECK_OK(sb_engine_add_customers(eng, ids, 2, cs, 2, 0, slots, 2));
  CHECK(slots[0] != slots[1] && slots[0] != slot42 && slots[0] < 16 && slots[1] < 16);
  uint32_t s = 0;
  CHECK_OK(sb_engine_slot_of(eng, 43, &s));
  CHECK(s == slots[0]);

  /* no reservation yet: a request falls back to the pool */
  sb_decision d;
  CHECK_OK(sb_engine_allocate(eng, 42, 100, 1000, &d));
  CHECK(d.outcome == SB_OUTCOME_GRANTED_POOL && d.retry_after_ns == 0);

  /* tick: reserve 50 tokens/s with room for 1000 tokens for customer 42 */
  sb_reservation res = {.slot = slot42, .rate_micros = TOKENS_PER_SEC(50), .capacity = 1000};
  sb_tick_report rep;
  CHECK_OK(sb_engine_tick_with_reservations(eng, 2000, &res, 1, &rep));
  CHECK(rep.customers == 3 && rep.reserved_rate_micros == TOKENS_PER_SEC(50));
  CHECK(rep.reserved_capacity == 1000 && !rep.cut_back && rep.asked_rate_micros == TOKENS_PER_SEC(50));

  /* a second later 50 reserved tokens stand ready: the fast path */
  uint64_t t1 = SECOND + 2000;
  CHECK_OK(sb_engine_allocate(eng, 42, 40, t1, &d));
  CHECK(d.outcome == SB_OUTCOME_GRANTED_SHADOW);

  /* a batch by id: shadow, pool, unknown */
  uint64_t bids[3] = {42, 43, 7};
  uint64_t btok[3] = {10, 10, 10};
  sb_outcome bout[3];
  uint64_t bretry[3];
  CHECK_OK(sb_engine_allocate_batch(eng, bids, 3, btok, 3, t1, bout, 3, bretry, 3));
  CHECK(bout[0] == SB_OUTCOME_GRANTED_SHADOW && bout[1] == SB_OUTCOME_GRANTED_POOL);
  CHECK(bout[2] == SB_OUTCOME_UNKNOWN_CUSTOMER);
  CHECK(bretry[0] == 0 && bretry[1] == 0);

  /* exceeds burst, zero tokens, contract exhausted with an exact retry-after */
  CHECK_OK(sb_engine_allocate(eng, 43, 6000, t1, &d));
  CHECK(d.outcome == SB_OUTCOME_EXCEEDS_BURST && d.retry_after_ns == UINT64_MAX);
  CHECK_OK(sb_engine_allocate(eng, 43, 0, t1, &d));
  CHECK(d.outcome == SB_OUTCOME_INVALID_INPUT);
  CHECK_OK(sb_engine_allocate(eng, 44, 5000, t1, &d));
  CHECK(d.outcome == SB_OUTCOME_GRANTED_POOL);
  CHECK_OK(sb_engine_allocate(eng, 44, 5000, t1, &d));
  CHECK(d.outcome == SB_OUTCOME_DENIED_CUSTOMER_LIMIT);
  CHECK(d.retry_after_ns == 50 * SECOND); /* 5000 tokens at 100 tokens/s */

  /* resolve once, then batches by slot */
  uint64_t rids[3] = {42, 43, 999};
  uint32_t rslots[3];
  CHECK_OK(sb_engine_resolve(eng, rids, 3, rslots, 3));
  CHECK(rslots[0] == slot42 && rslots[1] == slots[0] && rslots[2] == SB_NO_SLOT);
  CHECK_OK(sb_engine_allocate_batch_slots(eng, rslots, 3, btok, 3, t1, bout, 3, bretry, 3));
  CHECK(bout[0] == SB_OUTCOME_GRANTED_POOL); /* the shadow bucket is empty now */
  CHECK(bout[1] == SB_OUTCOME_GRANTED_POOL && bout[2] == SB_OUTCOME_UNKNOWN_CUSTOMER);
  /* an empty batch is fine, with NULL arrays */
  CHECK_OK(sb_engine_allocate_batch(eng, NULL, 0, NULL, 0, t1, NULL, 0, NULL, 0));

  /* settle: 10 of 40 unused come back; 5 more than granted are debt */
  sb_customer before, after;
  CHECK_OK(sb_engine_customer(eng, 42, &before));
  CHECK_OK(sb_engine_settle(eng, 42, 40, 30, SB_OUTCOME_GRANTED_SHADOW, t1));
  CHECK_OK(sb_engine_customer(eng, 42, &after));
  CHECK(after.outstanding + 40 == before.outstanding);
  CHECK(after.std_tokens == before.std_tokens + 10);
  CHECK(after.this_interval.refunded == 10);
  CHECK_OK(sb_engine_settle(eng, 43, 10, 15, SB_OUTCOME_GRANTED_POOL, t1));
  CHECK_OK(sb_engine_customer(eng, 43, &after));
  CHECK(after.this_interval.debt == 5);

  /* the customer view */
  sb_customer v;
  CHECK_OK(sb_engine_customer(eng, 42, &v));
  CHECK(v.id == 42 && v.slot == slot42 && v.contract.burst == 5000 && v.contract.weight == 1);
  CHECK(v.contract.rate_micros == TOKENS_PER_SEC(100));
  /* the fallbacks after the tick bumped the reservation at once (docs/engine.md) */
  CHECK(v.reserved_rate_micros > TOKENS_PER_SEC(50) && v.shadow_capacity >= 1000 && !v.flagged);
  CHECK(v.last_interval.requests == 1 && v.last_interval.granted_pool == 100);
  CHECK(v.this_interval.granted_shadow == 50 && v.this_interval.granted_pool == 10);
  CHECK(v.std_tokens == (int64_t)floor_div(femto(v.std_femto), FEMTO_PER_TOKEN));
  CHECK(v.shadow_tokens == (int64_t)floor_div(femto(v.shadow_femto), FEMTO_PER_TOKEN));
  sb_customer later;
  CHECK_OK(sb_engine_customer_at(eng, 42, t1 + 10 * SECOND, &later));
  CHECK(later.std_tokens == (v.std_tokens + 1000 < 5000 ? v.std_tokens + 1000 : 5000));
  CHECK(femto(later.shadow_femto) <= (__int128)1000 * FEMTO_PER_TOKEN);

  float forecast[64], scen[4];
  memset(forecast, 0xff, sizeof forecast);
  CHECK_OK(sb_engine_customer_forecast(eng, 42, forecast, dims.forecast_dim, scen, 4));
  for (uint32_t i = 0; i < dims.forecast_dim; i++) CHECK(forecast[i] == 0.0f); /* no forecaster ran */
  sb_forecast fc;
  CHECK_OK(sb_engine_forecast(eng, 42, &fc));
  CHECK(fc.horizons_len * 4 == dims.forecast_dim && fc.values[0].p90 == 0.0);

  /* stats and the ledger */
  sb_stats st;
  CHECK_OK(sb_engine_stats(eng, &st));
  CHECK(st.customers == 3 && st.capacity == 16 && st.ticks == 1 && st.settles == 2);
  CHECK(st.requests == 12 && st.shadow_grants == 2 && st.unknown == 2 && st.exceeds_burst == 1);
  CHECK(st.invalid == 1 && st.denied_customer == 1 && st.pool_grants == 5 && st.bumps >= 1);
  CHECK(st.tokens_refunded == 10 && st.tokens_debt == 5);
  CHECK(st.pool_tokens == (int64_t)floor_div(femto(st.pool_femto), FEMTO_PER_TOKEN));
  sb_ledger l;
  CHECK_OK(sb_engine_ledger(eng, t1, &l));
  CHECK(l.balanced);
  CHECK(femto(l.supplied) == femto(l.in_pool) + femto(l.in_shadows) + femto(l.granted_net) +
                                 femto(l.lost_at_cap));

  uint64_t list[16];
  size_t n = 99;
  CHECK_OK(sb_engine_customer_ids(eng, list, 16, &n));
  CHECK(n == 3);
  CHECK_OK(sb_engine_flagged(eng, list, 16, &n));
  CHECK(n == 0);
  CHECK_OK(sb_engine_flagged(eng, NULL, 0, &n)); /* none flagged: nothing to write */

  /* change, remove, grow */
  sb_contract bigger = {.burst = 8000, .rate_micros = TOKENS_PER_SEC(200), .weight = 3};
  CHECK_OK(sb_engine_update_customer(eng, 43, &bigger, t1));
  CHECK_OK(sb_engine_customer(eng, 43, &v));
  CHECK(v.contract.burst == 8000 && v.contract.weight == 3);
  CHECK_OK(sb_engine_remove_customer(eng, 44, t1));
  EXPECT_RC(sb_engine_customer(eng, 44, &v), SB_RESULT_UNKNOWN_CUSTOMER);
  CHECK_OK(sb_engine_grow(eng, 32));
  CHECK_OK(sb_engine_dims(eng, &dims));
  CHECK(dims.capacity == 32);
  CHECK_OK(sb_engine_slot_of(eng, 42, &s)); /* slots are kept */
  CHECK(s == slot42);
  CHECK_OK(sb_engine_check(eng));
  CHECK_OK(sb_engine_flush(eng));
  CHECK_OK(sb_engine_stats(eng, &st));
  CHECK_OK(sb_engine_close(eng));

  /* reopen: everything is still there */
  sb_engine *again = NULL;
  CHECK_OK(sb_engine_open(path, &again));
  sb_stats st2;
  CHECK_OK(sb_engine_stats(again, &st2));
  CHECK(st2.customers == 2 && st2.capacity == 32 && st2.requests == st.requests);
  CHECK(st2.last_committed == st.last_committed && st2.last_rolled_back == 0);
  CHECK_OK(sb_engine_customer(again, 43, &v));
  CHECK(v.contract.burst == 8000);
  CHECK_OK(sb_engine_check(again));

  /* a snapshot: a store of its own with the same state; never over the store itself */
  char snap_path[4096];
  sb_test_path(snap_path, sizeof snap_path, argv[1], "life-snap.sb");
  sb_snapshot snap;
  CHECK_OK(sb_engine_snapshot(again, snap_path, &snap));
  CHECK(snap.last_committed == st.last_committed && snap.written <= snap.bytes && snap.bytes > 0);
  EXPECT_RC(sb_engine_snapshot(again, path, &snap), SB_RESULT_INVALID_ARGUMENT);
  CHECK_LAST_ERROR_HAS("the store itself");
  sb_engine *copy = NULL;
  CHECK_OK(sb_engine_open(snap_path, &copy));
  sb_stats st3;
  CHECK_OK(sb_engine_stats(copy, &st3));
  CHECK(st3.customers == 2 && st3.capacity == 32 && st3.requests == st.requests);
  CHECK(st3.last_committed == st.last_committed);
  CHECK_OK(sb_engine_customer(copy, 43, &v));
  CHECK(v.contract.burst == 8000);
  CHECK_OK(sb_engine_check(copy));
  /* the copy's writer holds its lock: no snapshot goes over it */
  EXPECT_RC(sb_engine_snapshot(again, snap_path, &snap), SB_RESULT_LOCKED);
  CHECK_OK(sb_engine_close(copy));

  /* a captured snapshot: the store as it was when captured, whatever the engine does before
   * the capture is written, and written again after the engine is closed */
  sb_snapshot_capture *cap = NULL;
  CHECK_OK(sb_engine_capture_snapshot(again, &cap));
  CHECK(cap != NULL);
  sb_decision d_cap;
  CHECK_OK(sb_engine_allocate(again, 43, 5, t1 + SECOND, &d_cap));
  CHECK(d_cap.outcome == SB_OUTCOME_GRANTED_SHADOW || d_cap.outcome == SB_OUTCOME_GRANTED_POOL);
  sb_stats st4;
  CHECK_OK(sb_engine_stats(again, &st4));
  CHECK(st4.requests == st.requests + 1 && st4.last_committed > st.last_committed);
  char cap_path[4096];
  sb_test_path(cap_path, sizeof cap_path, argv[1], "life-capture.sb");
  sb_snapshot capped;
  CHECK_OK(sb_snapshot_capture_write(cap, cap_path, &capped));
  CHECK(capped.last_committed == st.last_committed && capped.bytes == snap.bytes &&
        capped.written == snap.written);
  EXPECT_RC(sb_snapshot_capture_write(cap, path, &capped), SB_RESULT_INVALID_ARGUMENT);
  CHECK_LAST_ERROR_HAS("the store itself");
  CHECK_OK(sb_engine_open(cap_path, &copy));
  CHECK_OK(sb_engine_stats(copy, &st3));
  CHECK(st3.requests == st.requests && st3.last_committed == st.last_committed);
  /* the capture's copy is held open by a writer now: no capture goes over it */
  EXPECT_RC(sb_snapshot_capture_write(cap, cap_path, &capped), SB_RESULT_LOCKED);
  CHECK_OK(sb_engine_close(copy));

  /* a read-only handle beside the writer: queries work, changes are refused */
  sb_engine *ro = NULL;
  CHECK_OK(sb_engine_open_read_only(path, &ro));
  CHECK_OK(sb_engine_customer(ro, 42, &v));
  CHECK(v.slot == slot42);
  EXPECT_RC(sb_engine_allocate(ro, 42, 1, t1, &d), SB_RESULT_READ_ONLY);
  EXPECT_RC(sb_engine_add_customer(ro, 50, &c, t1, &s), SB_RESULT_READ_ONLY);
  EXPECT_RC(sb_engine_tick_with_reservations(ro, t1, NULL, 0, &rep), SB_RESULT_READ_ONLY);
  sb_engine_free(ro);

  /* the writer still works after the reader is gone */
  CHECK_OK(sb_engine_allocate(again, 42, 1, t1 + SECOND, &d));
  CHECK(d.outcome == SB_OUTCOME_GRANTED_POOL || d.outcome == SB_OUTCOME_GRANTED_SHADOW);
  /* captured again into the same capture: the store as it is now */
  sb_stats st5;
  CHECK_OK(sb_engine_stats(again, &st5));
  CHECK(st5.requests == st4.requests + 1);
  EXPECT_RC(sb_engine_capture_snapshot_into(again, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_capture_snapshot_into(NULL, cap), SB_RESULT_NULL_PARAMETER);
  CHECK_OK(sb_engine_capture_snapshot_into(again, cap));
  sb_engine_free(again);

  /* a capture outlives its engine */
  sb_test_path(cap_path, sizeof cap_path, argv[1], "life-capture-2.sb");
  CHECK_OK(sb_snapshot_capture_write(cap, cap_path, &capped));
  CHECK(capped.last_committed == st5.last_committed);
  CHECK_OK(sb_engine_open_read_only(cap_path, &copy));
  CHECK_OK(sb_engine_stats(copy, &st3));
  CHECK(st3.requests == st5.requests);
  sb_engine_free(copy);
  sb_snapshot_capture_free(cap);
  sb_snapshot_capture_free(NULL);
  sb_engine_free(NULL);
  CHECK_OK(sb_engine_close(NULL));
  printf("lifecycle: ok (libshadowbucket %s)\n", version);
  return 0;
}
