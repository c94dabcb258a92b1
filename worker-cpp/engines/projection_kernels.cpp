// Projection engine, part 3 of 4: the numerical work.
//
// Two algorithms, chosen by whether decrements depend on the scenario:
//
// * Static decrements (no dynamic lapse): the in-force of a policy is the same under every
//   scenario, so each policy is projected exactly once, its cash flows are added into the
//   chunk's cash flows by step, and only those chunk totals are discounted under each scenario
//   (S x T work per chunk instead of policies x S x T). The mean over scenarios of a policy's
//   PV is its cash flows discounted with the mean discount factor — the same number by
//   linearity — so per-policy results cost one dot product per cash-flow type.
//
// * Dynamic lapse: decrements differ by scenario, so every policy is projected under every
//   scenario. The loop nest is  policy block -> scenario block of 8 lanes -> policy -> step,
//   with the 8 scenarios in one vector: the scenario tables of one block (about 30 KB) stay in
//   L1 while the block's policies stream their per-step rates from L2. The in-force recursion
//   if(t+1) = if(t) - deaths - lapses is rewritten as if(t) * g with
//   g = max((1 - q) - (1 - q) w F, 0), one multiply on the loop-carried chain; the lapse clamp
//   min(w F, 1) is the max(.., 0). Cash flows are never formed: each PV component is an
//   accumulator of coefficient(t) * if(t) * D(t), with premiums and commissions sharing one
//   accumulator split at the end of the first policy year.
//
// Bit-identical results on every instruction set. The whole computation is compiled three
// times (AVX-512, AVX2, SSE2) from one source and picked at run time. All vector code uses
// GCC vector types of exactly 8 doubles, so lanes map to scenarios (or to steps modulo 8 in
// dot products) identically in every build; -ffp-contract=off forbids fused multiply-adds; and
// every reduction across lanes is written out in a fixed order. The builds therefore execute
// the same IEEE operations in the same order, and tests compare them bit for bit.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "projection/api.hpp"

// The 64-byte vector type changes the calling convention without AVX-512; every function that
// takes or returns one is always inlined, so the warning about that ABI is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace livecalc::projection {

namespace {

#define LC_INLINE inline __attribute__((always_inline))

// Eight lanes as kLanes / W native vectors of W doubles: one zmm (W = 8), two ymm (W = 4) or
// four xmm (W = 2). A generic 8-wide vector type would do, except that GCC lowers one wider
// than the target's registers through the stack; the pack keeps every build in registers while
// each lane still sees the same operations in the same order.
template <int W>
struct Pack {
    typedef double native __attribute__((vector_size(W * sizeof(double))));
    static constexpr int N = kLanes / W;
    native v[N];
    LC_INLINE double lane(int j) const { return v[j / W][j % W]; }
    LC_INLINE void set_lane(int j, double x) { v[j / W][j % W] = x; }
};

template <int W> LC_INLINE Pack<W> splat(double x) {
    Pack<W> p;
    for (int i = 0; i < Pack<W>::N; ++i) p.v[i] = typename Pack<W>::native{} + x;
    return p;
}
template <int W> LC_INLINE Pack<W> zero() { return splat<W>(0.0); }
template <int W> LC_INLINE Pack<W> load(const double* ptr) {
    Pack<W> p;
    __builtin_memcpy(&p.v[0], ptr, sizeof p.v);
    return p;
}
template <int W> LC_INLINE void store(double* ptr, const Pack<W>& p) { __builtin_memcpy(ptr, &p.v[0], sizeof p.v); }
template <int W> LC_INLINE Pack<W> operator+(const Pack<W>& a, const Pack<W>& b) {
    Pack<W> r;
    for (int i = 0; i < Pack<W>::N; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
}
template <int W> LC_INLINE Pack<W> operator-(const Pack<W>& a, const Pack<W>& b) {
    Pack<W> r;
    for (int i = 0; i < Pack<W>::N; ++i) r.v[i] = a.v[i] - b.v[i];
    return r;
}
template <int W> LC_INLINE Pack<W> operator*(const Pack<W>& a, const Pack<W>& b) {
    Pack<W> r;
    for (int i = 0; i < Pack<W>::N; ++i) r.v[i] = a.v[i] * b.v[i];
    return r;
}
template <int W> LC_INLINE Pack<W>& operator+=(Pack<W>& a, const Pack<W>& b) { return a = a + b; }
template <int W> LC_INLINE Pack<W> max0(const Pack<W>& x) {
    Pack<W> r;
    const typename Pack<W>::native z = {};
    for (int i = 0; i < Pack<W>::N; ++i) r.v[i] = x.v[i] > z ? x.v[i] : z;
    return r;
}
// Lanes added 0..7 in order.
template <int W> LC_INLINE double hsum(const Pack<W>& p) {
    double s = p.lane(0);
    for (int j = 1; j < kLanes; ++j) s += p.lane(j);
    return s;
}

// Sum of x[t] y[t]: lane j accumulates t = j, j+8, ... in order; lanes are added 0..7.
template <int W> LC_INLINE double dot(const double* x, const double* y, int n) {
    Pack<W> acc = zero<W>();
    int t = 0;
    for (; t + kLanes <= n; t += kLanes) acc += load<W>(x + t) * load<W>(y + t);
    double tail[kLanes] = {};
    for (int j = 0; t + j < n; ++j) tail[j] = x[t + j] * y[t + j];
    acc += load<W>(tail);
    return hsum(acc);
}

// Per-step q and w of one policy: constant within each policy year, looked up once per year.
LC_INLINE void fill_rates(const Policy& p, const StepRates& r, int h, double* q, double* w) {
    int t = 0;
    while (t < p.n) {
        const int mu = p.duration + h * t;
        const int d = mu / 12;
        const int end = std::min(p.n, t + (12 * (d + 1) - mu) / h);
        const double qv = r.q_at(p.sex, p.age + d, d);
        const double wv = r.w_at(d);
        for (; t < end; ++t) {
            q[t] = qv;
            w[t] = wv;
        }
    }
}

// a = 1 - q and b = (1 - q) w: with the lapse factor F the survival factor is max(a - b F, 0).
LC_INLINE void survival_coefficients(int n, const double* q, const double* w, double* a, double* b) {
    for (int t = 0; t < n; ++t) {
        a[t] = 1.0 - q[t];
        b[t] = a[t] * w[t];
    }
}

LC_INLINE double level_premium_step(const Settings& s, const Policy& p) {
    return p.premium * s.mult_premium / double(s.steps_per_year);
}

const double* timing_table(const double* D, const double* Dmid, Timing t) {
    return t == Timing::Start ? D : t == Timing::Mid ? Dmid : D + 1;
}

// Equivalence premium per step on the pricing scenario: the policy is projected with the
// pricing scenario's lapse factors (1 without dynamic lapse) from a = 1 - q, b = a w.
LC_INLINE double equivalence_premium(const Settings& s, const PricingScenario& pr, const Policy& p, const double* q,
                                     const double* a, const double* b) {
    const double* Dp = timing_table(pr.D.data(), pr.Dmid.data(), s.t_prem);
    const double* Dc = timing_table(pr.D.data(), pr.Dmid.data(), s.t_claims);
    double inf = p.count, pv_if = 0.0, pv_ben = 0.0;
    for (int t = 0; t < p.n; ++t) {
        pv_if += inf * Dp[t];
        pv_ben += (p.sum_assured * (inf * q[t])) * Dc[t];
        double g = a[t] - b[t] * pr.F[size_t(t)];
        inf = inf * (g > 0.0 ? g : 0.0);
    }
    if (p.product == Product::Endowment) pv_ben += (p.sum_assured * inf) * pr.D[size_t(p.n)];
    return s.mult_premium * round_cents_half_even((1.0 + s.loading) * pv_ben / pv_if);
}

// Undiscounted cash flows of one policy from its in-force if(0..n) (under one scenario, or
// the mean over scenarios). deaths = if q, lapses = if - deaths - if(t+1).
struct Flows {
    AlignedVec deaths, prem, claims, exp, comm;
    void reserve(int n) {
        for (auto* v : {&deaths, &prem, &claims, &exp, &comm}) v->assign(size_t(n) + kLanes, 0.0);
    }
};

LC_INLINE void policy_flows(const Settings& s, const std::vector<double>& infl, const Policy& p, const double* inf,
                            const double* q, Flows& f) {
    const double P = p.premium_step;
    const double pctP = s.premium_rate * P;
    const double maint = s.maintenance / double(s.steps_per_year);
    const double xm = s.mult_expense;
    for (int t = 0; t < p.n; ++t) {
        f.deaths[t] = inf[t] * q[t];
        f.prem[t] = P * inf[t];
        f.claims[t] = p.sum_assured * f.deaths[t];
        f.exp[t] = xm * ((maint * infl[size_t(t)] + pctP) * inf[t] + s.per_claim * f.deaths[t]);
        f.comm[t] = (t < p.n_first ? s.commission_first : s.commission_renewal) * f.prem[t];
    }
}

LC_INLINE double acquisition(const Settings& s, const Policy& p) {
    return p.duration == 0 ? s.mult_expense * (s.acquisition * p.count) : 0.0;
}

// The chunk's cash flows by step: sums over its policies in policy order.
struct ChunkFlows {
    std::array<AlignedVec, kCfCols> cf;
    double acq = 0.0;
    void reset(int n) {
        for (auto& v : cf) v.assign(size_t(n) + kLanes, 0.0);
        acq = 0.0;
    }
    LC_INLINE void add(const Policy& p, const double* inf, const Flows& f, double acq_p, bool detail) {
        for (int t = 0; t < p.n; ++t) {
            cf[kCfPrem][t] += f.prem[t];
            cf[kCfClaims][t] += f.claims[t];
            cf[kCfExp][t] += f.exp[t];
            cf[kCfComm][t] += f.comm[t];
        }
        if (p.product == Product::Endowment) cf[kCfMat][p.n - 1] += p.sum_assured * inf[p.n];
        acq += acq_p;
        if (!detail) return;
        for (int t = 0; t < p.n; ++t) {
            cf[kCfInForce][t] += inf[t];
            cf[kCfDeaths][t] += f.deaths[t];
            cf[kCfLapses][t] += (inf[t] - f.deaths[t]) - inf[t + 1];
        }
    }
    void write(const OutputTargets& out, int n_max) {
        cf[kCfExp][0] += acq;
        for (int t = 0; t < n_max; ++t) {
            cf[kCfNet][t] = (((cf[kCfPrem][t] - cf[kCfClaims][t]) - cf[kCfExp][t]) - cf[kCfComm][t]) - cf[kCfMat][t];
        }
        cf[kCfExp][0] -= acq;  // keep the discounting view (acquisition apart) intact
        for (int c = 0; c < kCfCols; ++c) {
            double* dst = out.cashflows[size_t(c)];
            if (!dst) continue;
            for (int t = 0; t < out.cf_steps; ++t) dst[t] = t < n_max ? cf[size_t(c)][t] : 0.0;
            if (c == kCfExp && n_max > 0) dst[0] += acq;
        }
    }
};

// Blocked-table pointers of one scenario block for each timing.
struct BlockTables {
    const double* D;     // boundary t at D + 8 t
    const double* Dmid;  // step t at Dmid + 8 t
    const double* F;
    const double* at(Timing t) const { return t == Timing::Start ? D : t == Timing::Mid ? Dmid : D + kLanes; }
};

LC_INLINE BlockTables block_tables(const ScenarioTables& sc, int blk) {
    BlockTables b;
    b.D = sc.D.data() + size_t(blk) * size_t(sc.T + 1) * kLanes;
    b.Dmid = sc.Dmid.empty() ? nullptr : sc.Dmid.data() + size_t(blk) * size_t(sc.T) * kLanes;
    b.F = sc.F.empty() ? nullptr : sc.F.data() + size_t(blk) * size_t(sc.T) * kLanes;
    return b;
}

LC_INLINE v8d net_of(const v8d* c) {
    return (((c[kPrem] - c[kClaims]) - c[kExp]) - c[kComm]) - c[kMat];
}

LC_INLINE double net_of(const double* c) {
    return (((c[kPrem] - c[kClaims]) - c[kExp]) - c[kComm]) - c[kMat];
}

// ---- static decrements ------------------------------------------------------------------------

LC_INLINE void project_static(ChunkJob& job) {
    const Settings& s = *job.settings;
    const ScenarioTables& sc = *job.scen;
    const OutputTargets& out = job.out;
    std::vector<Policy>& pols = *job.policies;
    const int N = job.n_max, S = sc.S, h = s.months_per_step;

    AlignedVec q(size_t(N) + kLanes), w(size_t(N) + kLanes), a(size_t(N) + kLanes), b(size_t(N) + kLanes);
    AlignedVec inf(size_t(N) + 1 + kLanes);
    Flows f;
    f.reserve(N);
    ChunkFlows chunk;
    const bool need_chunk = out.any_per_scenario() || out.any_cashflows();
    if (need_chunk) chunk.reset(N);

    const double* mD[3] = {sc.meanD.data(), sc.meanDmid.data(), sc.meanD.data() + 1};
    auto mean_at = [&](Timing t) { return mD[int(t)]; };
    const Timing tim[kComps] = {Timing::Start, s.t_prem, s.t_claims, s.t_exp, s.t_comm, Timing::End};

    // policy x scenario: net coefficient of each timing, per requested component.
    AlignedVec coef[3];
    if (out.any_policy_scenario()) for (auto& c : coef) c.assign(size_t(N) + kLanes, 0.0);

    for (size_t i = 0; i < pols.size(); ++i) {
        Policy& p = pols[i];
        fill_rates(p, *job.rates, h, q.data(), w.data());
        survival_coefficients(p.n, q.data(), w.data(), a.data(), b.data());
        inf[0] = p.count;
        for (int t = 0; t < p.n; ++t) {
            double g = a[t] - b[t];
            inf[t + 1] = inf[t] * (g > 0.0 ? g : 0.0);
        }
        p.premium_step = s.basis == PremiumBasis::Given
                             ? level_premium_step(s, p)
                             : equivalence_premium(s, *job.pricing, p, q.data(), a.data(), b.data());
        policy_flows(s, *job.inflation, p, inf.data(), q.data(), f);
        const double acq = acquisition(s, p);
        const double mat = p.product == Product::Endowment ? p.sum_assured * inf[p.n] : 0.0;

        if (out.any_per_policy()) {
            double pv[kComps];
            pv[kPrem] = dot(f.prem.data(), mean_at(s.t_prem), p.n);
            pv[kClaims] = dot(f.claims.data(), mean_at(s.t_claims), p.n);
            pv[kExp] = acq + dot(f.exp.data(), mean_at(s.t_exp), p.n);
            pv[kComm] = dot(f.comm.data(), mean_at(s.t_comm), p.n);
            pv[kMat] = mat * sc.meanD[size_t(p.n)];
            pv[kNet] = net_of(pv);
            for (int c = 0; c < kComps; ++c) if (out.per_policy[size_t(c)]) out.per_policy[size_t(c)][i] = pv[c];
        }
        if (need_chunk) chunk.add(p, inf.data(), f, acq, out.any_cashflows());

        if (out.any_policy_scenario()) {
            const AlignedVec* flow[kComps] = {nullptr, &f.prem, &f.claims, &f.exp, &f.comm, nullptr};
            for (int c = 0; c < kComps; ++c) {
                double* dst = out.policy_scenario[size_t(c)];
                if (!dst) continue;
                bool used[3] = {false, false, false};
                for (auto& v : coef) std::fill(v.begin(), v.begin() + p.n, 0.0);
                double constant = 0.0;
                // Component c as signed sums of cash-flow types (net: + premiums, - the rest).
                for (int k = kPrem; k <= kComm; ++k) {
                    if (c != kNet && c != k) continue;
                    const double sign = (c == kNet && k != kPrem) ? -1.0 : 1.0;
                    const int ti = int(tim[k]);
                    used[ti] = true;
                    for (int t = 0; t < p.n; ++t) coef[ti][t] += sign * (*flow[k])[t];
                }
                if (c == kExp) constant = acq;
                if (c == kNet) constant = -acq;
                const double mat_sign = c == kMat ? 1.0 : c == kNet ? -1.0 : 0.0;
                for (int blk = 0; blk < sc.blocks; ++blk) {
                    const BlockTables bt = block_tables(sc, blk);
                    v8d acc = splat(constant);
                    for (int ti = 0; ti < 3; ++ti) {
                        if (!used[ti]) continue;
                        const double* Dt = bt.at(Timing(ti));
                        const double* cf = coef[ti].data();
                        for (int t = 0; t < p.n; ++t) acc += splat(cf[t]) * vload(Dt + size_t(t) * kLanes);
                    }
                    if (mat_sign != 0.0) acc += splat(mat_sign * mat) * vload(bt.D + size_t(p.n) * kLanes);
                    const int lanes = std::min(kLanes, S - blk * kLanes);
                    for (int j = 0; j < lanes; ++j) dst[i * size_t(S) + size_t(blk * kLanes + j)] = acc[j];
                }
            }
        }
    }

    if (out.any_per_scenario()) {
        for (int blk = 0; blk < sc.blocks; ++blk) {
            const BlockTables bt = block_tables(sc, blk);
            v8d pv[kComps] = {};
            const int cfcol[kComps] = {-1, kCfPrem, kCfClaims, kCfExp, kCfComm, kCfMat};
            for (int c = kPrem; c <= kMat; ++c) {
                const double* Dt = bt.at(tim[c]);
                const double* cf = chunk.cf[size_t(cfcol[c])].data();
                v8d acc = {};
                for (int t = 0; t < N; ++t) acc += splat(cf[t]) * vload(Dt + size_t(t) * kLanes);
                pv[c] = acc;
            }
            pv[kExp] = splat(chunk.acq) + pv[kExp];
            pv[kNet] = net_of(pv);
            const int lanes = std::min(kLanes, S - blk * kLanes);
            for (int c = 0; c < kComps; ++c) {
                double* dst = out.per_scenario[size_t(c)];
                if (!dst) continue;
                for (int j = 0; j < lanes; ++j) dst[blk * kLanes + j] = pv[c][j];
            }
        }
    }
    if (out.any_cashflows()) chunk.write(out, N);
}

// ---- dynamic lapse ----------------------------------------------------------------------------

struct LaneArgs {
    int n, n_first;
    const double *a, *b, *q, *e;  // per step
    BlockTables bt;
    const double *Dp, *Dk, *Dc, *De;
};

// One policy under the 8 scenarios of one block. Returns the PV sums; `cf8`, when given,
// collects the in-force of every lane by step for the cash-flow output.
template <bool KS, bool ES, bool CF>
LC_INLINE void lanes_step(const LaneArgs& k, int t, v8d& inf, v8d& ap, v8d& ak, v8d& ac, v8d& ae, double* cf8) {
    const size_t o = size_t(t) * kLanes;
    const v8d yp = inf * vload(k.Dp + o);
    ap += yp;
    if constexpr (!KS) ak += inf * vload(k.Dk + o);
    if constexpr (ES) {
        ae += splat(k.e[t]) * yp;
    } else {
        ae += splat(k.e[t]) * (inf * vload(k.De + o));
    }
    ac += splat(k.q[t]) * (inf * vload(k.Dc + o));
    if constexpr (CF) vstore(cf8 + o, vload(cf8 + o) + inf);
    inf = inf * max0(splat(k.a[t]) - splat(k.b[t]) * vload(k.bt.F + o));
}

template <bool KS, bool ES, bool CF>
LC_INLINE void lanes_policy(const Settings& s, const Policy& p, const LaneArgs& k, const v8d& inf0, v8d* pv, double* cf8) {
    v8d inf = inf0;
    v8d ap1 = {}, ap2 = {}, ak1 = {}, ak2 = {}, ac = {}, ae = {};
    for (int t = 0; t < k.n_first; ++t) lanes_step<KS, ES, CF>(k, t, inf, ap1, ak1, ac, ae, cf8);
    for (int t = k.n_first; t < k.n; ++t) lanes_step<KS, ES, CF>(k, t, inf, ap2, ak2, ac, ae, cf8);
    if constexpr (CF) vstore(cf8 + size_t(k.n) * kLanes, vload(cf8 + size_t(k.n) * kLanes) + inf);
    const v8d P = splat(p.premium_step);
    const v8d c1 = splat(s.commission_first), cr = splat(s.commission_renewal);
    pv[kPrem] = P * (ap1 + ap2);
    if constexpr (KS) {
        pv[kComm] = P * (c1 * ap1 + cr * ap2);
    } else {
        pv[kComm] = P * (c1 * ak1 + cr * ak2);
    }
    pv[kClaims] = splat(p.sum_assured) * ac;
    pv[kExp] = splat(acquisition(s, p)) + ae;
    pv[kMat] = p.product == Product::Endowment ? splat(p.sum_assured) * inf * vload(k.bt.D + size_t(k.n) * kLanes) : v8d{};
    pv[kNet] = net_of(pv);
}

// Policies per block: their per-step rates (4 arrays) stay in L2 while the block's scenario
// tables cycle through L1.
inline constexpr int kPolicyBlock = 32;

template <bool KS, bool ES, bool CF>
LC_INLINE void project_dynamic(ChunkJob& job) {
    const Settings& s = *job.settings;
    const ScenarioTables& sc = *job.scen;
    const OutputTargets& out = job.out;
    std::vector<Policy>& pols = *job.policies;
    const int N = job.n_max, S = sc.S, h = s.months_per_step;
    const size_t stride = size_t(N) + kLanes;
    const double maint = s.maintenance / double(s.steps_per_year);
    const std::vector<double>& infl = *job.inflation;

    AlignedVec a(kPolicyBlock * stride), b(kPolicyBlock * stride), q(kPolicyBlock * stride), e(kPolicyBlock * stride);
    AlignedVec w(stride);
    AlignedVec cf8(CF ? kPolicyBlock * (size_t(N) + 1) * kLanes : 0);
    AlignedVec ps(out.any_per_scenario() ? size_t(kComps) * size_t(sc.blocks) * kLanes : 0, 0.0);
    std::vector<double> psum(size_t(kPolicyBlock) * kComps);
    AlignedVec mean_inf(size_t(N) + 1 + kLanes);
    Flows f;
    ChunkFlows chunk;
    if (CF) {
        f.reserve(N);
        chunk.reset(N);
    }

    for (size_t p0 = 0; p0 < pols.size(); p0 += kPolicyBlock) {
        const size_t np = std::min<size_t>(kPolicyBlock, pols.size() - p0);
        for (size_t i = 0; i < np; ++i) {
            Policy& p = pols[p0 + i];
            double *qi = &q[i * stride], *ai = &a[i * stride], *bi = &b[i * stride], *ei = &e[i * stride];
            fill_rates(p, *job.rates, h, qi, w.data());
            survival_coefficients(p.n, qi, w.data(), ai, bi);
            p.premium_step = s.basis == PremiumBasis::Given ? level_premium_step(s, p)
                                                            : equivalence_premium(s, *job.pricing, p, qi, ai, bi);
            const double pctP = s.premium_rate * p.premium_step;
            for (int t = 0; t < p.n; ++t) ei[t] = s.mult_expense * ((maint * infl[size_t(t)] + pctP) + s.per_claim * qi[t]);
        }
        std::fill(psum.begin(), psum.end(), 0.0);
        if (CF) std::fill(cf8.begin(), cf8.end(), 0.0);

        for (int blk = 0; blk < sc.blocks; ++blk) {
            const BlockTables bt = block_tables(sc, blk);
            const int lanes = std::min(kLanes, S - blk * kLanes);
            for (size_t i = 0; i < np; ++i) {
                const Policy& p = pols[p0 + i];
                LaneArgs k{p.n, p.n_first, &a[i * stride], &b[i * stride], &q[i * stride], &e[i * stride], bt,
                           bt.at(s.t_prem), bt.at(s.t_comm), bt.at(s.t_claims), bt.at(s.t_exp)};
                // Padding lanes start with nothing in force so they add nothing anywhere.
                v8d inf0 = {};
                for (int j = 0; j < lanes; ++j) inf0[j] = p.count;
                v8d pv[kComps];
                lanes_policy<KS, ES, CF>(s, p, k, inf0, pv, CF ? &cf8[i * (size_t(N) + 1) * kLanes] : nullptr);

                if (!ps.empty()) {
                    for (int c = 0; c < kComps; ++c) {
                        double* acc = &ps[(size_t(c) * size_t(sc.blocks) + size_t(blk)) * kLanes];
                        vstore(acc, vload(acc) + pv[c]);
                    }
                }
                double* sums = &psum[i * kComps];
                for (int c = 0; c < kComps; ++c)
                    for (int j = 0; j < lanes; ++j) sums[c] += pv[c][j];
                for (int c = 0; c < kComps; ++c) {
                    double* dst = out.policy_scenario[size_t(c)];
                    if (!dst) continue;
                    for (int j = 0; j < lanes; ++j) dst[(p0 + i) * size_t(S) + size_t(blk * kLanes + j)] = pv[c][j];
                }
            }
        }

        for (size_t i = 0; i < np; ++i) {
            for (int c = 0; c < kComps; ++c) {
                if (out.per_policy[size_t(c)]) out.per_policy[size_t(c)][p0 + i] = psum[i * kComps + size_t(c)] / double(S);
            }
            if constexpr (CF) {
                const Policy& p = pols[p0 + i];
                const double* lanes_inf = &cf8[i * (size_t(N) + 1) * kLanes];
                for (int t = 0; t <= p.n; ++t) {
                    double sum = lanes_inf[size_t(t) * kLanes];
                    for (int j = 1; j < kLanes; ++j) sum += lanes_inf[size_t(t) * kLanes + size_t(j)];
                    mean_inf[size_t(t)] = sum / double(S);
                }
                policy_flows(s, infl, p, mean_inf.data(), &q[i * stride], f);
                chunk.add(p, mean_inf.data(), f, acquisition(s, p), true);
            }
        }
    }

    if (!ps.empty()) {
        for (int c = 0; c < kComps; ++c) {
            double* dst = out.per_scenario[size_t(c)];
            if (!dst) continue;
            for (int sc_i = 0; sc_i < S; ++sc_i) {
                dst[sc_i] = ps[(size_t(c) * size_t(sc.blocks) + size_t(sc_i / kLanes)) * kLanes + size_t(sc_i % kLanes)];
            }
        }
    }
    if constexpr (CF) chunk.write(out, N);
}

LC_INLINE void compute_impl(ChunkJob& job) {
    const Settings& s = *job.settings;
    if (!s.dyn.on) {
        project_static(job);
        return;
    }
    const bool ks = s.t_comm == s.t_prem, es = s.t_exp == s.t_prem, cf = job.out.any_cashflows();
    const int sel = int(ks) * 4 + int(es) * 2 + int(cf);
    switch (sel) {
        case 0: project_dynamic<false, false, false>(job); break;
        case 1: project_dynamic<false, false, true>(job); break;
        case 2: project_dynamic<false, true, false>(job); break;
        case 3: project_dynamic<false, true, true>(job); break;
        case 4: project_dynamic<true, false, false>(job); break;
        case 5: project_dynamic<true, false, true>(job); break;
        case 6: project_dynamic<true, true, false>(job); break;
        default: project_dynamic<true, true, true>(job); break;
    }
}

__attribute__((target("avx512f"))) void compute_avx512(ChunkJob& job) { compute_impl(job); }
__attribute__((target("avx2"))) void compute_avx2(ChunkJob& job) { compute_impl(job); }
void compute_sse2(ChunkJob& job) { compute_impl(job); }

}  // namespace

Simd best_simd() {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return Simd::Avx512;
    if (__builtin_cpu_supports("avx2")) return Simd::Avx2;
    return Simd::Sse2;
}

bool simd_supported(Simd s) {
    __builtin_cpu_init();
    switch (s) {
        case Simd::Auto: case Simd::Sse2: return true;
        case Simd::Avx2: return __builtin_cpu_supports("avx2");
        case Simd::Avx512: return __builtin_cpu_supports("avx512f");
    }
    return false;
}

const char* simd_name(Simd s) {
    switch (s) {
        case Simd::Auto: return "auto";
        case Simd::Avx512: return "avx512";
        case Simd::Avx2: return "avx2";
        case Simd::Sse2: return "sse2";
    }
    return "?";
}

void compute_chunk(ChunkJob& job, Simd simd) {
    switch (simd == Simd::Auto ? best_simd() : simd) {
        case Simd::Avx512: compute_avx512(job); break;
        case Simd::Avx2: compute_avx2(job); break;
        default: compute_sse2(job); break;
    }
}

}  // namespace livecalc::projection
