// Functions the projection engine's translation units offer each other.
//
//   projection_setup.cpp      config -> Settings; CSV tables (cached by path) -> StepRates
//   projection_scenarios.cpp  scenario inputs -> ScenarioTables (cached by content)
//   projection_kernels.cpp    the numerical work, one build per instruction set
//   projection.cpp            the ICalcEngine: validation, orchestration, outputs
#pragma once

#include <array>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "livecalc/buffer_view.hpp"
#include "projection/model.hpp"

namespace livecalc::projection {

// ---- setup ------------------------------------------------------------------------------------

Settings parse_settings(const std::map<std::string, std::string>& config);
std::shared_ptr<const MortalityTable> load_mortality(const std::string& path);
std::shared_ptr<const LapseTable> load_lapse(const std::string& path);
std::shared_ptr<const CurveTable> load_curve(const std::string& path, const std::string& role);
StepRates make_step_rates(const Settings& s, const MortalityTable& mort, const LapseTable* lapse);
// Drop every cached table (tests use it to prove a re-read).
void clear_table_cache();

// ---- scenarios --------------------------------------------------------------------------------

// An integer column, read whether the DAG declared it int32 or int64.
std::vector<int64_t> int_column(const BufferView& in, const std::string& name);

// Which input carries the scenarios, found by column presence.
enum class ScenarioSource { Esg, Curve, Paths };

struct ScenarioBuilder {
    // Build (or reuse, when the input bytes and settings are unchanged) the tables for `in`.
    const ScenarioTables& tables(const BufferView& in, const Settings& s);
    // The pricing basis: the configured curve, or one scenario of the tables.
    const PricingScenario& pricing(const Settings& s, const CurveTable* curve);
    void reset();
    // The pricing curve may change between initialize calls; the scenario tables need not.
    void reset_pricing() { pricing_.reset(); }

private:
    std::vector<uint8_t> key_;
    std::unique_ptr<ScenarioTables> tables_;
    std::unique_ptr<PricingScenario> pricing_;
};

// Fill D(t) and, when dynamic lapse is on, the lapse factor from one deterministic curve.
PricingScenario curve_scenario(const CurveTable& c, const Settings& s, const std::string& source);

// ---- outputs ----------------------------------------------------------------------------------

// PV components, in the order of every per-scenario and per-policy array.
enum Comp : int { kNet = 0, kPrem, kClaims, kExp, kComm, kMat, kComps };
inline constexpr std::array<const char*, kComps> kCompNames = {
    "pv_net_cf", "pv_premiums", "pv_claims", "pv_expenses", "pv_commissions", "pv_maturities"};

// Cash-flow columns of the `cashflows` output.
enum CfCol : int { kCfPrem = 0, kCfClaims, kCfExp, kCfComm, kCfMat, kCfNet, kCfInForce, kCfDeaths, kCfLapses, kCfCols };
inline constexpr std::array<const char*, kCfCols> kCfNames = {
    "premiums", "claims", "expenses", "commissions", "maturities", "net_cf", "in_force", "deaths", "lapses"};

// Where the chunk's results go; a null pointer means the DAG did not declare that column.
struct OutputTargets {
    std::array<double*, kComps> per_scenario{};     // [S]
    int64_t* policy_id = nullptr;                   // [rows]
    std::array<double*, kComps> per_policy{};       // [rows]
    double* premium = nullptr;                      // [rows] annual premium charged
    double* premium_per_step = nullptr;             // [rows]
    int64_t* ps_policy_id = nullptr;                // [rows]
    std::array<double*, kComps> policy_scenario{};  // [rows][S]
    std::array<double*, kCfCols> cashflows{};       // [cf_steps]
    int cf_steps = 0;

    bool any_per_scenario() const { for (auto* p : per_scenario) if (p) return true; return false; }
    bool any_per_policy() const {
        for (auto* p : per_policy) if (p) return true;
        return policy_id || premium || premium_per_step;
    }
    bool any_policy_scenario() const { for (auto* p : policy_scenario) if (p) return true; return false; }
    bool any_cashflows() const { for (auto* p : cashflows) if (p) return true; return false; }
};

struct ChunkJob {
    const Settings* settings = nullptr;
    const StepRates* rates = nullptr;
    const ScenarioTables* scen = nullptr;
    const PricingScenario* pricing = nullptr;    // only for the equivalence basis
    const std::vector<double>* inflation = nullptr;  // (1 + i)^(t/m), t = 0..n_max
    std::vector<Policy>* policies = nullptr;
    int n_max = 0;
    OutputTargets out;
};

// Run the chunk with the instruction set `simd` selects (resolved: never Auto).
void compute_chunk(ChunkJob& job, Simd simd);
// The best instruction set this CPU supports, and whether `s` can run here.
Simd best_simd();
bool simd_supported(Simd s);
const char* simd_name(Simd s);

// Round half to even at two decimals, independently of the floating-point environment.
double round_cents_half_even(double x);

}  // namespace livecalc::projection
