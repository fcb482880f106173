/* A minimal safetensors writer for the C tests: F32 tensors and string metadata.
 *
 * The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
 * N, then N bytes of JSON mapping each tensor's name to {"dtype", "shape", "data_offsets":
 * [begin, end]} (byte offsets into the data that follows, contiguous, in order) plus an optional
 * "__metadata__" object of string values, then the tensors' raw little-endian bytes.
 *
 * Names, keys and values are written without JSON escaping: they must not hold '"', '\\' or
 * control characters (st_build aborts the test if they do). */
#ifndef SB_SAFETENSORS_WRITER_H
#define SB_SAFETENSORS_WRITER_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ST_MAX_DIMS 4

typedef struct {
  const char *name;
  size_t ndim;                 /* 1..ST_MAX_DIMS */
  size_t shape[ST_MAX_DIMS];
  const float *data;           /* shape[0] * ... * shape[ndim-1] floats */
} st_tensor;

typedef struct {
  const char *key;
  const char *value;
} st_meta;

/* A growable byte buffer; `st_die` on allocation failure. */
typedef struct {
  unsigned char *p;
  size_t len, cap;
} st_buf;

static inline void st_die(const char *why) {
  fprintf(stderr, "safetensors writer: %s\n", why);
  exit(1);
}

static inline void st_put(st_buf *b, const void *src, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap *= 2;
    unsigned char *p = (unsigned char *)realloc(b->p, cap);
    if (p == NULL) st_die("out of memory");
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, src, n);
  b->len += n;
}

static inline void st_puts(st_buf *b, const char *s) { st_put(b, s, strlen(s)); }

static inline void st_put_json_string(st_buf *b, const char *s) {
  for (const char *c = s; *c; c++) {
    if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) st_die("string needs JSON escaping");
  }
  st_puts(b, "\"");
  st_puts(b, s);
  st_puts(b, "\"");
}

static inline void st_put_u64(st_buf *b, uint64_t v) {
  char tmp[32];
  snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
  st_puts(b, tmp);
}

static inline size_t st_elements(const st_tensor *t) {
  if (t->ndim == 0 || t->ndim > ST_MAX_DIMS) st_die("bad ndim");
  size_t n = 1;
  for (size_t d = 0; d < t->ndim; d++) n *= t->shape[d];
  return n;
}

/* The whole file's bytes for these tensors (in this order) and metadata. The caller frees
 * `out->p`. */
static inline void st_build(const st_tensor *tensors, size_t n_tensors, const st_meta *meta,
                            size_t n_meta, st_buf *out) {
  st_buf h = {0};
  st_puts(&h, "{");
  if (n_meta > 0) {
    st_puts(&h, "\"__metadata__\":{");
    for (size_t i = 0; i < n_meta; i++) {
      if (i) st_puts(&h, ",");
      st_put_json_string(&h, meta[i].key);
      st_puts(&h, ":");
      st_put_json_string(&h, meta[i].value);
    }
    st_puts(&h, "}");
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < n_tensors; i++) {
    const st_tensor *t = &tensors[i];
    if (n_meta > 0 || i) st_puts(&h, ",");
    st_put_json_string(&h, t->name);
    st_puts(&h, ":{\"dtype\":\"F32\",\"shape\":[");
    for (size_t d = 0; d < t->ndim; d++) {
      if (d) st_puts(&h, ",");
      st_put_u64(&h, t->shape[d]);
    }
    uint64_t bytes = 4 * (uint64_t)st_elements(t);
    st_puts(&h, "],\"data_offsets\":[");
    st_put_u64(&h, offset);
    st_puts(&h, ",");
    st_put_u64(&h, offset + bytes);
    st_puts(&h, "]}");
    offset += bytes;
  }
  st_puts(&h, "}");
  /* Pad the header with spaces to a multiple of 8 bytes, as the reference writer does, so that
   * the data starts aligned. */
  while (h.len % 8 != 0) st_puts(&h, " ");

  *out = (st_buf){0};
  unsigned char len_le[8];
  for (int k = 0; k < 8; k++) len_le[k] = (unsigned char)((uint64_t)h.len >> (8 * k));
  st_put(out, len_le, 8);
  st_put(out, h.p, h.len);
  free(h.p);
  for (size_t i = 0; i < n_tensors; i++) {
    size_t n = st_elements(&tensors[i]);
    for (size_t j = 0; j < n; j++) {
      uint32_t bits;
      memcpy(&bits, &tensors[i].data[j], 4);
      unsigned char le[4] = {(unsigned char)bits, (unsigned char)(bits >> 8),
                             (unsigned char)(bits >> 16), (unsigned char)(bits >> 24)};
      st_put(out, le, 4);
    }
  }
}

/* Writes the first `len` bytes of `bytes` to `path` (replacing it). */
static inline void st_write_file(const char *path, const unsigned char *bytes, size_t len) {
  FILE *f = fopen(path, "wb");
  if (f == NULL) st_die("cannot create the file");
  if (len > 0 && fwrite(bytes, 1, len, f) != len) st_die("short write");
  if (fclose(f) != 0) st_die("cannot close the file");
}

#endif
