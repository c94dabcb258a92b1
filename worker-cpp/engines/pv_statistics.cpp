// The statistics engine (`cpp_pv_statistics`): summary statistics of the per-scenario present
// values a projection node produced.
//
// Input  `per_scenario.<column>` (float64, one value per scenario; the reduced per-chunk output
//        of a projection node). The column is pv_net_cf unless config key `column` names
//        another (e.g. pv_claims).
// Output `statistics.<name>`, each float64 of shape [1]. The DAG chooses the statistics by
//        naming the columns; a level is written in percent with '_' for the decimal point
//        ("p99_5" is the 99.5th percentile):
//   mean, std       arithmetic mean; sample standard deviation (divisor S - 1; NaN when S = 1)
//   min, max, count smallest and largest value; S
//   p<L>            percentile of the value itself, 0 <= L <= 100, linear interpolation between
//                   order statistics: h = (S - 1) L/100, x[floor h] + frac(h) (x[floor h + 1] - x[floor h])
//                   (numpy's default "linear" method, Hyndman & Fan type 7)
//   var<L>          value at risk of the loss -value at level a = L/100, 0 < L < 100: the
//                   empirical lower quantile, the ceil(a S)-th smallest loss (no interpolation)
//   cte<L>          conditional tail expectation of the loss: the mean of the worst
//                   k = ceil((1 - a) S) losses
// ceil(a S) and ceil((1 - a) S) are computed in integers from the decimal level, so that 99.5%
// of 1000 scenarios is exactly 995 (and the tail exactly 5), free of binary rounding.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include "livecalc/buffer_view.hpp"
#include "livecalc/engine_interface.hpp"

namespace livecalc {
namespace {

struct Level {
    uint64_t num = 0;    // level in percent = num / den
    uint64_t den = 1;
};

// Parse "99_5" as 99.5 percent, exactly.
bool parse_level(std::string_view s, Level& out) {
    size_t us = s.find('_');
    std::string_view whole = s.substr(0, us);
    std::string_view frac = us == std::string_view::npos ? std::string_view() : s.substr(us + 1);
    if (whole.empty() || whole.size() > 3 || (us != std::string_view::npos && (frac.empty() || frac.size() > 9))) return false;
    for (char c : whole) if (c < '0' || c > '9') return false;
    for (char c : frac) if (c < '0' || c > '9') return false;
    uint64_t w = 0, f = 0, den = 1;
    for (char c : whole) w = w * 10 + uint64_t(c - '0');
    for (char c : frac) { f = f * 10 + uint64_t(c - '0'); den *= 10; }
    out.num = w * den + f;
    out.den = den;
    return true;
}

// ceil(num / den) for a product that may exceed 64 bits.
uint64_t ceil_div(unsigned __int128 num, unsigned __int128 den) { return uint64_t((num + den - 1) / den); }

class PvStatisticsEngine : public ICalcEngine {
public:
    void initialize(const std::map<std::string, std::string>& config, const AMCredentials*) override {
        initialized_ = false;
        column_ = "pv_net_cf";
        for (const auto& [k, v] : config) {
            if (k == "column") column_ = v;
            else throw ConfigurationError("unknown config key '" + k + "' (the statistics engine takes only 'column')");
        }
        if (column_.empty()) throw ConfigurationError("config key 'column' must name an input column");
        initialized_ = true;
    }

    EngineInfo get_info() const override { return EngineInfo("C++ PV Statistics", "1.0.0", "statistics", false); }

    ExecutionResult runChunk(const uint8_t* input_buffer, size_t input_size, uint8_t* output_buffer,
                             size_t output_size) override {
        if (!initialized_) throw ExecutionError("engine not initialized");
        if (!input_buffer) throw ConfigurationError("the statistics engine needs input 'per_scenario'");
        BufferView in(input_buffer, input_size);
        MutableBufferView out(output_buffer, output_size);
        const std::string name = "per_scenario." + column_;
        if (!in.has(name)) throw ConfigurationError("input 'per_scenario' has no column '" + column_ + "'");
        const ColumnInfo& ci = in.info(name);
        if (ci.dtype != DType::Float64) throw ConfigurationError("input column '" + name + "' must be float64");
        if (ci.ndim == 2 && ci.rows != 1 && ci.width != 1) {
            throw ConfigurationError("input column '" + name + "' must be one value per scenario (1-D)");
        }
        auto x = in.column<double>(name);
        const size_t S = x.size();
        if (S == 0) throw ExecutionError("input column '" + name + "' holds no scenarios");
        for (size_t i = 0; i < S; ++i) {
            if (!std::isfinite(x[i])) {
                throw ExecutionError("input 'per_scenario' row " + std::to_string(i) + ", column '" + column_ + "': value is not finite");
            }
        }

        // Check every declared statistic before computing or writing any.
        struct Want { double* dst; std::string kind; Level level; };
        std::vector<Want> wants;
        for (const ColumnInfo& c : out.columns()) {
            size_t dot = c.name.find('.');
            std::string binding = c.name.substr(0, dot);
            std::string stat = dot == std::string::npos ? "" : c.name.substr(dot + 1);
            if (binding != "statistics") {
                throw ConfigurationError("unknown output '" + binding + "': the statistics engine writes 'statistics'");
            }
            if (c.dtype != DType::Float64) throw ConfigurationError("output column '" + c.name + "' must be float64");
            if (c.ndim != 1 || c.rows != 1) throw ConfigurationError("output column '" + c.name + "' must have shape [1]");
            Want w{out.column<double>(c.name).data(), stat, {}};
            if (stat == "mean" || stat == "std" || stat == "min" || stat == "max" || stat == "count") {
                wants.push_back(w);
                continue;
            }
            std::string_view sv(stat);
            bool ok = false;
            for (const char* prefix : {"cte", "var", "p"}) {
                std::string_view pre(prefix);
                if (sv.substr(0, pre.size()) == pre && parse_level(sv.substr(pre.size()), w.level)) {
                    w.kind = prefix;
                    ok = w.kind == "p" ? w.level.num <= 100 * w.level.den
                                       : w.level.num > 0 && w.level.num < 100 * w.level.den;
                    break;
                }
            }
            if (!ok) {
                throw ConfigurationError("unknown statistic '" + stat + "' in output column '" + c.name +
                                         "' (mean, std, min, max, count, p<L> with 0 <= L <= 100, var<L> and cte<L> with "
                                         "0 < L < 100; write 99.5 as 99_5)");
            }
            wants.push_back(w);
        }

        std::vector<double> sorted(x.begin(), x.end());
        std::sort(sorted.begin(), sorted.end());
        double sum = 0.0;
        for (double v : x) sum += v;
        const double mean = sum / double(S);
        for (Want& w : wants) {
            double v = 0.0;
            if (w.kind == "mean") v = mean;
            else if (w.kind == "std") {
                if (S < 2) v = std::numeric_limits<double>::quiet_NaN();
                else {
                    double ss = 0.0;
                    for (double xi : x) ss += (xi - mean) * (xi - mean);
                    v = std::sqrt(ss / double(S - 1));
                }
            } else if (w.kind == "min") v = sorted.front();
            else if (w.kind == "max") v = sorted.back();
            else if (w.kind == "count") v = double(S);
            else if (w.kind == "p") {
                const double h = double(S - 1) * (double(w.level.num) / double(w.level.den) / 100.0);
                const size_t lo = std::min(size_t(std::floor(h)), S - 1);
                const double frac = h - double(lo);
                v = lo + 1 < S ? sorted[lo] + frac * (sorted[lo + 1] - sorted[lo]) : sorted[lo];
            } else {
                const unsigned __int128 den = (unsigned __int128)(100) * w.level.den;
                // Losses are -x, so the worst losses are the smallest x: sorted[0] is the worst.
                if (w.kind == "var") {
                    // The j-th smallest loss, j = ceil(a S), is the (S - j + 1)-th smallest x.
                    uint64_t j = ceil_div((unsigned __int128)(w.level.num) * S, den);
                    v = -sorted[S - j];
                } else {
                    uint64_t k = ceil_div((unsigned __int128)(100 * w.level.den - w.level.num) * S, den);
                    double tail = 0.0;
                    for (uint64_t i = 0; i < k; ++i) tail += sorted[i];
                    v = -tail / double(k);
                }
            }
            *w.dst = v;
        }

        ExecutionResult r;
        r.success = true;
        r.rows_processed = S;
        r.bytes_written = wants.size() * sizeof(double);
        return r;
    }

    void dispose() noexcept override { initialized_ = false; }
    bool is_initialized() const override { return initialized_; }

private:
    bool initialized_ = false;
    std::string column_;
};

}  // namespace

void register_pv_statistics(EngineRegistry& registry) {
    registry.add("pv_statistics", [] { return std::make_unique<PvStatisticsEngine>(); });
}

}  // namespace livecalc
