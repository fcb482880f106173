/* The predictive calls: baselines as predictors, the policy, events, external signals, the
 * predictive tick and forecasts, loading a model; and their error paths.
 * Usage: predictive DIR (an empty directory for the store files). */
#include <math.h>

#include "test_util.h"

#define MINUTE (60 * SECOND)
#define CUSTOMERS 8

int main(int argc, char **argv) {
  CHECK(argc == 2);
  char path[4096];
  sb_test_path(path, sizeof path, argv[1], "predictive.sb");
  sb_create_options o;
  CHECK_OK(sb_create_options_default(64, 10000000, TOKENS_PER_SEC(100000), &o));
  sb_engine *e = NULL;
  CHECK_OK(sb_engine_create(path, &o, &e));
  for (uint64_t id = 1; id <= CUSTOMERS; id++) {
    sb_contract c = {.burst = 100000, .rate_micros = TOKENS_PER_SEC(1000), .weight = 1};
    uint32_t slot;
    CHECK_OK(sb_engine_add_customer(e, id, &c, 0, &slot));
  }

  /* the default predictor, then a baseline of our choosing */
  char name[128];
  size_t n = 0;
  CHECK_OK(sb_engine_predictor_name(e, name, sizeof name, &n));
  CHECK(n == strlen(name) && n > 0);
  EXPECT_RC(sb_engine_predictor_name(e, name, n, &n), SB_RESULT_INSUFFICIENT_SIZE);
  CHECK_OK(sb_engine_set_predictor_baseline(e, SB_BASELINE_EWMA, 0.3));
  CHECK_OK(sb_engine_predictor_name(e, name, sizeof name, &n));
  CHECK(strstr(name, "ewma") != NULL || strstr(name, "EWMA") != NULL || strstr(name, "Ewma") != NULL);
  EXPECT_RC(sb_engine_set_predictor_baseline(e, 99, 1.0), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_set_predictor_baseline(e, SB_BASELINE_EWMA, 0.0), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_set_predictor_baseline(e, SB_BASELINE_SEASONAL_NAIVE, 1.5),
            SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_set_predictor_baseline(e, SB_BASELINE_AUTOPILOT, NAN), SB_RESULT_INVALID_ARGUMENT);
  CHECK_OK(sb_engine_set_predictor_baseline(e, SB_BASELINE_SEASONAL_NAIVE, 3));
  CHECK_OK(sb_engine_set_predictor_baseline(e, SB_BASELINE_AUTOPILOT, 10));
  CHECK_OK(sb_engine_set_predictor_baseline(e, SB_BASELINE_LAST_VALUE, 0));
  CHECK_OK(sb_engine_set_predictor_baseline(e, SB_BASELINE_EWMA, 0.5));

  /* the policy */
  sb_policy p, got;
  CHECK_OK(sb_policy_default(&p));
  CHECK(p.horizon == 0 && p.target == SB_TARGET_P90 && p.headroom == 1.0 && p.capacity_intervals == 1.0);
  p.target = SB_TARGET_MEAN;
  p.headroom = 1.5;
  CHECK_OK(sb_engine_set_policy(e, &p));
  CHECK_OK(sb_engine_policy(e, &got));
  CHECK(got.target == SB_TARGET_MEAN && got.headroom == 1.5);
  sb_policy bad = p;
  bad.target = 17;
  EXPECT_RC(sb_engine_set_policy(e, &bad), SB_RESULT_INVALID_ARGUMENT);
  bad = p;
  bad.headroom = -1;
  EXPECT_RC(sb_engine_set_policy(e, &bad), SB_RESULT_INVALID_ARGUMENT);
  bad = p;
  bad.horizon = 1000;
  EXPECT_RC(sb_engine_set_policy(e, &bad), SB_RESULT_INVALID_ARGUMENT);
  bad = p;
  bad.target = SB_TARGET_SCENARIO;
  bad.scenario_probability = 0;
  EXPECT_RC(sb_engine_set_policy(e, &bad), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_set_policy(e, NULL), SB_RESULT_NULL_PARAMETER);
  CHECK_OK(sb_engine_policy(e, &got));
  CHECK(got.target == SB_TARGET_MEAN); /* refused policies changed nothing */

  /* events and signals */
  sb_event ev = {.customer = 3, .global = 0, .kind = 7, .intensity = 2.0f, .start_ns = 0,
                 .end_ns = 100 * MINUTE};
  uint64_t ev_id = 0, ev2 = 0;
  CHECK_OK(sb_engine_add_event(e, &ev, &ev_id));
  ev.global = 1;
  CHECK_OK(sb_engine_add_event(e, &ev, &ev2));
  CHECK(ev2 != ev_id);
  CHECK_OK(sb_engine_remove_event(e, ev2));
  EXPECT_RC(sb_engine_remove_event(e, ev2), SB_RESULT_INVALID_ARGUMENT);
  ev.global = 2;
  EXPECT_RC(sb_engine_add_event(e, &ev, &ev2), SB_RESULT_INVALID_ARGUMENT);
  ev.global = 0;
  ev.end_ns = ev.start_ns;
  EXPECT_RC(sb_engine_add_event(e, &ev, &ev2), SB_RESULT_INVALID_ARGUMENT);
  ev.end_ns = 10;
  ev.intensity = INFINITY;
  EXPECT_RC(sb_engine_add_event(e, &ev, &ev2), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_add_event(e, NULL, &ev2), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_add_event(e, &ev, NULL), SB_RESULT_NULL_PARAMETER);
  CHECK_OK(sb_engine_set_signal(e, "news_volume", 0.25f));
  EXPECT_RC(sb_engine_set_signal(e, "", 1.0f), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_set_signal(e, "a,b", 1.0f), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_set_signal(e, "x", NAN), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_set_signal(e, "\xff\xfe", 1.0f), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_set_signal(e, NULL, 1.0f), SB_RESULT_NULL_PARAMETER);

  /* steady use for a few intervals, then predictive ticks reserve for it */
  sb_tick_report rep;
  uint64_t now = 0;
  for (int interval = 0; interval < 6; interval++) {
    for (int k = 0; k < 10; k++) {
      now += MINUTE / 10;
      for (uint64_t id = 1; id <= CUSTOMERS; id++) {
        sb_decision d;
        CHECK_OK(sb_engine_allocate(e, id, 100 * id, now, &d));
        CHECK(d.outcome == SB_OUTCOME_GRANTED_POOL || d.outcome == SB_OUTCOME_GRANTED_SHADOW);
      }
    }
    CHECK_OK(sb_engine_tick(e, now, &rep));
    CHECK(rep.customers == CUSTOMERS);
  }
  CHECK(rep.reserved_rate_micros > 0 && rep.reserved_capacity > 0);
  sb_forecast fc;
  CHECK_OK(sb_engine_forecast(e, 8, &fc));
  CHECK(fc.horizons_len >= 1 && fc.horizons_len <= SB_FORECAST_MAX_HORIZONS && fc.horizons[0] >= 1);
  /* customer 8 uses 800 tokens ten times an interval: the mean forecast is near 8000 */
  CHECK(fc.values[0].mean > 4000 && fc.values[0].mean < 16000);
  sb_customer v8, v1;
  CHECK_OK(sb_engine_customer(e, 8, &v8));
  CHECK_OK(sb_engine_customer(e, 1, &v1));
  CHECK(v8.reserved_rate_micros > v1.reserved_rate_micros && v1.reserved_rate_micros > 0);
  EXPECT_RC(sb_engine_forecast(e, 999, &fc), SB_RESULT_UNKNOWN_CUSTOMER);
  EXPECT_RC(sb_engine_forecast(e, 8, NULL), SB_RESULT_NULL_PARAMETER);
  sb_ledger l;
  CHECK_OK(sb_engine_ledger(e, now, &l));
  CHECK(l.balanced);

  /* models: missing files and files that are not models are errors, never crashes */
  char model[4096];
  sb_test_path(model, sizeof model, argv[1], "missing.safetensors");
  CHECK(sb_engine_load_model(e, model) != SB_RESULT_OK);
  sb_test_path(model, sizeof model, argv[1], "junk.safetensors");
  FILE *fp = fopen(model, "wb");
  CHECK(fp != NULL);
  fputs("not a model", fp);
  fclose(fp);
  CHECK(sb_engine_load_model(e, model) != SB_RESULT_OK);
  EXPECT_RC(sb_engine_load_model(e, NULL), SB_RESULT_NULL_PARAMETER);
  CHECK_OK(sb_engine_predictor_name(e, name, sizeof name, &n)); /* the predictor is unchanged */
  CHECK(strstr(name, "lstm") == NULL);

  /* the explicit tick still works beside the predictive one */
  uint32_t slot1;
  CHECK_OK(sb_engine_slot_of(e, 1, &slot1));
  sb_reservation r = {.slot = slot1, .rate_micros = TOKENS_PER_SEC(10), .capacity = 100};
  CHECK_OK(sb_engine_tick_with_reservations(e, now + 1, &r, 1, &rep));
  CHECK(rep.reserved_rate_micros == TOKENS_PER_SEC(10));
  CHECK_OK(sb_engine_check(e));
  CHECK_OK(sb_engine_close(e));

  /* a read-only handle cannot tick; a store without forecaster columns has no predictive tick */
  sb_engine *ro = NULL;
  CHECK_OK(sb_engine_open_read_only(path, &ro));
  EXPECT_RC(sb_engine_tick(ro, now + 2, &rep), SB_RESULT_READ_ONLY);
  CHECK_OK(sb_engine_forecast(ro, 8, &fc));
  sb_engine_free(ro);
  sb_test_path(path, sizeof path, argv[1], "plain.sb");
  o.state_dim = o.forecast_dim = o.scenario_dim = o.scale_dim = 0;
  CHECK_OK(sb_engine_create(path, &o, &e));
  EXPECT_RC(sb_engine_tick(e, 1, &rep), SB_RESULT_INVALID_ARGUMENT);
  CHECK_OK(sb_engine_tick_with_reservations(e, 1, NULL, 0, &rep));
  CHECK_OK(sb_engine_close(e));
  printf("predictive: ok (forecast mean for customer 8: %.0f tokens per interval)\n",
         fc.values[0].mean);
  return 0;
}
