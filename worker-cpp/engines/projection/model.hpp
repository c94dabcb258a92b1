// Types shared by the projection engine's translation units (see engines/projection.cpp for
// the theory of operation). Everything here is plain data: settings parsed at initialize, the
// per-step rate tables derived from them, one chunk's validated policies, and the scenario
// tables in the blocked layout the kernels stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

namespace livecalc::projection {

// Scenarios are processed in blocks of this many lanes: one AVX-512 register of doubles, two
// AVX2 registers, four SSE2 registers. The lane count is fixed for every instruction set, so
// the order of every floating-point operation — and hence every bit of the result — is the
// same whichever variant runs.
inline constexpr int kLanes = 8;

// std::vector with 64-byte aligned storage: the kernels load whole cache lines of 8 doubles.
template <typename T>
struct AlignedAllocator {
    using value_type = T;
    AlignedAllocator() = default;
    template <typename U> AlignedAllocator(const AlignedAllocator<U>&) {}
    T* allocate(size_t n) {
        return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
    }
    void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
    template <typename U> bool operator==(const AlignedAllocator<U>&) const { return true; }
};
using AlignedVec = std::vector<double, AlignedAllocator<double>>;

enum class Timing : uint8_t { Start = 0, Mid = 1, End = 2 };
enum class Product : int32_t { Term = 0, WholeLife = 1, Endowment = 2 };
enum class PremiumBasis : uint8_t { Given, Equivalence };
enum class Simd : uint8_t { Auto, Avx512, Avx2, Sse2 };

struct DynamicLapse {
    bool on = false;
    double k = 0.0;
    double r_ref = 0.0;
    double lo = 0.0;
    double hi = std::numeric_limits<double>::infinity();
};

// Every config setting, validated. Monetary amounts are per policy; rates are fractions.
struct Settings {
    int steps_per_year = 12;           // m
    int months_per_step = 1;           // 12 / m
    int scenario_steps_per_year = 0;   // of the `scenarios` input; 0 = same as m
    std::optional<int> whole_life_max_age;

    double acquisition = 0.0;          // per policy, at issue (new business only)
    double maintenance = 0.0;          // per policy per year, inflated
    double premium_rate = 0.0;         // fraction of each premium
    double per_claim = 0.0;            // per death
    double inflation = 0.0;            // per year, from the valuation date

    double commission_first = 0.0;     // fraction of premiums in policy year 0
    double commission_renewal = 0.0;   // fraction of later premiums

    double mult_mortality = 1.0, mult_lapse = 1.0, mult_expense = 1.0, mult_premium = 1.0;

    Timing t_prem = Timing::Start, t_claims = Timing::End, t_exp = Timing::Start, t_comm = Timing::Start;

    PremiumBasis basis = PremiumBasis::Given;
    double loading = 0.0;
    int pricing_scenario = 0;
    std::string pricing_curve;         // path; empty = use scenario `pricing_scenario`

    DynamicLapse dyn;
    Simd simd = Simd::Auto;

    std::string mortality_path, lapse_path;
};

// Annual assumption tables as read from CSV (cached by path between initialize calls).
struct MortalityTable {
    struct Part {
        bool present = false;
        int min_age = 0, max_age = -1;
        std::vector<double> q;  // [(age - min_age) * cols + select column]
    };
    int cols = 1;               // select columns 0..K (1 = ultimate only)
    bool by_sex = false;
    Part part[2];               // 0 = M, 1 = F; identical when the table has no sex column
};

struct LapseTable {
    std::vector<double> rate;   // by policy year 0, 1, ...; the last holds beyond
};

struct CurveTable {
    std::vector<double> spot;   // spot[k] applies to 0 <= t/m - k < 1
};

// Per-step decrement rates after multipliers and conversion from annual rates.
struct StepRates {
    int cols = 1;
    struct Part {
        bool present = false;
        int min_age = 0, max_age = -1;
        std::vector<double> q;
    } part[2];
    std::vector<double> w;

    double q_at(int sex, int age, int policy_year) const {
        const Part& p = part[sex];
        int c = policy_year < cols ? policy_year : cols - 1;
        return p.q[size_t(age - p.min_age) * size_t(cols) + size_t(c)];
    }
    double w_at(int policy_year) const {
        if (w.empty()) return 0.0;
        return w[size_t(policy_year) < w.size() ? size_t(policy_year) : w.size() - 1];
    }
};

// One validated policy of the chunk.
struct Policy {
    int64_t id = 0;
    int32_t age = 0;         // at entry
    int32_t sex = 0;
    int32_t term = 0;        // years
    Product product = Product::Term;
    int32_t duration = 0;    // months in force at the valuation date
    double sum_assured = 0.0;
    double count = 1.0;
    double premium = 0.0;    // annual, `given` basis
    int n = 0;               // projection steps
    int n_first = 0;         // of which in policy year 0 (first-year commission)
    double premium_step = 0.0;  // premium per step actually charged
};

// Scenario discount and lapse-factor tables, blocked for the kernels: element (s, t) of a
// table lives at [(s / 8) * rows + t] * 8 + s % 8, so the 8 lanes of a block at step t are one
// aligned cache line and a block's steps follow each other. Padding lanes hold D = 0, F = 1.
struct ScenarioTables {
    int S = 0;                // scenarios
    int blocks = 0;           // ceil(S / 8)
    int T = 0;                // steps covered: discount factors exist for boundaries 0..T
    bool dynamic = false;
    AlignedVec D;             // [blocks][T + 1][8]   D(t) at step boundaries
    AlignedVec Dmid;          // [blocks][T][8]       sqrt(D(t) D(t+1)); empty unless used
    AlignedVec F;             // [blocks][T][8]       dynamic lapse factor; empty unless dynamic
    double f_max = 1.0;       // largest lapse factor in F
    AlignedVec R;             // [blocks][T][8]       D(t+1) / D(t); only with dynamic lapse
    AlignedVec meanD, meanDmid;  // [T + 1], [T]      mean over scenarios, scenario order
    std::string source;       // how the scenarios arrived, for messages
    std::string coverage;     // e.g. "30 yearly curve rows", for messages
};

// One deterministic scenario in natural layout: the pricing basis for equivalence premiums.
struct PricingScenario {
    int T = 0;
    std::vector<double> D, Dmid, F;   // [T + 1], [T], [T] (F = 1 without dynamic lapse)
    std::string source;
};

}  // namespace livecalc::projection
