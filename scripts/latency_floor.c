// The memory cost of one request made alone: a load whose address depends on the load before it
// (a pointer chase), over 1M records of 128 bytes (a 1M-customer store's records, 128 MiB, in
// transparent huge pages) visited in a random order, one thread, best of five rounds. A single
// request's record is such a load: nothing before the call knows its address, so nothing
// fetches it early. The README's Speed section compares `engine_single_loop` with it.
//
//   gcc -O2 -o /tmp/latency_floor scripts/latency_floor.c && /tmp/latency_floor
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static const size_t N = 1 << 20, RECORD = 128;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  char *buf = mmap(0, N * RECORD, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) return 1;
  madvise(buf, N * RECORD, MADV_HUGEPAGE);
  // a random cycle through every record: each record holds the offset of the next
  size_t *order = malloc(N * sizeof *order);
  if (!order) return 1;
  for (size_t i = 0; i < N; i++) order[i] = i;
  unsigned long x = 88172645463325252ul;
  for (size_t i = N - 1; i > 0; i--) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    size_t j = x % (i + 1), t = order[i];
    order[i] = order[j], order[j] = t;
  }
  for (size_t i = 0; i < N; i++) *(size_t *)(buf + order[i] * RECORD) = order[(i + 1) % N] * RECORD;
  double best = 1e9;
  size_t p = order[0] * RECORD;
  for (int round = 0; round < 5; round++) {
    double t = now();
    for (size_t i = 0; i < N; i++) p = *(size_t *)(buf + p);
    t = now() - t;
    if (t < best) best = t;
  }
  printf("dependent random load: %.1f ns (1 thread, %zu records of %zu bytes; end %zu)\n",
         best * 1e9 / N, N, RECORD, p / RECORD);
  return 0;
}
