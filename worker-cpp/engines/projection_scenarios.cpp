// Projection engine, part 2 of 4: scenarios.
//
// Whatever form the scenarios arrive in — ESG discount factors, one spot curve, or annual rate
// paths — they are turned once into the same tables: D(t) at every step boundary, the geometric
// mid-step factor when some cash flow is paid mid-step, and the dynamic-lapse factor. Every
// pow() and sqrt() of the model happens here, per scenario and step, never per policy. The
// tables are laid out in blocks of 8 scenarios (see ScenarioTables) and kept between chunks:
// the scenario input is the same whole segment for every chunk of a node, so the builder
// compares the input bytes with the ones it last built from and reuses the tables when they
// match.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "projection/api.hpp"

namespace livecalc::projection {

namespace {

// Natural-layout scenarios before blocking: D[s][0..T], r[s][0..T-1].
struct Natural {
    int S = 0, T = 0;
    bool has_rate = false;
    std::vector<double> D, r;
    std::string source, coverage;
};

std::string num(double d) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", d);
    return buf;
}


std::span<const double> f64_column(const BufferView& in, const std::string& name) {
    const ColumnInfo& c = in.info(name);
    if (c.dtype != DType::Float64) {
        throw ConfigurationError("input column '" + name + "' is " + dtype_name(c.dtype) + "; expected float64");
    }
    return in.column<double>(name);
}

Natural from_esg(const BufferView& in, const Settings& s) {
    const ColumnInfo& df = in.info("scenarios.discount_factor");
    if (df.ndim != 2) {
        throw ConfigurationError("input column 'scenarios.discount_factor' must be two-dimensional [scenarios, steps + 1]");
    }
    auto d = f64_column(in, "scenarios.discount_factor");
    const int e = s.scenario_steps_per_year ? s.scenario_steps_per_year : s.steps_per_year;
    if (e % s.steps_per_year != 0) {
        throw ConfigurationError("scenario_steps_per_year (" + std::to_string(e) + ") must be a multiple of the projection's " +
                                 std::to_string(s.steps_per_year));
    }
    const size_t stride = size_t(e / s.steps_per_year);
    const size_t S = df.rows, J = df.width;  // J = ESG steps + 1
    if (S == 0 || J == 0) throw ExecutionError("input 'scenarios' holds no scenarios");
    Natural n;
    n.S = int(S);
    n.T = int((J - 1) / stride);
    n.source = "scenarios";
    n.coverage = std::to_string(J - 1) + " ESG steps at " + std::to_string(e) + " per year";
    for (size_t sc = 0; sc < S; ++sc) {
        for (size_t j = 0; j < J; ++j) {
            double v = d[sc * J + j];
            if (!std::isfinite(v) || !(v > 0.0)) {
                throw ExecutionError("input 'scenarios' row " + std::to_string(sc) + ", column 'discount_factor' step " +
                                     std::to_string(j) + ": discount factor " + num(v) + " is not a positive finite number");
            }
        }
        if (std::fabs(d[sc * J] - 1.0) > 1e-12) {
            throw ExecutionError("input 'scenarios' row " + std::to_string(sc) +
                                 ", column 'discount_factor' step 0: D(0) must be 1, got " + num(d[sc * J]));
        }
    }
    n.D.resize(S * size_t(n.T + 1));
    for (size_t sc = 0; sc < S; ++sc) {
        for (int t = 0; t <= n.T; ++t) n.D[sc * size_t(n.T + 1) + size_t(t)] = d[sc * J + size_t(t) * stride];
    }
    if (in.has("scenarios.short_rate")) {
        const ColumnInfo& sr = in.info("scenarios.short_rate");
        if (sr.rows != S || sr.width != J || sr.ndim != 2) {
            throw ConfigurationError("input column 'scenarios.short_rate' must have the shape of 'scenarios.discount_factor' [" +
                                     std::to_string(S) + ", " + std::to_string(J) + "]");
        }
        if (s.dyn.on) {
            auto r = f64_column(in, "scenarios.short_rate");
            n.has_rate = true;
            n.r.resize(S * size_t(n.T));
            for (size_t sc = 0; sc < S; ++sc) {
                for (int t = 0; t < n.T; ++t) {
                    double v = r[sc * J + size_t(t) * stride];
                    if (!std::isfinite(v)) {
                        throw ExecutionError("input 'scenarios' row " + std::to_string(sc) + ", column 'short_rate' step " +
                                             std::to_string(size_t(t) * stride) + ": " + num(v) + " is not finite");
                    }
                    n.r[sc * size_t(n.T) + size_t(t)] = v;
                }
            }
        }
    }
    return n;
}

Natural from_curve_spots(const std::vector<double>& spot, const Settings& s) {
    const int m = s.steps_per_year;
    Natural n;
    n.S = 1;
    n.T = int(spot.size()) * m - 1;
    n.has_rate = true;
    n.D.resize(size_t(n.T + 1));
    n.r.resize(size_t(n.T));
    for (int t = 0; t <= n.T; ++t) {
        double sp = spot[size_t(t / m)];
        n.D[size_t(t)] = t == 0 ? 1.0 : std::pow(1.0 + sp, -double(t) / double(m));
        if (t < n.T) n.r[size_t(t)] = sp;
    }
    n.coverage = std::to_string(spot.size()) + " yearly curve rows";
    return n;
}

Natural from_curve(const BufferView& in, const Settings& s) {
    std::vector<int64_t> year = int_column(in, "curve.year");
    auto spot = f64_column(in, "curve.spot");
    if (year.size() != spot.size()) throw ConfigurationError("input 'curve': columns 'year' and 'spot' differ in length");
    if (spot.empty()) throw ExecutionError("input 'curve' has no rows");
    for (size_t i = 0; i < spot.size(); ++i) {
        if (i > 0 && year[i] != year[i - 1] + 1) {
            throw ExecutionError("input 'curve' row " + std::to_string(i) + ", column 'year': years must be consecutive and increasing (" +
                                 std::to_string(year[i - 1]) + " then " + std::to_string(year[i]) + ")");
        }
        if (!std::isfinite(spot[i]) || !(spot[i] > -1.0)) {
            throw ExecutionError("input 'curve' row " + std::to_string(i) + ", column 'spot': " + num(spot[i]) +
                                 " is not a finite rate above -1");
        }
    }
    Natural n = from_curve_spots(std::vector<double>(spot.begin(), spot.end()), s);
    n.source = "curve";
    return n;
}

Natural from_paths(const BufferView& in, const Settings& s) {
    std::vector<int64_t> id = int_column(in, "paths.scenario_id");
    std::vector<int64_t> year = int_column(in, "paths.year");
    auto rate = f64_column(in, "paths.rate");
    if (id.size() != year.size() || id.size() != rate.size()) {
        throw ConfigurationError("input 'paths': columns 'scenario_id', 'year' and 'rate' differ in length");
    }
    if (rate.empty()) throw ExecutionError("input 'paths' has no rows");
    for (size_t i = 0; i < rate.size(); ++i) {
        if (!std::isfinite(rate[i]) || !(rate[i] > -1.0)) {
            throw ExecutionError("input 'paths' row " + std::to_string(i) + ", column 'rate': " + num(rate[i]) +
                                 " is not a finite rate above -1");
        }
    }
    // Scenario s is the s-th smallest scenario_id; rows may come in any order.
    std::vector<size_t> order(id.size());
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return id[a] != id[b] ? id[a] < id[b] : year[a] < year[b];
    });
    std::vector<std::vector<double>> rates;
    int64_t first_year = year[order[0]];
    size_t years = 0;
    for (size_t k = 0; k < order.size();) {
        size_t start = k;
        int64_t sid = id[order[k]];
        std::vector<double> path;
        while (k < order.size() && id[order[k]] == sid) {
            size_t row = order[k];
            int64_t expect = first_year + int64_t(k - start);
            if (year[row] != expect) {
                throw ExecutionError("input 'paths' row " + std::to_string(row) + ", column 'year': scenario " + std::to_string(sid) +
                                     " has year " + std::to_string(year[row]) + " where " + std::to_string(expect) +
                                     " is expected (every scenario needs the same consecutive years)");
            }
            path.push_back(rate[row]);
            ++k;
        }
        if (rates.empty()) years = path.size();
        if (path.size() != years) {
            throw ExecutionError("input 'paths': scenario " + std::to_string(sid) + " has " + std::to_string(path.size()) +
                                 " years, the first scenario has " + std::to_string(years));
        }
        rates.push_back(std::move(path));
    }
    const int m = s.steps_per_year;
    Natural n;
    n.S = int(rates.size());
    n.T = int(years) * m;
    n.has_rate = true;
    n.source = "paths";
    n.coverage = std::to_string(years) + " years of rates";
    n.D.resize(size_t(n.S) * size_t(n.T + 1));
    n.r.resize(size_t(n.S) * size_t(n.T));
    for (int sc = 0; sc < n.S; ++sc) {
        double Dy = 1.0;  // running product of 1 / (1 + rate) over whole years
        double* D = &n.D[size_t(sc) * size_t(n.T + 1)];
        for (int t = 0; t <= n.T; ++t) {
            int k = t / m, j = t % m;
            if (j == 0 && t > 0) Dy = Dy / (1.0 + rates[size_t(sc)][size_t(k - 1)]);
            D[t] = j == 0 ? Dy : Dy * std::pow(1.0 + rates[size_t(sc)][size_t(k)], -double(j) / double(m));
            if (t < n.T) n.r[size_t(sc) * size_t(n.T) + size_t(t)] = rates[size_t(sc)][size_t(k)];
        }
    }
    return n;
}

bool any_mid(const Settings& s) {
    return s.t_prem == Timing::Mid || s.t_claims == Timing::Mid || s.t_exp == Timing::Mid || s.t_comm == Timing::Mid;
}

double lapse_factor(const DynamicLapse& d, double r) {
    double f = 1.0 + d.k * (r - d.r_ref);
    return std::min(std::max(f, d.lo), d.hi);
}

void block(const Natural& n, const Settings& s, ScenarioTables& out) {
    const int S = n.S, T = n.T, B = (S + kLanes - 1) / kLanes;
    out.S = S;
    out.blocks = B;
    out.T = T;
    out.dynamic = s.dyn.on;
    out.source = n.source;
    out.coverage = n.coverage;
    auto at = [&](int rows, int sc, int t) { return (size_t(sc / kLanes) * size_t(rows) + size_t(t)) * kLanes + size_t(sc % kLanes); };
    out.D.assign(size_t(B) * size_t(T + 1) * kLanes, 0.0);
    for (int sc = 0; sc < S; ++sc)
        for (int t = 0; t <= T; ++t) out.D[at(T + 1, sc, t)] = n.D[size_t(sc) * size_t(T + 1) + size_t(t)];
    out.meanD.assign(size_t(T + 1), 0.0);
    for (int t = 0; t <= T; ++t) {
        double sum = 0.0;
        for (int sc = 0; sc < S; ++sc) sum += n.D[size_t(sc) * size_t(T + 1) + size_t(t)];
        out.meanD[size_t(t)] = sum / double(S);
    }
    out.Dmid.clear();
    out.meanDmid.clear();
    if (any_mid(s)) {
        out.Dmid.assign(size_t(B) * size_t(T) * kLanes, 0.0);
        out.meanDmid.assign(size_t(T), 0.0);
        for (int t = 0; t < T; ++t) {
            double sum = 0.0;
            for (int sc = 0; sc < S; ++sc) {
                const double* D = &n.D[size_t(sc) * size_t(T + 1)];
                double mid = std::sqrt(D[t] * D[t + 1]);
                out.Dmid[at(T, sc, t)] = mid;
                sum += mid;
            }
            out.meanDmid[size_t(t)] = sum / double(S);
        }
    }
    out.F.clear();
    out.R.clear();
    if (s.dyn.on) {
        // One-step discount ratios for the kernel that carries if(t) D(t); padding lanes stay 0.
        out.R.assign(size_t(B) * size_t(T) * kLanes, 0.0);
        for (int sc = 0; sc < S; ++sc) {
            const double* D = &n.D[size_t(sc) * size_t(T + 1)];
            for (int t = 0; t < T; ++t) out.R[at(T, sc, t)] = D[t + 1] / D[t];
        }
        out.F.assign(size_t(B) * size_t(T) * kLanes, 1.0);
        out.f_max = 0.0;
        for (int sc = 0; sc < S; ++sc) {
            for (int t = 0; t < T; ++t) {
                const double f = lapse_factor(s.dyn, n.r[size_t(sc) * size_t(T) + size_t(t)]);
                out.F[at(T, sc, t)] = f;
                out.f_max = std::max(out.f_max, f);
            }
        }
    }
}

// Settings the tables depend on, as bytes of the cache key.
void settings_key(const Settings& s, std::vector<uint8_t>& key) {
    auto put = [&](const void* p, size_t n) {
        const uint8_t* b = static_cast<const uint8_t*>(p);
        key.insert(key.end(), b, b + n);
    };
    put(&s.steps_per_year, sizeof s.steps_per_year);
    put(&s.scenario_steps_per_year, sizeof s.scenario_steps_per_year);
    bool mid = any_mid(s);
    put(&mid, sizeof mid);
    put(&s.dyn.on, sizeof s.dyn.on);
    put(&s.dyn.k, sizeof s.dyn.k);
    put(&s.dyn.r_ref, sizeof s.dyn.r_ref);
    put(&s.dyn.lo, sizeof s.dyn.lo);
    put(&s.dyn.hi, sizeof s.dyn.hi);
}

}  // namespace

std::vector<int64_t> int_column(const BufferView& in, const std::string& name) {
    const ColumnInfo& c = in.info(name);
    std::vector<int64_t> out;
    if (c.dtype == DType::Int64) {
        auto v = in.column<int64_t>(name);
        out.assign(v.begin(), v.end());
    } else if (c.dtype == DType::Int32) {
        auto v = in.column<int32_t>(name);
        out.assign(v.begin(), v.end());
    } else {
        throw ConfigurationError("input column '" + name + "' is " + dtype_name(c.dtype) + "; expected int64 or int32");
    }
    return out;
}

PricingScenario curve_scenario(const CurveTable& c, const Settings& s, const std::string& source) {
    Natural n = from_curve_spots(c.spot, s);
    PricingScenario p;
    p.T = n.T;
    p.D = n.D;
    p.source = source;
    p.Dmid.resize(size_t(n.T));
    p.F.assign(size_t(n.T), 1.0);
    for (int t = 0; t < n.T; ++t) {
        p.Dmid[size_t(t)] = std::sqrt(n.D[size_t(t)] * n.D[size_t(t) + 1]);
        if (s.dyn.on) p.F[size_t(t)] = lapse_factor(s.dyn, n.r[size_t(t)]);
    }
    return p;
}

const ScenarioTables& ScenarioBuilder::tables(const BufferView& in, const Settings& s) {
    const bool esg = in.has("scenarios.discount_factor");
    const bool curve = in.has("curve.spot");
    const bool paths = in.has("paths.rate");
    int found = int(esg) + int(curve) + int(paths);
    if (found == 0) {
        throw ConfigurationError("no scenario input: bind 'scenarios' (ESG: discount_factor [S, T+1], short_rate), "
                                 "'curve' (year, spot) or 'paths' (scenario_id, year, rate)");
    }
    if (found > 1) {
        throw ConfigurationError("more than one scenario input is bound (scenarios, curve, paths): bind exactly one");
    }
    std::vector<std::string> cols;
    if (esg) {
        cols = {"scenarios.discount_factor"};
        if (in.has("scenarios.short_rate")) cols.push_back("scenarios.short_rate");
        else if (s.dyn.on) {
            throw ConfigurationError("dynamic lapse needs the short rate: input 'scenarios' has no column 'short_rate'");
        }
    } else if (curve) {
        if (!in.has("curve.year")) throw ConfigurationError("input 'curve' has no column 'year'");
        cols = {"curve.year", "curve.spot"};
    } else {
        for (const char* c : {"paths.scenario_id", "paths.year"}) {
            if (!in.has(c)) throw ConfigurationError(std::string("input 'paths' has no column '") + (c + 6) + "'");
        }
        cols = {"paths.scenario_id", "paths.year", "paths.rate"};
    }

    // Key = settings bytes + column names, dtypes, shapes and bytes. Compared in place so
    // that a hit costs one pass over the input and no copy.
    std::vector<uint8_t> head;
    settings_key(s, head);
    struct Piece { const uint8_t* p; size_t n; };
    std::vector<Piece> pieces;
    for (const auto& c : cols) {
        const ColumnInfo& ci = in.info(c);
        head.insert(head.end(), c.begin(), c.end());
        uint64_t meta[4] = {uint64_t(ci.dtype), ci.ndim, ci.rows, ci.width};
        head.insert(head.end(), reinterpret_cast<uint8_t*>(meta), reinterpret_cast<uint8_t*>(meta) + sizeof meta);
    }
    size_t total = head.size();
    for (const auto& c : cols) {
        const ColumnInfo& ci = in.info(c);
        const uint8_t* p = ci.dtype == DType::Float64
                               ? reinterpret_cast<const uint8_t*>(in.column<double>(c).data())
                               : ci.dtype == DType::Int64 ? reinterpret_cast<const uint8_t*>(in.column<int64_t>(c).data())
                                                          : reinterpret_cast<const uint8_t*>(in.column<int32_t>(c).data());
        pieces.push_back({p, size_t(ci.nbytes)});
        total += size_t(ci.nbytes);
    }
    bool hit = tables_ && key_.size() == total && std::memcmp(key_.data(), head.data(), head.size()) == 0;
    for (size_t i = 0, at = head.size(); hit && i < pieces.size(); at += pieces[i].n, ++i) {
        hit = std::memcmp(key_.data() + at, pieces[i].p, pieces[i].n) == 0;
    }
    if (hit) return *tables_;

    tables_.reset();
    pricing_.reset();
    key_.clear();
    Natural n = esg ? from_esg(in, s) : curve ? from_curve(in, s) : from_paths(in, s);
    auto t = std::make_unique<ScenarioTables>();
    block(n, s, *t);
    key_ = std::move(head);
    for (const auto& p : pieces) key_.insert(key_.end(), p.p, p.p + p.n);
    tables_ = std::move(t);
    return *tables_;
}

const PricingScenario& ScenarioBuilder::pricing(const Settings& s, const CurveTable* curve) {
    if (pricing_) return *pricing_;
    auto p = std::make_unique<PricingScenario>();
    if (curve) {
        *p = curve_scenario(*curve, s, "pricing curve '" + s.pricing_curve + "'");
    } else {
        const ScenarioTables& t = *tables_;
        const int sc = s.pricing_scenario;
        if (sc >= t.S) {
            throw ConfigurationError("config key 'pricing.scenario' is " + std::to_string(sc) + " but input '" + t.source +
                                     "' holds " + std::to_string(t.S) + " scenario(s)");
        }
        p->T = t.T;
        p->source = "scenario " + std::to_string(sc) + " of input '" + t.source + "'";
        const size_t blk = size_t(sc / kLanes), lane = size_t(sc % kLanes);
        p->D.resize(size_t(t.T + 1));
        for (int k = 0; k <= t.T; ++k) p->D[size_t(k)] = t.D[(blk * size_t(t.T + 1) + size_t(k)) * kLanes + lane];
        p->Dmid.resize(size_t(t.T));
        p->F.assign(size_t(t.T), 1.0);
        for (int k = 0; k < t.T; ++k) {
            p->Dmid[size_t(k)] = t.Dmid.empty() ? std::sqrt(p->D[size_t(k)] * p->D[size_t(k) + 1])
                                                : t.Dmid[(blk * size_t(t.T) + size_t(k)) * kLanes + lane];
            if (!t.F.empty()) p->F[size_t(k)] = t.F[(blk * size_t(t.T) + size_t(k)) * kLanes + lane];
        }
    }
    pricing_ = std::move(p);
    return *pricing_;
}

void ScenarioBuilder::reset() {
    key_.clear();
    tables_.reset();
    pricing_.reset();
}

}  // namespace livecalc::projection
