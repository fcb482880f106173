/* A multi-threaded caller: writer threads allocate (single and batch) and settle for their own
 * customers, a ticker thread sets reservations, reader threads query concurrently, all on one
 * shared handle. Afterwards the counters add up, every customer got at most its contract
 * (semantics I1), the ledger balances (I4) and the store checks out.
 * Usage: threads DIR (an empty directory for the store files). */
#include <pthread.h>
#include <stdatomic.h>

#include "test_util.h"

#define WRITERS 6
#define READERS 3
#define PER_WRITER 64
#define ROUNDS 300
#define BATCH 16
#define BURST 500
#define RATE_TPS 1000

static sb_engine *eng;
static atomic_uint_fast64_t clock_ns;       /* one shared clock: every call takes the next instant */
static atomic_int writers_left;
static atomic_int ticks_done;     /* writers start after the first tick */
static uint64_t granted[WRITERS * PER_WRITER]; /* tokens granted per customer (own writer only) */
static atomic_uint_fast64_t requests_sent;

static uint64_t id_of(int writer, int k) { return 1000 + (uint64_t)writer * PER_WRITER + (uint64_t)k; }

static uint64_t next_now(void) { return atomic_fetch_add(&clock_ns, 100000) + 100000; }

static void *writer(void *arg) {
  int w = (int)(intptr_t)arg;
  uint64_t ids[BATCH], tok[BATCH], retry[BATCH];
  sb_outcome out[BATCH];
  unsigned seed = (unsigned)w * 7919u + 1;
  while (atomic_load(&ticks_done) == 0) usleep(100);
  for (int round = 0; round < ROUNDS; round++) {
    for (int i = 0; i < BATCH; i++) {
      seed = seed * 1103515245u + 12345u;
      ids[i] = id_of(w, (int)(seed >> 8) % PER_WRITER);
      tok[i] = 1 + (seed >> 20) % 40;
    }
    CHECK_OK(sb_engine_allocate_batch(eng, ids, BATCH, tok, BATCH, next_now(), out, BATCH, retry,
                                      BATCH));
    atomic_fetch_add(&requests_sent, BATCH);
    for (int i = 0; i < BATCH; i++) {
      CHECK(out[i] <= SB_OUTCOME_DENIED_POOL_EXHAUSTED);
      if (out[i] == SB_OUTCOME_GRANTED_SHADOW || out[i] == SB_OUTCOME_GRANTED_POOL) {
        CHECK(retry[i] == 0);
        granted[ids[i] - 1000] += tok[i];
      } else {
        CHECK(retry[i] > 0);
      }
    }
    /* one single request, settled in full (no refund, no debt) */
    sb_decision d;
    uint64_t id = id_of(w, round % PER_WRITER);
    CHECK_OK(sb_engine_allocate(eng, id, 3, next_now(), &d));
    atomic_fetch_add(&requests_sent, 1);
    if (d.outcome == SB_OUTCOME_GRANTED_SHADOW || d.outcome == SB_OUTCOME_GRANTED_POOL) {
      granted[id - 1000] += 3;
      CHECK_OK(sb_engine_settle(eng, id, 3, 3, d.outcome, next_now()));
    }
  }
  atomic_fetch_sub(&writers_left, 1);
  return NULL;
}

static void *ticker(void *arg) {
  (void)arg;
  static sb_reservation res[WRITERS * PER_WRITER];
  int ticks = 0;
  while (atomic_load(&writers_left) > 0) {
    size_t n = 0;
    for (int w = 0; w < WRITERS; w++)
      for (int k = ticks % 2; k < PER_WRITER; k += 2) {
        CHECK_OK(sb_engine_slot_of(eng, id_of(w, k), &res[n].slot));
        res[n].rate_micros = TOKENS_PER_SEC(RATE_TPS / 2);
        res[n].capacity = BURST / 2;
        n++;
      }
    sb_tick_report rep;
    CHECK_OK(sb_engine_tick_with_reservations(eng, next_now(), res, n, &rep));
    CHECK(rep.customers == WRITERS * PER_WRITER);
    ticks++;
    atomic_store(&ticks_done, ticks);
    usleep(2000);
  }
  return NULL;
}

static void *reader(void *arg) {
  (void)arg;
  uint64_t last_requests = 0;
  int reads = 0;
  while (atomic_load(&writers_left) > 0 || reads < 10) {
    sb_stats st;
    CHECK_OK(sb_engine_stats(eng, &st));
    CHECK(st.requests >= last_requests); /* counters only grow */
    last_requests = st.requests;
    CHECK(st.shadow_grants + st.pool_grants + st.denied_customer + st.denied_pool +
              st.exceeds_burst + st.unknown + st.invalid ==
          st.requests);
    sb_customer v;
    CHECK_OK(sb_engine_customer(eng, id_of(reads % WRITERS, reads % PER_WRITER), &v));
    CHECK(v.std_tokens <= BURST);
    uint32_t slot;
    CHECK_OK(sb_engine_slot_of(eng, id_of(0, 0), &slot));
    EXPECT_RC(sb_engine_customer(eng, 5, &v), SB_RESULT_UNKNOWN_CUSTOMER);
    reads++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  char path[4096];
  sb_test_path(path, sizeof path, argv[1], "threads.sb");
  sb_create_options o;
  /* a pool smaller than the demand, so that pool denials happen too */
  CHECK_OK(sb_create_options_default(WRITERS * PER_WRITER, 50000, TOKENS_PER_SEC(300000), &o));
  CHECK_OK(sb_engine_create(path, &o, &eng));
  static uint64_t ids[WRITERS * PER_WRITER];
  static sb_contract cs[WRITERS * PER_WRITER];
  static uint32_t slots[WRITERS * PER_WRITER];
  for (int i = 0; i < WRITERS * PER_WRITER; i++) {
    ids[i] = 1000 + (uint64_t)i;
    cs[i] = (sb_contract){.burst = BURST, .rate_micros = TOKENS_PER_SEC(RATE_TPS), .weight = 1};
  }
  CHECK_OK(sb_engine_add_customers(eng, ids, WRITERS * PER_WRITER, cs, WRITERS * PER_WRITER, 0,
                                   slots, WRITERS * PER_WRITER));
  atomic_store(&writers_left, WRITERS);

  pthread_t wt[WRITERS], rt[READERS], tt;
  for (int i = 0; i < WRITERS; i++) CHECK(pthread_create(&wt[i], NULL, writer, (void *)(intptr_t)i) == 0);
  for (int i = 0; i < READERS; i++) CHECK(pthread_create(&rt[i], NULL, reader, NULL) == 0);
  CHECK(pthread_create(&tt, NULL, ticker, NULL) == 0);
  for (int i = 0; i < WRITERS; i++) CHECK(pthread_join(wt[i], NULL) == 0);
  for (int i = 0; i < READERS; i++) CHECK(pthread_join(rt[i], NULL) == 0);
  CHECK(pthread_join(tt, NULL) == 0);

  uint64_t end = atomic_load(&clock_ns);
  sb_stats st;
  CHECK_OK(sb_engine_stats(eng, &st));
  CHECK(st.requests == atomic_load(&requests_sent));
  CHECK(st.unknown == 0 && st.invalid == 0 && st.ticks >= 1);
  /* the run went through both grant paths and denials (which denial depends on the interleaving) */
  CHECK(st.shadow_grants > 0 && st.pool_grants > 0 && st.denied_customer + st.denied_pool > 0);
  uint64_t total = 0;
  for (int i = 0; i < WRITERS * PER_WRITER; i++) {
    /* I1: at most the burst plus the refill over the whole run (no refunds were made) */
    uint64_t cap = BURST + (uint64_t)RATE_TPS * end / SECOND + 1;
    CHECK(granted[i] <= cap);
    total += granted[i];
  }
  CHECK(total == st.tokens_shadow + st.tokens_pool);
  sb_ledger l;
  CHECK_OK(sb_engine_ledger(eng, end, &l));
  CHECK(l.balanced);
  CHECK_OK(sb_engine_check(eng));
  CHECK_OK(sb_engine_close(eng));
  printf("threads: ok (%llu requests, %llu ticks; %llu shadow and %llu pool grants, %llu customer "
         "and %llu pool denials)\n",
         (unsigned long long)st.requests, (unsigned long long)st.ticks,
         (unsigned long long)st.shadow_grants, (unsigned long long)st.pool_grants,
         (unsigned long long)st.denied_customer, (unsigned long long)st.denied_pool);
  return 0;
}
