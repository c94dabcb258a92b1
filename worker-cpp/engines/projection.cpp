// The projection engine (`cpp_projection`): life policies projected under every scenario, their
// cash flows discounted, the present values summed per scenario and averaged per policy.
//
// Theory of operation
// -------------------
// The supervisor chunks the node over policies and calls runChunk once per chunk with a view
// holding the chunk's rows of `policies` and the whole scenario input (`scenarios` from an ESG,
// one `curve`, or rate `paths`). A chunk is self-contained: every number it writes depends only
// on its own policies and the scenarios, so any worker may compute any chunk, and outputs that
// are per policy do not depend on the chunking at all. Per-chunk outputs (`per_scenario`,
// `cashflows`) are sums over the chunk's policies in row order; the supervisor adds the chunk
// slots in chunk order, which makes the totals independent of the number of workers.
//
// The model is normative in issue 3 and documented in worker-cpp/README.md. In short, with m
// steps a year and D(t) the discount factor at step boundary t:
//   if(0) = policy_count, deaths = if q, lapses = (if - deaths) w, if(t+1) = if - deaths - lapses
//   premiums = P if, claims = SA deaths, expenses = acquisition at issue
//     + (maintenance/m (1+i)^(t/m) + %P) if + per-claim deaths, commissions = c(year) premiums,
//   endowment maturity SA if(n) at the end; each type discounted at D(t), sqrt(D(t)D(t+1)) or
//   D(t+1) by its timing; pv_net_cf = premiums - claims - expenses - commissions - maturities.
//
// Work is split across four files so each concern can be read alone:
//   projection_setup.cpp      config keys, CSV assumption tables (cached by path for the
//                             solver's repeated initialize), per-step rate tables
//   projection_scenarios.cpp  every scenario form -> blocked discount / lapse-factor tables
//                             (built once per node, reused across chunks)
//   projection_kernels.cpp    the two algorithms (static decrements: project once, discount
//                             chunk totals; dynamic lapse: 8 scenarios per vector), compiled
//                             for AVX-512, AVX2 and SSE2 with bit-identical results
//   projection.cpp            this file: the ICalcEngine, input validation, output plumbing
//
// Validation happens before a single output byte is written: a chunk either fails with an
// error naming the input, row, policy and column, or writes every declared output column.
#include <chrono>
#include <cmath>

#include "livecalc/buffer_view.hpp"
#include "livecalc/engine_interface.hpp"
#include "projection/api.hpp"

namespace livecalc {
namespace projection {
namespace {

std::string num(double d) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", d);
    return buf;
}

// An integer policy column (int32 or int64), one value per policy.
std::vector<int64_t> int_column(const BufferView& in, const std::string& name, size_t rows) {
    const ColumnInfo& c = in.info(name);
    if (c.ndim != 1 || c.rows != rows) {
        throw ConfigurationError("input column '" + name + "' must be one value per policy (" + std::to_string(rows) + " rows)");
    }
    return livecalc::projection::int_column(in, name);
}

std::span<const double> f64_column(const BufferView& in, const std::string& name, size_t rows) {
    const ColumnInfo& c = in.info(name);
    if (c.dtype != DType::Float64) {
        throw ConfigurationError("input column '" + name + "' is " + dtype_name(c.dtype) + "; expected float64");
    }
    if (c.ndim != 1 || c.rows != rows) {
        throw ConfigurationError("input column '" + name + "' must be one value per policy (" + std::to_string(rows) + " rows)");
    }
    return in.column<double>(name);
}

class ProjectionEngine : public ICalcEngine {
public:
    void initialize(const std::map<std::string, std::string>& config, const AMCredentials* credentials) override {
        (void)credentials;  // assumption tables come from files; no assumptions manager
        initialized_ = false;
        Settings s = parse_settings(config);
        auto mort = load_mortality(s.mortality_path);
        auto lapse = s.lapse_path.empty() ? nullptr : load_lapse(s.lapse_path);
        StepRates rates = make_step_rates(s, *mort, lapse.get());
        std::shared_ptr<const CurveTable> curve;
        if (s.basis == PremiumBasis::Equivalence && !s.pricing_curve.empty()) {
            curve = load_curve(s.pricing_curve, "pricing curve");
        }
        settings_ = std::move(s);
        mortality_ = std::move(mort);
        rates_ = std::move(rates);
        pricing_curve_ = std::move(curve);
        inflation_.clear();
        builder_.reset_pricing();
        initialized_ = true;
    }

    EngineInfo get_info() const override { return EngineInfo("C++ Projection Engine", "1.0.0", "projection", false); }

    ExecutionResult runChunk(const uint8_t* input_buffer, size_t input_size, uint8_t* output_buffer,
                             size_t output_size) override {
        if (!initialized_) throw ExecutionError("engine not initialized");
        const auto started = std::chrono::steady_clock::now();
        if (!input_buffer) throw ConfigurationError("the projection engine needs inputs 'policies' and a scenario input");
        BufferView in(input_buffer, input_size);
        MutableBufferView out(output_buffer, output_size);
        const Settings& s = settings_;

        // Classify the declared outputs first: a wrong name is a DAG error whatever the data.
        struct Slot { const ColumnInfo* info; std::string binding, column; };
        std::vector<Slot> slots;
        for (const ColumnInfo& c : out.columns()) {
            size_t dot = c.name.find('.');
            Slot slot{&c, c.name.substr(0, dot), dot == std::string::npos ? "" : c.name.substr(dot + 1)};
            check_output_name(slot.binding, slot.column, c);
            slots.push_back(std::move(slot));
        }

        std::vector<Policy> pols = read_policies(in);
        int n_max = 0;
        size_t longest = 0;
        for (size_t i = 0; i < pols.size(); ++i) {
            if (pols[i].n > n_max) { n_max = pols[i].n; longest = i; }
        }

        const ScenarioTables& sc = builder_.tables(in, s);
        const char* step_word = s.steps_per_year == 12 ? "monthly" : "annual";
        if (n_max > sc.T) {
            throw ExecutionError("scenario input '" + sc.source + "' (" + sc.coverage + ") covers " + std::to_string(sc.T) + " " +
                                 step_word + " steps, but " + policy_ref(in, pols, longest) + " needs " + std::to_string(n_max) +
                                 "; supply longer scenarios");
        }
        const PricingScenario* pricing = nullptr;
        if (s.basis == PremiumBasis::Equivalence) {
            pricing = &builder_.pricing(s, pricing_curve_.get());
            if (n_max > pricing->T) {
                throw ExecutionError("pricing basis (" + pricing->source + ") covers " + std::to_string(pricing->T) + " " + step_word +
                                     " steps, but " + policy_ref(in, pols, longest) + " needs " + std::to_string(n_max));
            }
        }

        // Shapes depend on the data (S scenarios, the longest policy): check them now, still
        // before anything is written.
        const size_t R = pols.size();
        OutputTargets t;
        size_t bytes = 0;
        for (const Slot& slot : slots) {
            const ColumnInfo& c = *slot.info;
            auto shape_error = [&](const std::string& want) {
                return ConfigurationError("output column '" + c.name + "' must have shape " + want + ", the DAG gives [" +
                                          std::to_string(c.rows) + (c.ndim == 2 ? ", " + std::to_string(c.width) : "") + "]");
            };
            bytes += size_t(c.nbytes);
            if (slot.binding == "per_scenario") {
                if (c.ndim != 1 || c.rows != size_t(sc.S)) throw shape_error("[" + std::to_string(sc.S) + "] (one value per scenario)");
                t.per_scenario[comp_index(slot.column)] = out.column<double>(c.name).data();
            } else if (slot.binding == "per_policy") {
                if (c.ndim != 1 || c.rows != R) throw shape_error("[rows]");
                if (slot.column == "policy_id") t.policy_id = out.column<int64_t>(c.name).data();
                else if (slot.column == "premium") t.premium = out.column<double>(c.name).data();
                else if (slot.column == "premium_per_step") t.premium_per_step = out.column<double>(c.name).data();
                else t.per_policy[comp_index(slot.column)] = out.column<double>(c.name).data();
            } else if (slot.binding == "policy_scenario") {
                if (slot.column == "policy_id") {
                    if (c.ndim != 1 || c.rows != R) throw shape_error("[rows]");
                    t.ps_policy_id = out.column<int64_t>(c.name).data();
                } else {
                    bool ok = c.rows == R && (c.ndim == 2 ? c.width == size_t(sc.S) : sc.S == 1);
                    if (!ok) throw shape_error("[rows, " + std::to_string(sc.S) + "]");
                    t.policy_scenario[comp_index(slot.column)] = out.column<double>(c.name).data();
                }
            } else {  // cashflows
                if (c.ndim != 1 || c.rows < size_t(n_max)) {
                    throw ConfigurationError("output column '" + c.name + "' holds " + std::to_string(c.rows) + " steps but " +
                                             policy_ref(in, pols, longest) + " runs " + std::to_string(n_max) + " " + step_word +
                                             " steps; declare a longer shape");
                }
                if (t.cf_steps != 0 && size_t(t.cf_steps) != c.rows) throw ConfigurationError("the columns of output 'cashflows' differ in length");
                t.cf_steps = int(c.rows);
                t.cashflows[cf_index(slot.column)] = out.column<double>(c.name).data();
            }
        }

        // (1 + i)^(t/m) once per step, not per policy-step.
        for (size_t k = inflation_.size(); k <= size_t(n_max); ++k) {
            inflation_.push_back(std::pow(1.0 + s.inflation, double(k) / double(s.steps_per_year)));
        }

        ChunkJob job;
        job.settings = &s;
        job.rates = &rates_;
        job.scen = &sc;
        job.pricing = pricing;
        job.inflation = &inflation_;
        job.policies = &pols;
        job.n_max = n_max;
        job.out = t;
        compute_chunk(job, s.simd);

        for (size_t i = 0; i < R; ++i) {
            if (t.policy_id) t.policy_id[i] = pols[i].id;
            if (t.ps_policy_id) t.ps_policy_id[i] = pols[i].id;
            if (t.premium) t.premium[i] = pols[i].premium_step * double(s.steps_per_year);
            if (t.premium_per_step) t.premium_per_step[i] = pols[i].premium_step;
        }

        ExecutionResult r;
        r.success = true;
        r.rows_processed = R;
        r.bytes_written = bytes;
        r.execution_time_ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
        return r;
    }

    void dispose() noexcept override {
        initialized_ = false;
        builder_.reset();
        mortality_.reset();
        pricing_curve_.reset();
        inflation_.clear();
    }

    bool is_initialized() const override { return initialized_; }

private:
    static size_t comp_index(const std::string& col) {
        for (size_t i = 0; i < kCompNames.size(); ++i) if (col == kCompNames[i]) return i;
        return 0;
    }
    static size_t cf_index(const std::string& col) {
        for (size_t i = 0; i < kCfNames.size(); ++i) if (col == kCfNames[i]) return i;
        return 0;
    }

    static void check_output_name(const std::string& binding, const std::string& column, const ColumnInfo& c) {
        auto is_comp = [&] { for (auto* n : kCompNames) if (column == n) return true; return false; };
        auto is_cf = [&] { for (auto* n : kCfNames) if (column == n) return true; return false; };
        bool known = false;
        bool want_int = column == "policy_id";
        if (binding == "per_scenario") known = is_comp();
        else if (binding == "per_policy") known = is_comp() || column == "policy_id" || column == "premium" || column == "premium_per_step";
        else if (binding == "policy_scenario") known = is_comp() || column == "policy_id";
        else if (binding == "cashflows") known = is_cf();
        else {
            throw ConfigurationError("unknown output '" + binding +
                                     "': the projection engine writes per_scenario, per_policy, policy_scenario and cashflows");
        }
        if (!known) {
            std::string list;
            if (binding == "per_scenario") for (auto* n : kCompNames) list += std::string(list.empty() ? "" : ", ") + n;
            else if (binding == "per_policy") { list = "policy_id, premium, premium_per_step"; for (auto* n : kCompNames) list += std::string(", ") + n; }
            else if (binding == "policy_scenario") { list = "policy_id"; for (auto* n : kCompNames) list += std::string(", ") + n; }
            else for (auto* n : kCfNames) list += std::string(list.empty() ? "" : ", ") + n;
            throw ConfigurationError("unknown output column '" + c.name + "' (output '" + binding + "' has " + list + ")");
        }
        DType want = want_int ? DType::Int64 : DType::Float64;
        if (c.dtype != want) {
            throw ConfigurationError("output column '" + c.name + "' must be " + dtype_name(want) + ", the DAG declares " +
                                     dtype_name(c.dtype));
        }
    }

    std::string policy_ref(const BufferView& in, const std::vector<Policy>& pols, size_t i) const {
        return "policy " + std::to_string(pols[i].id) + " (input 'policies' row " + std::to_string(in.row_start() + i) + ")";
    }

    std::vector<Policy> read_policies(const BufferView& in) const {
        const Settings& s = settings_;
        // Extra model-point columns (product names, channels, ...) are common and ignored.
        for (const char* req : {"policy_id", "age_at_entry", "sex", "policy_term", "sum_assured", "product"}) {
            if (!in.has(std::string("policies.") + req)) {
                throw ConfigurationError(std::string("input 'policies' has no column '") + req +
                                         "' (needed: policy_id, age_at_entry, sex, policy_term, sum_assured, product)");
            }
        }
        if (s.basis == PremiumBasis::Given && !in.has("policies.premium")) {
            throw ConfigurationError("input 'policies' has no column 'premium', which premium_basis \"given\" needs");
        }
        const size_t R = in.info("policies.policy_id").rows;
        auto id = int_column(in, "policies.policy_id", R);
        auto age = int_column(in, "policies.age_at_entry", R);
        auto sex = int_column(in, "policies.sex", R);
        auto term = int_column(in, "policies.policy_term", R);
        auto product = int_column(in, "policies.product", R);
        auto sa = f64_column(in, "policies.sum_assured", R);
        std::span<const double> count, premium;
        std::vector<int64_t> dur;
        if (in.has("policies.policy_count")) count = f64_column(in, "policies.policy_count", R);
        if (s.basis == PremiumBasis::Given) premium = f64_column(in, "policies.premium", R);
        if (in.has("policies.duration_mth")) dur = int_column(in, "policies.duration_mth", R);

        const int h = s.months_per_step;
        std::vector<Policy> pols(R);
        for (size_t i = 0; i < R; ++i) {
            const uint64_t row = in.row_start() + i;
            auto bad = [&](const char* col, const std::string& what) {
                return ExecutionError("input 'policies' row " + std::to_string(row) + " (policy_id " + std::to_string(id[i]) +
                                      "), column '" + col + "': " + what);
            };
            Policy& p = pols[i];
            p.id = id[i];
            if (product[i] < 0 || product[i] > 2) {
                throw bad("product", "unknown product code " + std::to_string(product[i]) + " (0 = term, 1 = whole_life, 2 = endowment)");
            }
            p.product = Product(product[i]);
            if (sex[i] != 0 && sex[i] != 1) throw bad("sex", "sex code " + std::to_string(sex[i]) + " is not 0 (M) or 1 (F)");
            p.sex = int32_t(sex[i]);
            if (age[i] < 0 || age[i] > 200) throw bad("age_at_entry", "age " + std::to_string(age[i]) + " is outside 0..200");
            p.age = int32_t(age[i]);
            if (p.product != Product::WholeLife && (term[i] <= 0 || term[i] > 200)) {
                throw bad("policy_term", "policy term " + std::to_string(term[i]) + " must be between 1 and 200 years");
            }
            p.term = int32_t(std::clamp<int64_t>(term[i], -1, 1000));
            if (!std::isfinite(sa[i])) throw bad("sum_assured", "sum assured " + num(sa[i]) + " is not finite");
            if (sa[i] < 0.0) throw bad("sum_assured", "negative sum assured " + num(sa[i]));
            p.sum_assured = sa[i];
            if (!count.empty()) {
                if (!std::isfinite(count[i]) || !(count[i] > 0.0)) {
                    throw bad("policy_count", "policy count " + num(count[i]) + " must be a positive finite number");
                }
                p.count = count[i];
            }
            if (!premium.empty()) {
                if (!std::isfinite(premium[i]) || premium[i] < 0.0) {
                    throw bad("premium", "premium " + num(premium[i]) + " must be a finite number >= 0");
                }
                p.premium = premium[i];
            }
            if (!dur.empty()) {
                if (dur[i] < 0 || dur[i] > 2400) throw bad("duration_mth", "months in force " + std::to_string(dur[i]) + " is outside 0..2400");
                if (dur[i] % h != 0) {
                    throw bad("duration_mth", "months in force " + std::to_string(dur[i]) +
                                                  " is not a whole number of annual steps (use timestep \"monthly\")");
                }
                p.duration = int32_t(dur[i]);
            }

            const StepRates::Part& mp = rates_.part[p.sex];
            const int first_age = p.age + p.duration / 12;
            int last_age = 0;
            if (p.product == Product::WholeLife) {
                const int omega = s.whole_life_max_age.value_or(mp.max_age);
                const int months_left = 12 * (omega + 1 - p.age) - p.duration;
                if (months_left <= 0) {
                    throw bad(p.duration > 0 ? "duration_mth" : "age_at_entry",
                              "a whole-life policy entering at age " + std::to_string(p.age) + " with " + std::to_string(p.duration) +
                                  " months in force has no time left before age " + std::to_string(omega + 1) +
                                  " (the end of the mortality table or whole_life_max_age)");
                }
                p.n = months_left / h;
                last_age = omega;
            } else {
                const int months_left = 12 * p.term - p.duration;
                if (months_left <= 0) {
                    throw bad("duration_mth", "months in force " + std::to_string(p.duration) + " reach the policy term of " +
                                                  std::to_string(p.term) + " years");
                }
                p.n = months_left / h;
                last_age = p.age + (12 * p.term - 1) / 12;
            }
            if (first_age < mp.min_age || last_age > mp.max_age) {
                throw bad("age_at_entry", "attained ages " + std::to_string(first_age) + ".." + std::to_string(last_age) +
                                              " are needed but mortality table '" + s.mortality_path + "' covers " +
                                              std::to_string(mp.min_age) + ".." + std::to_string(mp.max_age) +
                                              (p.sex == 0 ? " for M" : " for F"));
            }
            p.n_first = p.duration < 12 ? std::min(p.n, (12 - p.duration) / h) : 0;
        }
        return pols;
    }

    bool initialized_ = false;
    Settings settings_;
    std::shared_ptr<const MortalityTable> mortality_;
    StepRates rates_;
    std::shared_ptr<const CurveTable> pricing_curve_;
    std::vector<double> inflation_;
    ScenarioBuilder builder_;
};

}  // namespace
}  // namespace projection

void register_projection(EngineRegistry& registry) {
    registry.add("projection", [] { return std::make_unique<projection::ProjectionEngine>(); });
}

}  // namespace livecalc
