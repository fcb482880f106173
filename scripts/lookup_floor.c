// The memory cost of resolving an id, measured alone: a random 16-byte read from a table of
// 2^21 entries (the id index of a 1M-customer store, 32 MiB, in transparent huge pages),
// prefetched 8, 16, 32 or 64 reads ahead, on 2 threads. The README's Speed section compares
// `Engine::resolve` with these.
//
//   gcc -O2 -pthread -o /tmp/lookup_floor scripts/lookup_floor.c && /tmp/lookup_floor
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

typedef struct { unsigned long id, slot; } entry;
static const size_t T = 1 << 21, N = 1 << 20;
static entry *tab;
static unsigned *idx;
static size_t ahead;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *work(void *a) {
  size_t half = N / 2;
  unsigned *ix = idx + (long)a * half;
  unsigned long s = 0;
  for (size_t i = 0; i < half; i++) {
    if (i + ahead < half) __builtin_prefetch(&tab[ix[i + ahead]]);
    s += tab[ix[i]].slot;
  }
  return (void *)s;
}

int main(void) {
  tab = mmap(0, T * sizeof(entry), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  madvise(tab, T * sizeof(entry), MADV_HUGEPAGE);
  memset(tab, 1, T * sizeof(entry));
  idx = malloc(N * sizeof *idx);
  unsigned x = 1;
  for (size_t i = 0; i < N; i++) {
    x = x * 1664525 + 1013904223;
    idx[i] = (x >> 3) % T;
  }
  // the distances alternate, best of 6 rounds each
  const size_t d[] = {8, 16, 32, 64};
  double best[4] = {1e9, 1e9, 1e9, 1e9};
  for (int it = 0; it < 6; it++)
    for (int k = 0; k < 4; k++) {
      ahead = d[k];
      pthread_t p[2];
      double t = now();
      for (long j = 0; j < 2; j++) pthread_create(&p[j], 0, work, (void *)j);
      for (int j = 0; j < 2; j++) pthread_join(p[j], 0);
      t = now() - t;
      if (t < best[k]) best[k] = t;
    }
  for (int k = 0; k < 4; k++)
    printf("prefetch %2zu ahead: %.1f ns per read (wall, 2 threads, %zu reads)\n", d[k],
           best[k] * 1e9 / N, N);
  return 0;
}
