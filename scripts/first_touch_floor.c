// The memory cost of a batch's first touch of a customer, measured alone: a random 128-byte
// record read and written, prefetched 16 ahead, over 1M records in (transparent) huge pages, on
// 2 threads, with its pre-image journaled three ways: not at all, at the record's own slot of a
// journal array (random streaming stores), and appended to a per-thread log (sequential streaming
// stores, as the batch path does). Two shapes: `2` (the default) writes both 64-byte lines of the
// record and journals all 128 bytes (store format version 2); `1` writes and journals the first
// line only, and reads the second (format version 3, for a shadow grant); `0` models a record of
// one 64-byte line (records 64 bytes apart, nothing else read), to size what a record whose
// shadow grant needs a single line would save. Each thread's indices are a permutation of its half
// of the records (the low bits of a power-of-two LCG have a full period), so every touch is a
// record's first and a cache miss: the figures are per first touch. The README's Speed section
// compares the batch path's customer-local phase with these (a uniform batch of 1M requests makes
// about 632,000 first touches; its other requests find their record in the cache).
//
//   gcc -O2 -pthread -o /tmp/first_touch scripts/first_touch_floor.c && /tmp/first_touch [0|1|2]
#define _GNU_SOURCE
#include <emmintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

typedef struct { long v[16]; } __attribute__((aligned(128))) rec;
enum { NONE, AT_SLOT, LOG };
static const char *names[] = {"no journal", "journal at the slot", "journal appended to a log"};
static size_t N = 1 << 20;
static rec *R, *J, *L;
static unsigned *idx;
static int mode;
static int lines = 2;
static long sink[16]; // read back, so the second line's load is not optimized away

// Where record `i` starts: 128 bytes apart, or 64 in shape `0` (one-line records).
static char *rec_at(unsigned i) { return (char *)R + (size_t)i * (lines > 0 ? 128 : 64); }

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *work(void *a) {
  long t = (long)a;
  size_t half = N / 2;
  unsigned *ix = idx + t * half;
  char *log = (char *)(L + t * half); // entries of 64 * lines bytes, one after another
  long acc = 0;
  for (size_t i = 0; i < half; i++) {
    if (i + 16 < half) {
      char *f = rec_at(ix[i + 16]);
      __builtin_prefetch(f, 1);
      if (lines > 0) __builtin_prefetch(f + 64, 1);
    }
    long *p = (long *)rec_at(ix[i]);
    size_t entry = 64 * (lines > 0 ? lines : 1);
    __m128i *d = mode == AT_SLOT ? (__m128i *)((char *)J + (rec_at(ix[i]) - (char *)R))
                 : mode == LOG   ? (__m128i *)(log + i * entry)
                                 : NULL;
    if (d) {
      __m128i *s = (__m128i *)p;
      for (size_t k = 0; k < entry / 16; k++) _mm_stream_si128(d + k, _mm_load_si128(s + k));
    }
    p[0] += 1;
    if (lines == 2) {
      p[9] += i;
    } else if (lines == 1) {
      p[5] += i;
      acc += p[9];
    } else {
      p[5] += i;
    }
  }
  _mm_sfence();
  sink[8 * t] = acc; // (a line apart: no false sharing)
  return 0;
}

static void *map(size_t b) {
  void *p = mmap(0, b, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  madvise(p, b, MADV_HUGEPAGE);
  memset(p, 0, b);
  return p;
}

int main(int argc, char **argv) {
  if (argc > 1) lines = atoi(argv[1]);
  if (lines < 0 || lines > 2) lines = 2;
  size_t b = N * sizeof(rec);
  R = map(b);
  J = map(b);
  L = map(b);
  idx = malloc(N * 4);
  unsigned x = 1;
  for (size_t i = 0; i < N; i++) {
    x = x * 1664525 + 1013904223;
    idx[i] = i < N / 2 ? x % (N / 2) : N / 2 + x % (N / 2);
  }
  // the variants alternate, best of 6 rounds each
  double best[3] = {1e9, 1e9, 1e9};
  for (int it = 0; it < 6; it++)
    for (mode = NONE; mode <= LOG; mode++) {
      pthread_t p[2];
      double t = now();
      pthread_create(&p[0], 0, work, (void *)0);
      pthread_create(&p[1], 0, work, (void *)1);
      pthread_join(p[0], 0);
      pthread_join(p[1], 0);
      t = now() - t;
      if (t < best[mode]) best[mode] = t;
    }
  if (lines == 0)
    printf("one-line (64-byte) records, written and journaled per touch\n");
  else
    printf("%d line(s) written and journaled per touch\n", lines);
  for (int m = NONE; m <= LOG; m++)
    printf("%-26s %.1f ns per touch (wall, 2 threads, %zu touches)\n", names[m], best[m] * 1e9 / N, N);
  return 0;
}
