// How many bytes per second this machine moves to and from memory when nothing else limits it:
// a 256 MiB buffer (transparent huge pages) read, written with streaming (non-temporal) stores,
// and written with plain stores, on one thread and on two (each thread its own half), best of
// five rounds each. The README's Speed section compares the batch path's traffic with these.
// Plain stores read each line before writing it, so their figure counts bytes written, not the
// traffic they cause (about twice that).
//
//   gcc -O2 -pthread -o /tmp/stream_bandwidth scripts/stream_bandwidth.c && /tmp/stream_bandwidth
#define _GNU_SOURCE
#include <emmintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define BYTES ((size_t)256 << 20)
enum { READ, STREAM, PLAIN };
static const char *names[] = {"read", "streaming stores", "plain stores"};
static char *buf;
static int mode;
static volatile uint64_t sink[16];

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// Thread `t` of `n` works on its own part of the buffer.
struct part {
  char *p;
  size_t n;
  int t;
};

static void *work(void *a) {
  struct part *w = a;
  if (mode == READ) {
    uint64_t s = 0;
    for (size_t i = 0; i < w->n; i += 64) s += *(uint64_t *)(w->p + i);
    sink[8 * w->t] = s; // (a line apart: no false sharing)
  } else if (mode == STREAM) {
    __m128i v = _mm_set1_epi64x(1);
    for (size_t i = 0; i < w->n; i += 16) _mm_stream_si128((__m128i *)(w->p + i), v);
    _mm_sfence();
  } else {
    for (size_t i = 0; i < w->n; i += 8) *(uint64_t *)(w->p + i) = i;
  }
  return 0;
}

int main(void) {
  buf = mmap(0, BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  madvise(buf, BYTES, MADV_HUGEPAGE);
  memset(buf, 1, BYTES);
  for (int threads = 1; threads <= 2; threads++)
    for (mode = READ; mode <= PLAIN; mode++) {
      double best = 1e9;
      for (int round = 0; round < 5; round++) {
        struct part parts[2];
        pthread_t p[2];
        double t = now();
        for (int k = 0; k < threads; k++) {
          parts[k] = (struct part){buf + k * (BYTES / threads), BYTES / threads, k};
          pthread_create(&p[k], 0, work, &parts[k]);
        }
        for (int k = 0; k < threads; k++) pthread_join(p[k], 0);
        t = now() - t;
        if (t < best) best = t;
      }
      printf("%d thread(s), %-16s %5.1f GB/s\n", threads, names[mode], BYTES / best / 1e9);
    }
  return 0;
}
