/* Every error path of the C ABI: NULL handles and outputs, wrong lengths, bad files, unknown and
 * duplicate customers, a full store, read-only and locked stores, bad arguments, small and
 * overlapping buffers; and that a failed call writes none of its outputs.
 * Usage: errors DIR (an empty directory for the store files). */
#include <fcntl.h>

#include "test_util.h"

static void test_messages(void) {
  char buf[128];
  size_t n = 0;
  for (unsigned code = 0; code <= 16; code++) {
    sb_result_message(code, buf, sizeof buf, &n);
    CHECK(n > 0 && n == strlen(buf) && strcmp(buf, "unknown result code") != 0);
  }
  sb_result_message(SB_RESULT_STORE_FULL, buf, sizeof buf, &n);
  CHECK(strstr(buf, "sb_engine_grow") != NULL);
  sb_result_message(9999, buf, sizeof buf, &n);
  CHECK(strcmp(buf, "unknown result code") == 0);
  /* truncated, always terminated */
  sb_result_message(SB_RESULT_OK, buf, 4, &n);
  CHECK(n == 3 && strcmp(buf, "suc") == 0);
  /* NULL buffers are harmless */
  sb_result_message(SB_RESULT_OK, NULL, 0, NULL);
  sb_result_message(SB_RESULT_OK, buf, 0, &n);
  CHECK(n == 0);
  sb_last_error_message(NULL, 0, NULL);
}

static void test_null_handles(void) {
  sb_decision d;
  sb_stats st;
  sb_customer v;
  sb_config cfg;
  sb_dims dims;
  sb_ledger l;
  sb_tick_report rep;
  sb_contract c = {.burst = 10, .rate_micros = 1, .weight = 1};
  uint32_t slot;
  uint64_t id = 1, tok = 1, retry, list[4];
  sb_outcome out;
  float f[16];
  size_t n;
  EXPECT_RC(sb_engine_flush(NULL), SB_RESULT_NULL_PARAMETER);
  CHECK_LAST_ERROR_HAS("sb_engine_flush: engine is NULL");
  EXPECT_RC(sb_engine_grow(NULL, 10), SB_RESULT_NULL_PARAMETER);
  sb_snapshot snap;
  EXPECT_RC(sb_engine_snapshot(NULL, "x.sb", &snap), SB_RESULT_NULL_PARAMETER);
  CHECK_LAST_ERROR_HAS("sb_engine_snapshot: engine is NULL");
  sb_snapshot_capture *cap = NULL;
  EXPECT_RC(sb_engine_capture_snapshot(NULL, &cap), SB_RESULT_NULL_PARAMETER);
  CHECK(cap == NULL);
  EXPECT_RC(sb_snapshot_capture_write(NULL, "x.sb", &snap), SB_RESULT_NULL_PARAMETER);
  CHECK_LAST_ERROR_HAS("sb_snapshot_capture_write: capture is NULL");
  EXPECT_RC(sb_engine_config(NULL, &cfg), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_dims(NULL, &dims), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_add_customer(NULL, 1, &c, 0, &slot), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_add_customers(NULL, &id, 1, &c, 1, 0, &slot, 1), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_update_customer(NULL, 1, &c, 0), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_remove_customer(NULL, 1, 0), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_slot_of(NULL, 1, &slot), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_resolve(NULL, &id, 1, &slot, 1), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_allocate(NULL, 1, 1, 0, &d), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_allocate_batch(NULL, &id, 1, &tok, 1, 0, &out, 1, &retry, 1),
            SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_allocate_batch_slots(NULL, &slot, 1, &tok, 1, 0, &out, 1, &retry, 1),
            SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_settle(NULL, 1, 1, 1, SB_OUTCOME_GRANTED_POOL, 0), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_tick_with_reservations(NULL, 0, NULL, 0, &rep), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_customer(NULL, 1, &v), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_customer_at(NULL, 1, 0, &v), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_customer_forecast(NULL, 1, f, 16, f + 8, 0), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_stats(NULL, &st), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_ledger(NULL, 0, &l), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_check(NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_flagged(NULL, list, 4, &n), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_customer_ids(NULL, list, 4, &n), SB_RESULT_NULL_PARAMETER);
  sb_policy pol;
  sb_event ev = {.customer = 1, .global = 0, .kind = 0, .intensity = 1.0f, .start_ns = 0, .end_ns = 10};
  sb_forecast fc;
  char name[64];
  EXPECT_RC(sb_engine_tick(NULL, 0, &rep), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_set_predictor_baseline(NULL, SB_BASELINE_EWMA, 0.5), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_load_model(NULL, "model.safetensors"), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_predictor_name(NULL, name, sizeof name, &n), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_set_policy(NULL, &pol), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_policy(NULL, &pol), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_add_event(NULL, &ev, &id), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_remove_event(NULL, 0), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_set_signal(NULL, "news", 1.0f), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_forecast(NULL, 1, &fc), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_policy_default(NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_config_default(1, 1, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_create_options_default(1, 1, 1, NULL), SB_RESULT_NULL_PARAMETER);
  sb_engine_free(NULL);
  CHECK_OK(sb_engine_close(NULL));
}

static void test_bad_files(const char *dir) {
  char path[4096], junk[4096];
  sb_engine *e = (sb_engine *)0x1; /* a sentinel: failures must not overwrite it */
  sb_test_path(path, sizeof path, dir, "missing.sb");
  EXPECT_RC(sb_engine_open(path, &e), SB_RESULT_NOT_FOUND);
  CHECK(e == (sb_engine *)0x1);
  CHECK_LAST_ERROR_HAS("missing.sb");
  EXPECT_RC(sb_engine_open_read_only(path, &e), SB_RESULT_NOT_FOUND);
  EXPECT_RC(sb_engine_open(NULL, &e), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_open(path, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_open("", &e), SB_RESULT_INVALID_ARGUMENT);
  CHECK(e == (sb_engine *)0x1);

  /* a file that is not a store, short and long */
  sb_test_path(junk, sizeof junk, dir, "junk.sb");
  FILE *fp = fopen(junk, "wb");
  CHECK(fp != NULL);
  for (int i = 0; i < 100000; i++) fputc(i * 7 & 0xff, fp);
  fclose(fp);
  EXPECT_RC(sb_engine_open(junk, &e), SB_RESULT_BAD_FILE);
  EXPECT_RC(sb_engine_open_read_only(junk, &e), SB_RESULT_BAD_FILE);
  CHECK(e == (sb_engine *)0x1);
  fp = fopen(junk, "wb");
  CHECK(fp != NULL);
  fputs("short", fp);
  fclose(fp);
  EXPECT_RC(sb_engine_open(junk, &e), SB_RESULT_BAD_FILE);

  /* create: bad options, an existing file, NULLs */
  sb_create_options o;
  CHECK_OK(sb_create_options_default(8, 1000, TOKENS_PER_SEC(100), &o));
  EXPECT_RC(sb_engine_create(junk, &o, &e), SB_RESULT_ALREADY_EXISTS);
  sb_test_path(path, sizeof path, dir, "new.sb");
  EXPECT_RC(sb_engine_create(path, NULL, &e), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_create(path, &o, NULL), SB_RESULT_NULL_PARAMETER);
  sb_create_options bad = o;
  bad.config.pool_rate_micros = 0;
  EXPECT_RC(sb_engine_create(path, &bad, &e), SB_RESULT_INVALID_ARGUMENT);
  CHECK_LAST_ERROR_HAS("pool_rate");
  bad = o;
  bad.config.contention_ticks = 300;
  EXPECT_RC(sb_engine_create(path, &bad, &e), SB_RESULT_INVALID_ARGUMENT);
  bad = o;
  bad.config.alpha_ppm = 1000001;
  EXPECT_RC(sb_engine_create(path, &bad, &e), SB_RESULT_INVALID_ARGUMENT);
  CHECK(e == (sb_engine *)0x1);
  CHECK(access(path, F_OK) != 0); /* nothing was created */
  sb_test_path(path, sizeof path, dir, "no-such-dir/new.sb");
  EXPECT_RC(sb_engine_create(path, &o, &e), SB_RESULT_NOT_FOUND);
}

static void test_engine_errors(const char *dir) {
  char path[4096];
  sb_test_path(path, sizeof path, dir, "errors.sb");
  sb_create_options o;
  CHECK_OK(sb_create_options_default(4, 100000, TOKENS_PER_SEC(1000), &o));
  sb_engine *e = NULL;
  CHECK_OK(sb_engine_create(path, &o, &e));

  /* a second writer is refused; a reader is not */
  sb_engine *other = (sb_engine *)0x1;
  EXPECT_RC(sb_engine_open(path, &other), SB_RESULT_LOCKED);
  CHECK(other == (sb_engine *)0x1);
  CHECK_LAST_ERROR_HAS("locked");

  sb_contract c = {.burst = 100, .rate_micros = TOKENS_PER_SEC(10), .weight = 1};
  uint32_t slot = 77;
  /* NULL outputs and inputs with a live handle */
  EXPECT_RC(sb_engine_add_customer(e, 1, NULL, 0, &slot), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_add_customer(e, 1, &c, 0, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_slot_of(e, 1, &slot), SB_RESULT_UNKNOWN_CUSTOMER);
  /* bad contracts and reserved ids */
  sb_contract zero = {.burst = 0, .rate_micros = 1, .weight = 1};
  EXPECT_RC(sb_engine_add_customer(e, 1, &zero, 0, &slot), SB_RESULT_INVALID_ARGUMENT);
  CHECK_LAST_ERROR_HAS("burst");
  EXPECT_RC(sb_engine_add_customer(e, UINT64_MAX, &c, 0, &slot), SB_RESULT_INVALID_ARGUMENT);
  CHECK(slot == 77);

  CHECK_OK(sb_engine_add_customer(e, 1, &c, 0, &slot));
  EXPECT_RC(sb_engine_add_customer(e, 1, &c, 0, &slot), SB_RESULT_DUPLICATE_CUSTOMER);

  /* add_customers: wrong lengths, NULL with a length, an id twice; all or nothing */
  uint64_t ids[3] = {2, 3, 2};
  sb_contract cs[3] = {c, c, c};
  uint32_t slots[3] = {7, 7, 7};
  EXPECT_RC(sb_engine_add_customers(e, ids, 2, cs, 3, 0, slots, 2), SB_RESULT_LENGTH_MISMATCH);
  EXPECT_RC(sb_engine_add_customers(e, ids, 2, cs, 2, 0, slots, 3), SB_RESULT_LENGTH_MISMATCH);
  EXPECT_RC(sb_engine_add_customers(e, NULL, 2, cs, 2, 0, slots, 2), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_add_customers(e, ids, 3, cs, 3, 0, slots, 3), SB_RESULT_DUPLICATE_CUSTOMER);
  CHECK(slots[0] == 7 && slots[1] == 7 && slots[2] == 7);
  EXPECT_RC(sb_engine_customer(e, 2, &(sb_customer){0}), SB_RESULT_UNKNOWN_CUSTOMER);

  /* a full store: 4 slots */
  CHECK_OK(sb_engine_add_customers(e, ids, 2, cs, 2, 0, slots, 2));
  uint64_t more[2] = {10, 11};
  EXPECT_RC(sb_engine_add_customers(e, more, 2, cs, 2, 0, slots, 2), SB_RESULT_STORE_FULL);
  CHECK_LAST_ERROR_HAS("grow");
  EXPECT_RC(sb_engine_grow(e, 4), SB_RESULT_INVALID_ARGUMENT);
  CHECK_OK(sb_engine_grow(e, 8));
  CHECK_OK(sb_engine_add_customers(e, more, 2, cs, 2, 0, slots, 2));

  /* unknown customers */
  sb_customer v;
  memset(&v, 0xab, sizeof v);
  sb_customer sentinel = v;
  EXPECT_RC(sb_engine_customer(e, 999, &v), SB_RESULT_UNKNOWN_CUSTOMER);
  CHECK_LAST_ERROR_HAS("unknown customer 999");
  EXPECT_RC(sb_engine_customer_at(e, 999, 5, &v), SB_RESULT_UNKNOWN_CUSTOMER);
  CHECK(memcmp(&v, &sentinel, sizeof v) == 0);
  EXPECT_RC(sb_engine_update_customer(e, 999, &c, 0), SB_RESULT_UNKNOWN_CUSTOMER);
  EXPECT_RC(sb_engine_remove_customer(e, 999, 0), SB_RESULT_UNKNOWN_CUSTOMER);
  EXPECT_RC(sb_engine_settle(e, 999, 1, 1, SB_OUTCOME_GRANTED_POOL, 0), SB_RESULT_UNKNOWN_CUSTOMER);
  EXPECT_RC(sb_engine_slot_of(e, 999, &slot), SB_RESULT_UNKNOWN_CUSTOMER);
  float f[16], s4[4];
  EXPECT_RC(sb_engine_customer_forecast(e, 999, f, 16, s4, 4), SB_RESULT_UNKNOWN_CUSTOMER);
  EXPECT_RC(sb_engine_update_customer(e, 1, &zero, 0), SB_RESULT_INVALID_ARGUMENT);

  /* allocation: NULL output, wrong lengths, overlapping outputs; nothing written or counted */
  sb_stats st0, st1;
  CHECK_OK(sb_engine_stats(e, &st0));
  EXPECT_RC(sb_engine_allocate(e, 1, 1, 0, NULL), SB_RESULT_NULL_PARAMETER);
  uint64_t bid[2] = {1, 2}, btok[2] = {1, 1}, retry[2] = {5, 5};
  sb_outcome bout[2] = {77, 77};
  EXPECT_RC(sb_engine_allocate_batch(e, bid, 2, btok, 1, 0, bout, 2, retry, 2),
            SB_RESULT_LENGTH_MISMATCH);
  CHECK_LAST_ERROR_HAS("keys");
  EXPECT_RC(sb_engine_allocate_batch(e, bid, 2, btok, 2, 0, bout, 1, retry, 2),
            SB_RESULT_LENGTH_MISMATCH);
  EXPECT_RC(sb_engine_allocate_batch(e, bid, 2, btok, 2, 0, bout, 2, retry, 1),
            SB_RESULT_LENGTH_MISMATCH);
  EXPECT_RC(sb_engine_allocate_batch(e, bid, 2, btok, 2, 0, NULL, 2, retry, 2),
            SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_allocate_batch(e, bid, 2, btok, 2, 0, bout, 2, btok, 2),
            SB_RESULT_INVALID_ARGUMENT); /* retry-after would overwrite the tokens */
  CHECK_LAST_ERROR_HAS("overlap");
  uint32_t bslots[2] = {0, 1};
  EXPECT_RC(sb_engine_allocate_batch_slots(e, bslots, 2, btok, 2, 0, bout, 2, retry, 3),
            SB_RESULT_LENGTH_MISMATCH);
  /* a misaligned array */
  uint64_t raw[4] = {0};
  EXPECT_RC(sb_engine_allocate_batch(e, (const uint64_t *)((const char *)raw + 1), 1, btok, 1, 0,
                                     bout, 1, retry, 1),
            SB_RESULT_INVALID_ARGUMENT);
  CHECK(bout[0] == 77 && bout[1] == 77 && retry[0] == 5 && retry[1] == 5);
  CHECK_OK(sb_engine_stats(e, &st1));
  CHECK(st1.requests == st0.requests && st1.batches == st0.batches);
  /* a wrong, huge output length is a length mismatch (not an allocation failure, which would
   * abort the process); the outcomes come last in one block so that no other array lies past them */
  struct {
    uint64_t ids[2], tokens[2], retry[2];
    uint32_t slots_out[2];
    sb_outcome outcomes[2];
  } *blk = calloc(1, sizeof *blk);
  CHECK(blk != NULL);
  blk->ids[0] = 1, blk->ids[1] = 2, blk->tokens[0] = blk->tokens[1] = 1;
  EXPECT_RC(sb_engine_allocate_batch(e, blk->ids, 2, blk->tokens, 2, 0, blk->outcomes,
                                     (size_t)1 << 42, blk->retry, 2),
            SB_RESULT_LENGTH_MISMATCH);
  CHECK_LAST_ERROR_HAS("outcomes");
  EXPECT_RC(sb_engine_resolve(e, blk->ids, 2, blk->slots_out, (size_t)1 << 42),
            SB_RESULT_LENGTH_MISMATCH);
  free(blk);
  CHECK_OK(sb_engine_stats(e, &st1));
  CHECK(st1.requests == st0.requests && st1.batches == st0.batches);
  /* unknown slot in a slot batch is an outcome, not an error */
  uint32_t far[1] = {123456};
  CHECK_OK(sb_engine_allocate_batch_slots(e, far, 1, btok, 1, 0, bout, 1, retry, 1));
  CHECK(bout[0] == SB_OUTCOME_UNKNOWN_CUSTOMER);

  /* resolve */
  uint32_t rs[2] = {9, 9};
  EXPECT_RC(sb_engine_resolve(e, bid, 2, rs, 1), SB_RESULT_LENGTH_MISMATCH);
  CHECK(rs[0] == 9);

  /* settle: not a grant, nothing outstanding, zero */
  EXPECT_RC(sb_engine_settle(e, 1, 1, 1, SB_OUTCOME_DENIED_POOL_EXHAUSTED, 0),
            SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_settle(e, 1, 1, 1, 12345, 0), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_settle(e, 1, 5, 1, SB_OUTCOME_GRANTED_POOL, 0), SB_RESULT_INVALID_ARGUMENT);
  CHECK_LAST_ERROR_HAS("outstanding");
  sb_decision d;
  CHECK_OK(sb_engine_allocate(e, 1, 5, 0, &d));
  EXPECT_RC(sb_engine_settle(e, 1, 0, 1, d.outcome, 0), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_settle(e, 1, 6, 1, d.outcome, 0), SB_RESULT_INVALID_ARGUMENT);
  CHECK_OK(sb_engine_settle(e, 1, 5, 1, d.outcome, 0));

  /* tick: unknown slot, slot twice, absurd reservation; no report written */
  sb_tick_report rep;
  memset(&rep, 0x5a, sizeof rep);
  sb_tick_report rep0 = rep;
  sb_reservation r[2] = {{.slot = 1000, .rate_micros = 1, .capacity = 1},
                         {.slot = 0, .rate_micros = 1, .capacity = 1}};
  CHECK_OK(sb_engine_slot_of(e, 1, &r[1].slot));
  EXPECT_RC(sb_engine_tick_with_reservations(e, 1, r, 2, &rep), SB_RESULT_INVALID_ARGUMENT);
  r[0] = r[1];
  EXPECT_RC(sb_engine_tick_with_reservations(e, 1, r, 2, &rep), SB_RESULT_INVALID_ARGUMENT);
  CHECK_LAST_ERROR_HAS("twice");
  r[0].rate_micros = UINT64_MAX;
  EXPECT_RC(sb_engine_tick_with_reservations(e, 1, r, 1, &rep), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_tick_with_reservations(e, 1, NULL, 1, &rep), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_tick_with_reservations(e, 1, NULL, 0, NULL), SB_RESULT_NULL_PARAMETER);
  CHECK(memcmp(&rep, &rep0, sizeof rep) == 0);
  CHECK_OK(sb_engine_stats(e, &st1));
  CHECK(st1.ticks == 0);

  /* forecast lengths */
  EXPECT_RC(sb_engine_customer_forecast(e, 1, f, 15, s4, 4), SB_RESULT_LENGTH_MISMATCH);
  EXPECT_RC(sb_engine_customer_forecast(e, 1, f, 16, s4, 5), SB_RESULT_LENGTH_MISMATCH);
  EXPECT_RC(sb_engine_customer_forecast(e, 1, f, 16, f + 4, 4), SB_RESULT_INVALID_ARGUMENT);

  /* id lists: too small a buffer writes nothing */
  uint64_t list[8] = {0};
  size_t n = 42;
  EXPECT_RC(sb_engine_customer_ids(e, list, 2, &n), SB_RESULT_INSUFFICIENT_SIZE);
  CHECK(n == 42 && list[0] == 0);
  EXPECT_RC(sb_engine_customer_ids(e, list, 8, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_customer_ids(e, NULL, 8, &n), SB_RESULT_NULL_PARAMETER);
  CHECK_OK(sb_engine_customer_ids(e, list, 8, &n));
  CHECK(n == 5);

  /* the predictor's name: a NULL buffer with a length is a NULL parameter, not an empty name */
  char pname[64];
  n = 42;
  EXPECT_RC(sb_engine_predictor_name(e, NULL, sizeof pname, &n), SB_RESULT_NULL_PARAMETER);
  CHECK(n == 42);
  CHECK_LAST_ERROR_HAS("buf is NULL");
  EXPECT_RC(sb_engine_predictor_name(e, NULL, 0, &n), SB_RESULT_INSUFFICIENT_SIZE);
  CHECK_OK(sb_engine_predictor_name(e, pname, sizeof pname, &n));
  CHECK(n > 0 && n == strlen(pname));

  /* NULL outputs on queries */
  EXPECT_RC(sb_engine_stats(e, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_customer(e, 1, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_ledger(e, 0, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_config(e, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_dims(e, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_slot_of(e, 1, NULL), SB_RESULT_NULL_PARAMETER);

  /* snapshots: NULL arguments, a folder that does not exist, the store itself */
  sb_snapshot snap;
  char snap_path[4096];
  sb_test_path(snap_path, sizeof snap_path, dir, "no-such-folder/snap.sb");
  EXPECT_RC(sb_engine_snapshot(e, NULL, &snap), SB_RESULT_NULL_PARAMETER);
  CHECK_LAST_ERROR_HAS("dest is NULL");
  EXPECT_RC(sb_engine_snapshot(e, snap_path, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_engine_snapshot(e, snap_path, &snap), SB_RESULT_NOT_FOUND);
  EXPECT_RC(sb_engine_snapshot(e, path, &snap), SB_RESULT_INVALID_ARGUMENT);
  EXPECT_RC(sb_engine_capture_snapshot(e, NULL), SB_RESULT_NULL_PARAMETER);
  sb_snapshot_capture *cap = NULL;
  CHECK_OK(sb_engine_capture_snapshot(e, &cap));
  EXPECT_RC(sb_snapshot_capture_write(cap, NULL, &snap), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_snapshot_capture_write(cap, snap_path, NULL), SB_RESULT_NULL_PARAMETER);
  EXPECT_RC(sb_snapshot_capture_write(cap, snap_path, &snap), SB_RESULT_NOT_FOUND);
  EXPECT_RC(sb_snapshot_capture_write(cap, path, &snap), SB_RESULT_INVALID_ARGUMENT);
  /* a failed write writes no output */
  memset(&snap, 0x5a, sizeof snap);
  EXPECT_RC(sb_snapshot_capture_write(cap, snap_path, &snap), SB_RESULT_NOT_FOUND);
  CHECK(snap.bytes == 0x5a5a5a5a5a5a5a5aULL && snap.last_committed == 0x5a5a5a5a5a5a5a5aULL);
  /* a misaligned capture is refused by every call, and left alone */
  sb_snapshot_capture *odd = (sb_snapshot_capture *)((char *)cap + 1);
  char cap_path[4096];
  sb_test_path(cap_path, sizeof cap_path, dir, "errors-capture.sb");
  EXPECT_RC(sb_snapshot_capture_write(odd, cap_path, &snap), SB_RESULT_INVALID_ARGUMENT);
  CHECK_LAST_ERROR_HAS("sb_snapshot_capture_write: capture is misaligned");
  EXPECT_RC(sb_engine_capture_snapshot_into(e, odd), SB_RESULT_INVALID_ARGUMENT);
  CHECK_LAST_ERROR_HAS("sb_engine_capture_snapshot_into: capture is misaligned");
  sb_snapshot_capture_free(odd);
  CHECK_LAST_ERROR_HAS("sb_snapshot_capture_free: capture is misaligned");
  /* a misaligned engine handle is not freed or closed either */
  sb_engine *odd_e = (sb_engine *)((char *)e + 1);
  sb_engine_free(odd_e);
  CHECK_LAST_ERROR_HAS("sb_engine_free: engine is misaligned");
  EXPECT_RC(sb_engine_close(odd_e), SB_RESULT_INVALID_ARGUMENT);
  CHECK_LAST_ERROR_HAS("sb_engine_close: engine is misaligned");
  /* through a read-only handle beside the writer: locked, and neither output nor capture
   * changed */
  sb_engine *ro = NULL;
  CHECK_OK(sb_engine_open_read_only(path, &ro));
  sb_snapshot_capture *cap2 = odd;
  EXPECT_RC(sb_engine_capture_snapshot(ro, &cap2), SB_RESULT_LOCKED);
  CHECK(cap2 == odd);
  sb_stats st_cap;
  CHECK_OK(sb_engine_stats(e, &st_cap));
  sb_decision d_cap;
  CHECK_OK(sb_engine_allocate(e, 1, 1, 5 * SECOND, &d_cap));
  EXPECT_RC(sb_engine_capture_snapshot_into(ro, cap), SB_RESULT_LOCKED);
  sb_engine_free(ro);
  CHECK_OK(sb_snapshot_capture_write(cap, cap_path, &snap));
  CHECK(snap.last_committed == st_cap.last_committed);
  sb_snapshot_capture_free(cap);

  /* the engine is still consistent after all of that */
  CHECK_OK(sb_engine_check(e));
  sb_ledger l;
  CHECK_OK(sb_engine_ledger(e, 10, &l));
  CHECK(l.balanced);
  CHECK_OK(sb_engine_close(e));

  /* once closed, another writer may open it */
  CHECK_OK(sb_engine_open(path, &other));
  CHECK_OK(sb_engine_close(other));
}

/* The last error message is per thread. */
#include <pthread.h>
static void *other_thread(void *arg) {
  (void)arg;
  char m[256];
  size_t n = 99;
  sb_last_error_message(m, sizeof m, &n);
  CHECK(n == 0 && m[0] == '\0'); /* this thread has had no failure */
  EXPECT_RC(sb_engine_check(NULL), SB_RESULT_NULL_PARAMETER);
  CHECK_LAST_ERROR_HAS("sb_engine_check");
  return NULL;
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  test_messages();
  test_null_handles();
  test_bad_files(argv[1]);
  test_engine_errors(argv[1]);
  EXPECT_RC(sb_engine_flush(NULL), SB_RESULT_NULL_PARAMETER);
  pthread_t t;
  CHECK(pthread_create(&t, NULL, other_thread, NULL) == 0);
  CHECK(pthread_join(t, NULL) == 0);
  CHECK_LAST_ERROR_HAS("sb_engine_flush"); /* unchanged by the other thread */
  printf("errors: ok\n");
  return 0;
}
