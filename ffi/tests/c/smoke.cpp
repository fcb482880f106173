// The header from C++: a small RAII wrapper, std::vector batches and std::thread callers.
// Usage: smoke DIR (an empty directory for the store files).
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "shadowbucket.h"

static_assert(sizeof(sb_outcome) == 4, "sb_outcome is a uint32_t");
static_assert(std::is_same<std::underlying_type<sb_result>::type, uint32_t>::value,
              "sb_result is a uint32_t");

namespace {

struct EngineDeleter {
  void operator()(sb_engine *e) const { sb_engine_free(e); }
};
using EnginePtr = std::unique_ptr<sb_engine, EngineDeleter>;

// Turns a failed call into an exception carrying the library's message.
void check(sb_result r, const char *what) {
  if (r == SB_RESULT_OK) return;
  char msg[512];
  size_t n = 0;
  sb_last_error_message(msg, sizeof msg, &n);
  throw std::runtime_error(std::string(what) + ": " + std::to_string(static_cast<unsigned>(r)) +
                           " (" + std::string(msg, n) + ")");
}

#define EXPECT(cond)                                                       \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::exit(1);                                                        \
    }                                                                      \
  } while (0)

constexpr uint64_t kSecond = 1000000000ull;

}  // namespace

int main(int argc, char **argv) {
  EXPECT(argc == 2);
  const std::string path = std::string(argv[1]) + "/smoke.sb";
  try {
    sb_create_options opts;
    check(sb_create_options_default(1024, 1000000, 100000ull * 1000000ull, &opts), "options");
    sb_engine *raw = nullptr;
    check(sb_engine_create(path.c_str(), &opts, &raw), "create");
    EnginePtr eng(raw);

    std::vector<uint64_t> ids(256);
    std::vector<sb_contract> contracts(ids.size());
    std::vector<uint32_t> slots(ids.size());
    for (size_t i = 0; i < ids.size(); i++) {
      ids[i] = 1 + i;
      contracts[i] = sb_contract{10000, 1000ull * 1000000ull, 1};
    }
    check(sb_engine_add_customers(eng.get(), ids.data(), ids.size(), contracts.data(),
                                  contracts.size(), 0, slots.data(), slots.size()),
          "add_customers");

    // Four threads allocate, two of them in batches; they share the handle.
    std::atomic<uint64_t> now{kSecond};
    std::atomic<uint64_t> granted{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++) {
      threads.emplace_back([&, t] {
        std::vector<uint64_t> tok(32, 5), retry(32);
        std::vector<sb_outcome> out(32);
        std::vector<uint64_t> bid(32);
        for (int round = 0; round < 100; round++) {
          uint64_t at = now.fetch_add(1000) + 1000;
          if (t % 2 == 0) {
            for (size_t i = 0; i < bid.size(); i++) bid[i] = ids[(round * 32 + i + t) % ids.size()];
            check(sb_engine_allocate_batch(eng.get(), bid.data(), bid.size(), tok.data(), tok.size(),
                                           at, out.data(), out.size(), retry.data(), retry.size()),
                  "allocate_batch");
            for (sb_outcome o : out)
              if (o == SB_OUTCOME_GRANTED_POOL || o == SB_OUTCOME_GRANTED_SHADOW) granted += 5;
          } else {
            sb_decision d;
            check(sb_engine_allocate(eng.get(), ids[(round + t) % ids.size()], 5, at, &d), "allocate");
            if (d.outcome == SB_OUTCOME_GRANTED_POOL || d.outcome == SB_OUTCOME_GRANTED_SHADOW) granted += 5;
            sb_stats st;
            check(sb_engine_stats(eng.get(), &st), "stats");
          }
        }
      });
    }
    for (auto &th : threads) th.join();

    sb_stats st;
    check(sb_engine_stats(eng.get(), &st), "stats");
    EXPECT(st.requests == 2 * 100 * 32 + 2 * 100);
    EXPECT(st.tokens_shadow + st.tokens_pool == granted.load());
    sb_ledger ledger;
    check(sb_engine_ledger(eng.get(), now.load(), &ledger), "ledger");
    EXPECT(ledger.balanced);

    // Errors come back as codes; this wrapper turns them into exceptions.
    bool threw = false;
    try {
      sb_customer v;
      check(sb_engine_customer(eng.get(), 99999, &v), "customer");
    } catch (const std::runtime_error &e) {
      threw = std::string(e.what()).find("unknown customer 99999") != std::string::npos;
    }
    EXPECT(threw);
    check(sb_engine_close(eng.release()), "close");
    std::printf("smoke (C++): ok (%llu requests)\n", static_cast<unsigned long long>(st.requests));
  } catch (const std::exception &e) {
    std::fprintf(stderr, "smoke: %s\n", e.what());
    return 1;
  }
  return 0;
}
