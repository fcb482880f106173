/* Model files: the test writes a small safetensors LSTM itself (safetensors_writer.h), loads it
 * with sb_engine_load_model, ticks and checks the forecasts against values computed here by
 * hand; bad files (truncated, a wrong tensor shape, a wrong format_version, missing) and a store
 * whose columns do not fit are clear errors that leave the predictor as it was;
 * sb_engine_reset_model_state and sb_engine_sync_model_state.
 * Usage: model DIR (an empty directory for the files). */
#include <math.h>

#include "safetensors_writer.h"
#include "test_util.h"

#define MINUTE (60 * SECOND)
#define ID 42

/* The model: hidden 1, one layer, horizons 1 and 5, no feeds, 12 input features. Every weight
 * matrix of the LSTM is zero, so its state does not depend on the inputs: only the gate biases
 * drive it, and after k steps from zero state it is
 *   c_k = f * c_{k-1} + i * g,  h_k = o * tanh(c_k)
 * with i = sigmoid(bi), f = sigmoid(bf), g = tanh(bg), o = sigmoid(bo) (bias_ih + bias_hh, gate
 * order i, f, g, o as in PyTorch). The head reads h: y = head.bias + head.weight * h_k. */
#define HIDDEN 1
#define HORIZONS 2
#define FEATURES 12
#define HEAD (4 * HORIZONS + 4)
static const float B_IH[4] = {1.0f, 2.0f, 0.5f, 1.5f};
static const float B_HH[4] = {0.5f, 0.0f, 0.0f, 0.0f};
static const float W_IH[4 * FEATURES] = {0};
static const float W_HH[4 * HIDDEN] = {0};
/* Per horizon: mean, p50, the p90 and p99 increments; then the four scenario logits. */
static const float HEAD_B[HEAD] = {0.2f, 0.3f, -1.0f, 0.0f, 1.0f, 0.7f, 0.1f, -0.5f,
                                   0.0f, 1.0f, -1.0f, 0.5f};
static const float HEAD_W[HEAD] = {2.0f, 1.0f, 0.5f, -0.5f, 0.5f, -1.0f, 0.25f, 0.0f,
                                   1.0f, -1.0f, 0.0f, 2.0f};
/* 1 interval: the customer scale's weight of the newest interval is 1 - 0.5 = 0.5. */
#define SCALE_BETA 0.5

/* What to get wrong in a model file. */
typedef struct {
  const char *format_version; /* "2" is right */
  size_t head_bias_len;       /* HEAD is right */
} variant;

static const variant GOOD = {"2", HEAD};

static void build_model(const variant *v, st_buf *out) {
  const st_tensor t[] = {
      {"weight_ih_l0", 2, {4 * HIDDEN, FEATURES}, W_IH},
      {"weight_hh_l0", 2, {4 * HIDDEN, HIDDEN}, W_HH},
      {"bias_ih_l0", 1, {4 * HIDDEN}, B_IH},
      {"bias_hh_l0", 1, {4 * HIDDEN}, B_HH},
      {"head.weight", 2, {HEAD, HIDDEN}, HEAD_W},
      {"head.bias", 1, {v->head_bias_len}, HEAD_B},
  };
  const st_meta m[] = {
      {"format", "shadowbucket-lstm"},
      {"format_version", v->format_version},
      {"head", "residual-v1"},
      {"hidden", "1"},
      {"layers", "1"},
      {"horizons", "1,5"},
      {"feeds", ""},
      {"features", "usage,requests,fallback_share,denied_share,deviation,event_customer,scale,"
                   "tod_sin,tod_cos,dow_sin,dow_cos,event_global"},
      {"feature_mean", "[0,0,0,0,0,0,0,0,0,0,0,0]"},
      {"feature_std", "1,1,1,1,1,1,1,1,1,1,1,1"},
      {"scale_half_life", "1"},
  };
  st_build(t, sizeof t / sizeof t[0], m, sizeof m / sizeof m[0], out);
}

/* Writes a model file, cut to its first `len` bytes (SIZE_MAX: all of it). */
static void write_model(const char *path, const variant *v, size_t len) {
  st_buf b;
  build_model(v, &b);
  st_write_file(path, b.p, len < b.len ? len : b.len);
  free(b.p);
}

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }

/* h after `steps` steps from zero state. */
static double hidden_after(int steps) {
  double i = sigmoid(B_IH[0] + B_HH[0]), f = sigmoid(B_IH[1] + B_HH[1]);
  double g = tanh(B_IH[2] + B_HH[2]), o = sigmoid(B_IH[3] + B_HH[3]);
  double c = 0;
  for (int k = 0; k < steps; k++) c = f * c + i * g;
  return o * tanh(c);
}

/* Tokens used in the interval the last tick closed (set by `interval`). */
static uint64_t last_tokens;

/* The forecast the engine must write after the model's `steps`-th step from zero state, with
 * the customer's scale `s` as it was before the interval just closed (at least 1): the head
 * outputs decoded as core/src/model/step.rs::decode does, a residual on the usage feature
 * ln(1 + u/s) of that interval. */
typedef struct {
  double q[HORIZONS][4]; /* mean, p50, p90, p99 */
  double scenario[4];
} expected;

static expected expect(int steps, double s) {
  double h = hidden_after(steps), y[HEAD];
  for (int r = 0; r < HEAD; r++) y[r] = HEAD_B[r] + HEAD_W[r] * h;
  expected e;
  double u = log1p((double)last_tokens / s);
  for (int j = 0; j < HORIZONS; j++) {
    const double *yj = &y[4 * j];
    double z50 = u + yj[1];
    double z90 = z50 + softplus(yj[2]);
    double z99 = z90 + softplus(yj[3]);
    e.q[j][0] = s * expm1(fmax(u + yj[0], 0));
    e.q[j][1] = s * expm1(fmax(z50, 0));
    e.q[j][2] = s * expm1(fmax(z90, 0));
    e.q[j][3] = s * expm1(fmax(z99, 0));
  }
  const double *l = &y[4 * HORIZONS];
  double m = fmax(fmax(l[0], l[1]), fmax(l[2], l[3])), sum = 0;
  for (int k = 0; k < 4; k++) sum += e.scenario[k] = exp(l[k] - m);
  for (int k = 0; k < 4; k++) e.scenario[k] /= sum;
  return e;
}

/* The engine's step is f32 with a rational tanh (error under 2e-6): agreement within 1e-4
 * relative (1e-4 absolute near zero) is ample, and far tighter than any decoding mistake. */
static int close_to(double got, double want) {
  return fabs(got - want) <= 1e-4 * fabs(want) + 1e-4;
}

#define CHECK_CLOSE(got, want)                                                                 \
  do {                                                                                         \
    double g_ = (got), w_ = (want);                                                            \
    if (!close_to(g_, w_)) {                                                                   \
      fprintf(stderr, "%s:%d: %s = %.9g, expected %.9g\n", __FILE__, __LINE__, #got, g_, w_);  \
      exit(1);                                                                                 \
    }                                                                                          \
  } while (0)

static void check_forecast(sb_engine *e, int steps, double s, double scale_after) {
  sb_forecast fc;
  CHECK_OK(sb_engine_forecast(e, ID, &fc));
  CHECK(fc.horizons_len == HORIZONS && fc.horizons[0] == 1 && fc.horizons[1] == 5);
  expected x = expect(steps, s);
  for (int j = 0; j < HORIZONS; j++) {
    CHECK_CLOSE(fc.values[j].mean, x.q[j][0]);
    CHECK_CLOSE(fc.values[j].p50, x.q[j][1]);
    CHECK_CLOSE(fc.values[j].p90, x.q[j][2]);
    CHECK_CLOSE(fc.values[j].p99, x.q[j][3]);
  }
  for (int k = 0; k < 4; k++) CHECK_CLOSE(fc.scenario[k], x.scenario[k]);
  CHECK_CLOSE(fc.scale, scale_after);
  /* The default policy reserves the first horizon's p90 per interval (60 s), as a rate. */
  sb_customer c;
  CHECK_OK(sb_engine_customer(e, ID, &c));
  double want_rate = x.q[0][2] / 60.0 * 1e6;
  CHECK(fabs((double)c.reserved_rate_micros - want_rate) <= 1e-4 * want_rate + 2);
}

/* Uses `tokens` in the interval ending at `*now + MINUTE`, then ticks there. */
static void interval(sb_engine *e, uint64_t *now, uint64_t tokens) {
  sb_decision d;
  CHECK_OK(sb_engine_allocate(e, ID, tokens, *now + MINUTE / 2, &d));
  CHECK(d.outcome == SB_OUTCOME_GRANTED_SHADOW || d.outcome == SB_OUTCOME_GRANTED_POOL);
  last_tokens = tokens;
  *now += MINUTE;
  sb_tick_report rep;
  CHECK_OK(sb_engine_tick(e, *now, &rep));
  CHECK(rep.customers == 1);
}

static void predictor_name(sb_engine *e, char *buf, size_t len) {
  size_t n = 0;
  CHECK_OK(sb_engine_predictor_name(e, buf, len, &n));
}

/* A load that must fail with `want` and a message holding `needle`, leaving the predictor. */
static void expect_load_fails(sb_engine *e, const char *path, sb_result want, const char *needle) {
  char before[128], after[128];
  predictor_name(e, before, sizeof before);
  EXPECT_RC(sb_engine_load_model(e, path), want);
  CHECK_LAST_ERROR_HAS("sb_engine_load_model: ");
  CHECK_LAST_ERROR_HAS(needle);
  predictor_name(e, after, sizeof after);
  CHECK(strcmp(before, after) == 0);
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  char store[4096], model[4096], bad[4096];
  sb_test_path(store, sizeof store, argv[1], "model.sb");
  sb_test_path(model, sizeof model, argv[1], "m.safetensors");
  sb_test_path(bad, sizeof bad, argv[1], "bad.safetensors");
  write_model(model, &GOOD, SIZE_MAX);

  /* A store whose forecaster columns fit the model: 2 floats of state (h and c), 4 per
   * horizon of forecast. */
  sb_create_options o;
  CHECK_OK(sb_create_options_default(8, 1000000, TOKENS_PER_SEC(100000), &o));
  sb_create_options fits = o;
  fits.state_dim = 2 * HIDDEN;
  fits.forecast_dim = 4 * HORIZONS;
  fits.scenario_dim = 4;
  fits.scale_dim = 2;
  sb_engine *e = NULL;
  CHECK_OK(sb_engine_create(store, &fits, &e));
  sb_contract contract = {.burst = 10000, .rate_micros = TOKENS_PER_SEC(1000), .weight = 1};
  uint32_t slot;
  CHECK_OK(sb_engine_add_customer(e, ID, &contract, 0, &slot));

  /* Bad files, before any model: the baseline predictor stays. */
  char name[128];
  predictor_name(e, name, sizeof name);
  CHECK(strstr(name, "lstm") == NULL);
  char missing[4096];
  sb_test_path(missing, sizeof missing, argv[1], "missing.safetensors");
  expect_load_fails(e, missing, SB_RESULT_NOT_FOUND, "missing.safetensors");
  st_buf full;
  build_model(&GOOD, &full);
  write_model(bad, &GOOD, full.len - 6); /* cut inside the last tensor's data */
  expect_load_fails(e, bad, SB_RESULT_BAD_FILE, "not a valid model file: not a safetensors file");
  write_model(bad, &GOOD, 5); /* cut inside the header length */
  expect_load_fails(e, bad, SB_RESULT_BAD_FILE, "not a safetensors file");
  write_model(bad, &GOOD, 8 + 40); /* cut inside the JSON header */
  expect_load_fails(e, bad, SB_RESULT_BAD_FILE, "not a safetensors file");
  free(full.p);
  variant v = GOOD;
  v.head_bias_len = HEAD - 1;
  write_model(bad, &v, SIZE_MAX);
  expect_load_fails(e, bad, SB_RESULT_BAD_FILE, "tensor head.bias has shape [11], expected [12]");
  v = GOOD;
  v.format_version = "3";
  write_model(bad, &v, SIZE_MAX);
  expect_load_fails(e, bad, SB_RESULT_BAD_FILE, "unsupported format_version \"3\"");
  /* A store with the default columns (32 hidden units' worth of state) does not fit. */
  char other[4096];
  sb_test_path(other, sizeof other, argv[1], "other.sb");
  sb_engine *e2 = NULL;
  CHECK_OK(sb_engine_create(other, &o, &e2));
  expect_load_fails(e2, model, SB_RESULT_INVALID_ARGUMENT, "model needs 2 floats of recurrent state");
  CHECK_OK(sb_engine_close(e2));
  EXPECT_RC(sb_engine_load_model(NULL, model), SB_RESULT_NULL_PARAMETER);

  /* The model. Tick 1 decodes with scale 1 (no use seen yet) and seeds the scale with the
   * interval's 200 tokens; tick 2 decodes with 200 and moves it halfway to 400. */
  CHECK_OK(sb_engine_load_model(e, model));
  predictor_name(e, name, sizeof name);
  CHECK(strstr(name, "lstm(hidden=1, layers=1)") != NULL);
  uint64_t now = 0;
  interval(e, &now, 200);
  check_forecast(e, 1, 1.0, 200.0);
  interval(e, &now, 400);
  check_forecast(e, 2, 200.0, 300.0);
  /* A failed load keeps the model and its state: tick 3 is the model's third step. */
  expect_load_fails(e, bad, SB_RESULT_BAD_FILE, "unsupported format_version");
  interval(e, &now, 200);
  check_forecast(e, 3, 300.0, 250.0);
  double h3 = hidden_after(3), h1 = hidden_after(1);
  CHECK(fabs(h3 - h1) > 0.2); /* so that the reset below is visible in the forecast */

  /* Reset: the next tick is the first step from zero state again; scales are kept. */
  CHECK_OK(sb_engine_reset_model_state(e));
  interval(e, &now, 250);
  check_forecast(e, 1, 250.0, 250.0);
  EXPECT_RC(sb_engine_reset_model_state(NULL), SB_RESULT_NULL_PARAMETER);

  /* Sync makes the state durable; the predictor lives in the handle, the state in the store:
   * reopened and given the model again, the next tick is the second step. */
  CHECK_OK(sb_engine_sync_model_state(e));
  EXPECT_RC(sb_engine_sync_model_state(NULL), SB_RESULT_NULL_PARAMETER);
  sb_engine_free(e);
  CHECK_OK(sb_engine_open(store, &e));
  predictor_name(e, name, sizeof name);
  CHECK(strstr(name, "lstm") == NULL);
  CHECK_OK(sb_engine_load_model(e, model));
  interval(e, &now, 250);
  check_forecast(e, 2, 250.0, 250.0);
  CHECK_OK(sb_engine_close(e));

  /* Read-only: the state cannot be reset; syncing has nothing to write. */
  sb_engine *ro = NULL;
  CHECK_OK(sb_engine_open_read_only(store, &ro));
  EXPECT_RC(sb_engine_reset_model_state(ro), SB_RESULT_READ_ONLY);
  CHECK_OK(sb_engine_sync_model_state(ro));
  CHECK_OK(sb_engine_load_model(ro, model)); /* setting a predictor changes only the handle */
  check_forecast(ro, 2, 250.0, 250.0);
  sb_engine_free(ro);

  expected x = expect(2, 250.0);
  printf("model: ok (p50 next interval %.3f tokens, p(spike) %.4f)\n", x.q[0][1], x.scenario[3]);
  return 0;
}
