/* Helpers shared by the C tests: checks that print the library's message and exit non-zero. */
#ifndef SB_TEST_UTIL_H
#define SB_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shadowbucket.h"

static inline void sb_test_fail(const char *file, int line, const char *expr, unsigned got,
                                unsigned want) {
  char msg[512];
  size_t n = 0;
  sb_last_error_message(msg, sizeof msg, &n);
  fprintf(stderr, "%s:%d: %s returned %u, expected %u (last error: %s)\n", file, line, expr,
          got, want, msg);
  exit(1);
}

/* The call must return `want`. */
#define EXPECT_RC(call, want)                                                                   \
  do {                                                                                          \
    unsigned got_ = (unsigned)(call);                                                           \
    if (got_ != (unsigned)(want)) sb_test_fail(__FILE__, __LINE__, #call, got_, (unsigned)(want)); \
  } while (0)

#define CHECK_OK(call) EXPECT_RC(call, SB_RESULT_OK)

/* A plain condition. */
#define CHECK(cond)                                                                \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);     \
      exit(1);                                                                     \
    }                                                                              \
  } while (0)

/* The calling thread's last error message must contain `needle`. */
#define CHECK_LAST_ERROR_HAS(needle)                                                          \
  do {                                                                                        \
    char m_[512];                                                                             \
    size_t n_ = 0;                                                                            \
    sb_last_error_message(m_, sizeof m_, &n_);                                                \
    if (strstr(m_, (needle)) == NULL) {                                                       \
      fprintf(stderr, "%s:%d: last error \"%s\" lacks \"%s\"\n", __FILE__, __LINE__, m_,     \
              (needle));                                                                      \
      exit(1);                                                                                \
    }                                                                                         \
  } while (0)

/* A fresh temporary directory for store files; `path` gets dir + "/" + name. */
static inline void sb_test_path(char *out, size_t len, const char *dir, const char *name) {
  int n = snprintf(out, len, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= len) {
    fprintf(stderr, "path too long\n");
    exit(1);
  }
}

#define SECOND 1000000000ull
#define TOKENS_PER_SEC(n) ((uint64_t)(n) * 1000000ull)

#endif
