// Projection engine, part 1 of 4: configuration and assumption tables.
//
// initialize() may be called hundreds of times by the solver with only the multipliers changed,
// so parsing is split from derivation: CSV tables are parsed once and cached by absolute path
// (re-read only when the file's size or modification time changes), while the per-step rate
// tables, which depend on the multipliers, are rebuilt from the cached annual rates on every
// initialize — a few thousand pow() calls, microseconds.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <set>

#include "projection/api.hpp"
#include "projection/csv.hpp"
#include "projection/json.hpp"

namespace livecalc::projection {

namespace {

// ---- config values ----------------------------------------------------------------------------

class ConfigReader {
public:
    explicit ConfigReader(std::map<std::string, std::string> flat) : flat_(std::move(flat)) {}

    const std::string* find(const std::string& key) {
        used_.insert(key);
        auto it = flat_.find(key);
        return it == flat_.end() ? nullptr : &it->second;
    }

    double number(const std::string& key, double fallback) {
        const std::string* v = find(key);
        if (!v) return fallback;
        double d = 0;
        auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), d);
        if (ec != std::errc() || p != v->data() + v->size() || v->empty() || !std::isfinite(d)) {
            throw ConfigurationError("config key '" + key + "' must be a finite number, got '" + *v + "'");
        }
        return d;
    }

    double number_at_least(const std::string& key, double fallback, double lo, const char* what) {
        double d = number(key, fallback);
        if (d < lo) throw ConfigurationError("config key '" + key + "' must be " + what + ", got " + fmt(d));
        return d;
    }

    double fraction(const std::string& key, double fallback) {
        double d = number(key, fallback);
        if (d < 0.0 || d > 1.0) {
            throw ConfigurationError("config key '" + key + "' is a fraction (0.05 = 5%) and must lie in [0, 1], got " + fmt(d));
        }
        return d;
    }

    std::optional<int> integer(const std::string& key) {
        const std::string* v = find(key);
        if (!v) return std::nullopt;
        double d = number(key, 0.0);
        if (d != std::floor(d) || std::fabs(d) > 1e9) {
            throw ConfigurationError("config key '" + key + "' must be an integer, got '" + *v + "'");
        }
        return int(d);
    }

    std::string word(const std::string& key, const std::string& fallback,
                     std::initializer_list<const char*> allowed) {
        const std::string* v = find(key);
        std::string w = v ? *v : fallback;
        std::string list;
        for (const char* a : allowed) {
            if (w == a) return w;
            list += (list.empty() ? "" : ", ") + std::string(a);
        }
        throw ConfigurationError("config key '" + key + "' must be one of " + list + ", got '" + w + "'");
    }

    std::optional<bool> boolean(const std::string& key) {
        const std::string* v = find(key);
        if (!v) return std::nullopt;
        if (*v == "true") return true;
        if (*v == "false") return false;
        throw ConfigurationError("config key '" + key + "' must be true or false, got '" + *v + "'");
    }

    bool has_prefix(const std::string& prefix) const {
        auto it = flat_.lower_bound(prefix);
        return it != flat_.end() && it->first.compare(0, prefix.size(), prefix) == 0;
    }

    // Every key the engine did not ask for is a typo or a setting it does not have: say so
    // rather than silently running a different model.
    void reject_unknown() const {
        for (const auto& kv : flat_) {
            if (!used_.count(kv.first)) {
                throw ConfigurationError("unknown config key '" + kv.first +
                                         "' (see worker-cpp/README.md for the projection engine's keys)");
            }
        }
    }

    static std::string fmt(double d) {
        char buf[32];
        auto r = std::to_chars(buf, buf + sizeof buf, d);
        return std::string(buf, r.ptr);
    }

private:
    std::map<std::string, std::string> flat_;
    std::set<std::string> used_;
};

Timing timing(ConfigReader& c, const std::string& key, const char* fallback) {
    std::string w = c.word(key, fallback, {"start", "mid", "end"});
    return w == "start" ? Timing::Start : w == "mid" ? Timing::Mid : Timing::End;
}

const char* timing_word(Timing t) { return t == Timing::Start ? "start" : t == Timing::Mid ? "mid" : "end"; }

// ---- table cache ------------------------------------------------------------------------------

struct CacheEntry {
    std::filesystem::file_time_type mtime;
    uintmax_t size = 0;
    std::shared_ptr<const void> table;
};

std::mutex& cache_mutex() { static std::mutex m; return m; }
std::map<std::string, CacheEntry>& cache() { static std::map<std::string, CacheEntry> c; return c; }

// Parse `path` with `parse` unless the cache holds it unchanged. The key carries the kind so
// one file used as two kinds of table is parsed (and checked) as each.
template <typename T, typename Parse>
std::shared_ptr<const T> cached(const std::string& kind, const std::string& path, const std::string& role,
                                Parse parse) {
    namespace fs = std::filesystem;
    if (path.size() > 8 && path.compare(path.size() - 8, 8, ".parquet") == 0) {
        throw InitializationError(role + " table '" + path +
                                  "': the C++ engine reads CSV assumption tables only; convert the Parquet file to CSV");
    }
    std::error_code ec;
    fs::path abs = fs::absolute(path, ec);
    if (ec) throw InitializationError(role + " table '" + path + "': " + ec.message());
    auto mtime = fs::last_write_time(abs, ec);
    if (ec) {
        std::string why = ec.message();
        std::string cwd = fs::current_path(ec).string();
        throw InitializationError(role + " table '" + path + "' cannot be opened (" + why +
                                  "; relative paths are resolved against " + cwd + ")");
    }
    auto size = fs::file_size(abs, ec);
    std::string key = kind + "\x1f" + abs.string();
    {
        std::lock_guard<std::mutex> lock(cache_mutex());
        auto it = cache().find(key);
        if (it != cache().end() && it->second.mtime == mtime && it->second.size == size) {
            return std::static_pointer_cast<const T>(it->second.table);
        }
    }
    std::shared_ptr<const T> table = std::make_shared<const T>(parse(CsvTable::read(path, role)));
    std::lock_guard<std::mutex> lock(cache_mutex());
    cache()[key] = CacheEntry{mtime, size, table};
    return table;
}

int parse_sex(const CsvTable& t, size_t row, int col) {
    const std::string& s = t.cell(row, col);
    if (s == "M" || s == "m" || s == "0") return 0;
    if (s == "F" || s == "f" || s == "1") return 1;
    throw InitializationError(t.where(row, col) + ": sex must be M or F (or 0 / 1), got '" + s + "'");
}

MortalityTable parse_mortality(const CsvTable& t) {
    MortalityTable m;
    int age_col = t.require("age");
    int sex_col = t.column("sex");
    int qx_col = t.column("qx");
    std::vector<int> select;  // column index of select column k
    for (int k = 0;; ++k) {
        int c = t.column(std::to_string(k));
        if (c < 0) break;
        select.push_back(c);
    }
    if (qx_col >= 0 && !select.empty()) {
        throw InitializationError("mortality table '" + t.path() + "' has both 'qx' and select columns '0'..; use one");
    }
    if (qx_col < 0 && select.empty()) {
        throw InitializationError("mortality table '" + t.path() + "' needs a column 'qx' or select columns '0', '1', ..., 'K'");
    }
    if (qx_col >= 0) select.push_back(qx_col);
    for (size_t i = 0; i < t.header().size(); ++i) {
        int c = int(i);
        bool known = c == age_col || c == sex_col || std::find(select.begin(), select.end(), c) != select.end();
        if (!known) {
            throw InitializationError("mortality table '" + t.path() + "': unexpected column '" + t.header()[i] +
                                      "' (expected age, optional sex, then qx or consecutive select columns 0..K)");
        }
    }
    m.cols = int(select.size());
    m.by_sex = sex_col >= 0;
    // Rows may come in any order; ages of each sex must form one gap-free range.
    std::map<int, size_t> rows_of[2];
    for (size_t r = 0; r < t.rows(); ++r) {
        int64_t age = t.integer(r, age_col);
        if (age < 0 || age > 200) throw InitializationError(t.where(r, age_col) + ": age " + std::to_string(age) + " is outside 0..200");
        int sex = m.by_sex ? parse_sex(t, r, sex_col) : 0;
        if (!rows_of[sex].emplace(int(age), r).second) {
            throw InitializationError(t.where(r, age_col) + ": age " + std::to_string(age) + " appears twice" +
                                      (m.by_sex ? " for this sex" : ""));
        }
    }
    for (int sex = 0; sex < 2; ++sex) {
        auto& rows = rows_of[sex];
        if (rows.empty()) continue;
        MortalityTable::Part& p = m.part[sex];
        p.present = true;
        p.min_age = rows.begin()->first;
        p.max_age = rows.rbegin()->first;
        if (size_t(p.max_age - p.min_age + 1) != rows.size()) {
            int expect = p.min_age;
            for (auto& [age, r] : rows) {
                if (age != expect) {
                    throw InitializationError(t.where(r, age_col) + ": ages jump from " + std::to_string(expect - 1) +
                                              " to " + std::to_string(age) + "; every age in the range needs a row");
                }
                ++expect;
            }
        }
        p.q.resize(rows.size() * select.size());
        for (auto& [age, r] : rows) {
            for (size_t k = 0; k < select.size(); ++k) {
                double q = t.number(r, select[k]);
                if (q < 0.0 || q > 1.0) {
                    throw InitializationError(t.where(r, select[k]) + ": rate " + ConfigReader::fmt(q) + " is outside [0, 1]");
                }
                p.q[size_t(age - p.min_age) * select.size() + k] = q;
            }
        }
    }
    if (m.by_sex && (!m.part[0].present || !m.part[1].present)) {
        throw InitializationError("mortality table '" + t.path() + "' has a sex column but no rows for " +
                                  (m.part[0].present ? "F" : "M"));
    }
    if (!m.by_sex) m.part[1] = m.part[0];
    return m;
}

LapseTable parse_lapse(const CsvTable& t) {
    int dur_col = t.require("duration");
    int rate_col = t.require("rate");
    for (size_t i = 0; i < t.header().size(); ++i) {
        if (int(i) != dur_col && int(i) != rate_col) {
            throw InitializationError("lapse table '" + t.path() + "': unexpected column '" + t.header()[i] +
                                      "' (expected duration, rate)");
        }
    }
    LapseTable l;
    for (size_t r = 0; r < t.rows(); ++r) {
        int64_t d = t.integer(r, dur_col);
        if (d != int64_t(r)) {
            throw InitializationError(t.where(r, dur_col) + ": expected policy year " + std::to_string(r) +
                                      ", got " + std::to_string(d) + " (rows run 0, 1, 2, ... in order)");
        }
        double w = t.number(r, rate_col);
        if (w < 0.0 || w > 1.0) throw InitializationError(t.where(r, rate_col) + ": rate " + ConfigReader::fmt(w) + " is outside [0, 1]");
        l.rate.push_back(w);
    }
    return l;
}

CurveTable parse_curve(const CsvTable& t) {
    int year_col = t.require("year");
    int spot_col = t.require("spot");
    CurveTable c;
    int64_t prev = 0;
    for (size_t r = 0; r < t.rows(); ++r) {
        int64_t y = t.integer(r, year_col);
        if (r > 0 && y != prev + 1) {
            throw InitializationError(t.where(r, year_col) + ": years must be consecutive and increasing (" +
                                      std::to_string(prev) + " then " + std::to_string(y) + ")");
        }
        prev = y;
        double s = t.number(r, spot_col);
        if (!(s > -1.0)) throw InitializationError(t.where(r, spot_col) + ": spot rate " + ConfigReader::fmt(s) + " must exceed -1");
        c.spot.push_back(s);
    }
    return c;
}

// Annual rate -> rate per step. For annual steps the table value is used as is, so annual
// results carry no pow() rounding at all.
double per_step(double annual, int m) {
    if (m == 1) return annual;
    if (annual >= 1.0) return 1.0;
    return 1.0 - std::pow(1.0 - annual, 1.0 / double(m));
}

}  // namespace

Settings parse_settings(const std::map<std::string, std::string>& config) {
    ConfigReader c(json::flatten_config(
        config, {"expenses", "commission", "multipliers", "timing", "pricing", "dynamic_lapse"}));
    Settings s;

    const std::string* mort = c.find("mortality");
    if (!mort || mort->empty()) throw ConfigurationError("missing config key 'mortality' (path of the mortality table CSV)");
    s.mortality_path = *mort;
    if (const std::string* l = c.find("lapse")) s.lapse_path = *l;

    std::string ts = c.word("timestep", "monthly", {"monthly", "annual"});
    s.steps_per_year = ts == "monthly" ? 12 : 1;
    s.months_per_step = 12 / s.steps_per_year;
    if (auto e = c.integer("scenario_steps_per_year")) {
        if (*e <= 0 || *e % s.steps_per_year != 0 || 12 % *e != 0) {
            throw ConfigurationError("config key 'scenario_steps_per_year' must divide 12 and be a multiple of the "
                                     "projection's steps per year (" + std::to_string(s.steps_per_year) + "), got " +
                                     std::to_string(*e));
        }
        s.scenario_steps_per_year = *e;
    }
    if (auto w = c.integer("whole_life_max_age")) {
        if (*w < 0) throw ConfigurationError("config key 'whole_life_max_age' must be >= 0");
        s.whole_life_max_age = *w;
    }

    s.acquisition = c.number_at_least("expenses.acquisition", 0.0, 0.0, ">= 0");
    s.maintenance = c.number_at_least("expenses.maintenance", 0.0, 0.0, ">= 0");
    s.premium_rate = c.fraction("expenses.premium_rate", 0.0);
    s.per_claim = c.number_at_least("expenses.per_claim", 0.0, 0.0, ">= 0");
    s.inflation = c.number("expenses.inflation", 0.0);
    if (!(s.inflation > -1.0)) throw ConfigurationError("config key 'expenses.inflation' must exceed -1");

    s.commission_first = c.fraction("commission.first_year_rate", 0.0);
    s.commission_renewal = c.fraction("commission.renewal_rate", 0.0);

    s.mult_mortality = c.number_at_least("multipliers.mortality", 1.0, 0.0, ">= 0");
    s.mult_lapse = c.number_at_least("multipliers.lapse", 1.0, 0.0, ">= 0");
    s.mult_expense = c.number_at_least("multipliers.expense", 1.0, 0.0, ">= 0");
    s.mult_premium = c.number_at_least("multipliers.premium", 1.0, 0.0, ">= 0");

    s.t_prem = timing(c, "timing.premiums", "start");
    s.t_claims = timing(c, "timing.claims", "end");
    s.t_exp = timing(c, "timing.expenses", "start");
    s.t_comm = timing(c, "timing.commissions", timing_word(s.t_prem));

    s.basis = c.word("premium_basis", "given", {"given", "equivalence"}) == "given" ? PremiumBasis::Given
                                                                                  : PremiumBasis::Equivalence;
    s.loading = c.number("pricing.loading", 0.0);
    if (!(s.loading > -1.0)) throw ConfigurationError("config key 'pricing.loading' must exceed -1");
    if (auto p = c.integer("pricing.scenario")) {
        if (*p < 0) throw ConfigurationError("config key 'pricing.scenario' must be >= 0");
        s.pricing_scenario = *p;
    }
    if (const std::string* pc = c.find("pricing.curve")) s.pricing_curve = *pc;

    std::optional<bool> dyn_flag = c.boolean("dynamic_lapse");
    std::optional<bool> dyn_enabled = c.boolean("dynamic_lapse.enabled");
    bool dyn_keys = c.has_prefix("dynamic_lapse.");
    s.dyn.on = dyn_flag.value_or(dyn_enabled.value_or(dyn_keys));
    if (dyn_flag && dyn_keys) throw ConfigurationError("config key 'dynamic_lapse' is given both as a flag and as an object");
    if (s.dyn.on) {
        if (!c.find("dynamic_lapse.k") || !c.find("dynamic_lapse.r_ref")) {
            throw ConfigurationError("dynamic lapse needs config keys 'dynamic_lapse.k' and 'dynamic_lapse.r_ref'");
        }
        s.dyn.k = c.number("dynamic_lapse.k", 0.0);
        s.dyn.r_ref = c.number("dynamic_lapse.r_ref", 0.0);
        s.dyn.lo = c.number_at_least("dynamic_lapse.lo", 0.0, 0.0, ">= 0");
        s.dyn.hi = c.number("dynamic_lapse.hi", std::numeric_limits<double>::max());
        if (s.dyn.hi < s.dyn.lo) throw ConfigurationError("config key 'dynamic_lapse.hi' must be >= 'dynamic_lapse.lo'");
    } else {
        for (const char* k : {"dynamic_lapse.k", "dynamic_lapse.r_ref", "dynamic_lapse.lo", "dynamic_lapse.hi"}) c.find(k);
    }

    std::string simd = c.word("simd", "auto", {"auto", "avx512", "avx2", "sse2"});
    s.simd = simd == "auto" ? Simd::Auto : simd == "avx512" ? Simd::Avx512 : simd == "avx2" ? Simd::Avx2 : Simd::Sse2;
    if (!simd_supported(s.simd)) {
        throw ConfigurationError("config key 'simd' asks for " + simd + ", which this CPU does not support");
    }

    c.reject_unknown();
    return s;
}

std::shared_ptr<const MortalityTable> load_mortality(const std::string& path) {
    return cached<MortalityTable>("mortality", path, "mortality", parse_mortality);
}

std::shared_ptr<const LapseTable> load_lapse(const std::string& path) {
    return cached<LapseTable>("lapse", path, "lapse", parse_lapse);
}

std::shared_ptr<const CurveTable> load_curve(const std::string& path, const std::string& role) {
    return cached<CurveTable>("curve", path, role, parse_curve);
}

void clear_table_cache() {
    std::lock_guard<std::mutex> lock(cache_mutex());
    cache().clear();
}

StepRates make_step_rates(const Settings& s, const MortalityTable& mort, const LapseTable* lapse) {
    StepRates r;
    r.cols = mort.cols;
    const int m = s.steps_per_year;
    for (int sex = 0; sex < 2; ++sex) {
        const auto& src = mort.part[sex];
        auto& dst = r.part[sex];
        dst.present = src.present;
        dst.min_age = src.min_age;
        dst.max_age = src.max_age;
        dst.q.resize(src.q.size());
        for (size_t i = 0; i < src.q.size(); ++i) {
            dst.q[i] = per_step(std::min(1.0, src.q[i] * s.mult_mortality), m);
        }
    }
    if (lapse) {
        for (double w : lapse->rate) r.w.push_back(per_step(std::min(1.0, w * s.mult_lapse), m));
    }
    if (s.whole_life_max_age) {
        for (int sex = 0; sex < 2; ++sex) {
            if (*s.whole_life_max_age > r.part[sex].max_age) {
                throw ConfigurationError("config key 'whole_life_max_age' (" + std::to_string(*s.whole_life_max_age) +
                                         ") is beyond the mortality table's last age (" +
                                         std::to_string(r.part[sex].max_age) + ")");
            }
        }
    }
    return r;
}

double round_cents_half_even(double x) {
    double y = x * 100.0;
    double f = std::floor(y);
    double diff = y - f;  // exact: y and f are within one unit of each other
    double r = f;
    if (diff > 0.5 || (diff == 0.5 && std::fmod(f, 2.0) != 0.0)) r = f + 1.0;
    return r / 100.0;
}

}  // namespace livecalc::projection
