// Projection engine, part 3 of 4: the numerical work.
//
// Two algorithms, chosen by whether decrements depend on the scenario:
//
// * Static decrements (no dynamic lapse): the in-force of a policy is the same under every
//   scenario, so each policy is projected exactly once, its cash flows are added into the
//   chunk's cash flows by step, and only those chunk totals are discounted under each scenario
//   (S x T work per chunk instead of policies x S x T). The mean over scenarios of a policy's
//   PV is its cash flows discounted with the mean discount factor — the same number by
//   linearity — so per-policy results cost one dot product per cash-flow type. Within a policy
//   year the survival factor is constant, so the in-force is built from per-year powers and
//   only one multiply per year sits on the loop-carried chain.
//
// * Dynamic lapse: decrements differ by scenario, so every policy is projected under every
//   scenario. The loop nest is  policy block -> scenario blocks -> policy -> step, with 8
//   scenarios per vector: a block's scenario tables (about 30 KB) stay in L1 while the policy
//   block's per-step rates stream from L2. The in-force recursion
//   if(t+1) = if(t) - deaths - lapses is rewritten as if(t) g with g = max((1 - q) - (1 - q) w F, 0)
//   (the max is the lapse cap min(w F, 1), dropped when the tables show it cannot bind). Cash
//   flows are never formed: each PV component is an accumulator of coefficient(t) if(t) D(t),
//   premiums and commissions sharing one accumulator split at the end of policy year 0. With
//   the default timings the state is the discounted in-force if(t) D(t) instead, which saves a
//   multiply and a load per step. Several scenario blocks go through each pass so that enough
//   independent recursions are in flight to hide the multiply latency.
//
// Bit-identical results on every instruction set. The computation is compiled three times
// (AVX-512, AVX2, SSE2) from one source and picked at run time. All vector code works on packs
// of exactly 8 lanes (one zmm, two ymm or four xmm registers), so lanes map to scenarios (or to
// steps modulo 8 in dot products) identically in every build; -ffp-contract=off forbids fused
// multiply-adds; how many blocks share a pass changes only the interleaving, never the
// operations of a lane; and every reduction across lanes is written out in a fixed order. The
// builds therefore execute the same IEEE operations in the same order, and the tests compare
// them bit for bit.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "projection/api.hpp"

// Vector types wider than the target's registers change the calling convention; every function
// that takes or returns one is always inlined, so GCC's note about that ABI is moot.
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
    // The same vector at any 8-byte alignment, allowed to alias double: one vmovupd per access.
    typedef double unaligned __attribute__((vector_size(W * sizeof(double)), aligned(8), may_alias));
    static constexpr int N = kLanes / W;
    native v[N];
    LC_INLINE double lane(int j) const { return v[j / W][j % W]; }
    LC_INLINE void set_lane(int j, double x) { v[j / W][j % W] = x; }
};

// One broadcast per native vector. The empty asm hands the finished vector to the compiler as
// an opaque register value: without it GCC 12's scalar replacement of the Pack aggregate
// rebuilds the broadcast from eight element inserts (eight masked broadcasts on AVX-512).
template <int W> LC_INLINE Pack<W> splat(double x) {
    typename Pack<W>::native b = x - typename Pack<W>::native{};  // x - (+0) is exactly x
    asm("" : "+v"(b));
    Pack<W> p;
    for (int i = 0; i < Pack<W>::N; ++i) p.v[i] = b;
    return p;
}
template <int W> LC_INLINE Pack<W> zero() { return splat<W>(0.0); }
// Native-width moves: one 64-byte memcpy would be split into 16-byte moves on some builds and
// defeat store-to-load forwarding.
template <int W> LC_INLINE Pack<W> load(const double* ptr) {
    Pack<W> p;
    for (int i = 0; i < Pack<W>::N; ++i) p.v[i] = *reinterpret_cast<const typename Pack<W>::unaligned*>(ptr + i * W);
    return p;
}
template <int W> LC_INLINE void store(double* ptr, const Pack<W>& p) {
    for (int i = 0; i < Pack<W>::N; ++i) *reinterpret_cast<typename Pack<W>::unaligned*>(ptr + i * W) = p.v[i];
}
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
// Returns the number of policy-year segments and, in `seg_end`, where each ends.
LC_INLINE int fill_rates(const Policy& p, const StepRates& r, int h, double* q, double* w, int* seg_end = nullptr) {
    int t = 0, segs = 0;
    while (t < p.n) {
        const int mu = p.duration + h * t;
        const int d = mu / 12;
        const int left = 12 * (d + 1) - mu;  // months to the next anniversary
        const int end = std::min(p.n, t + (h == 1 ? left : left / 12));
        const double qv = r.q_at(p.sex, p.age + d, d);
        const double wv = r.w_at(d);
        for (; t < end; ++t) {
            q[t] = qv;
            w[t] = wv;
        }
        if (seg_end) seg_end[segs] = end;
        ++segs;
    }
    return segs;
}

// In-force under static decrements, if(t+1) = if(t) max(a - b, 0). Within a policy year the
// factor g is constant, so if(t0 + j) = if(t0) g^j: the powers of different years do not depend
// on each other, and only one multiply per year remains on the loop-carried chain (instead of
// one per month, which made this recursion the slowest part of a deterministic run).
LC_INLINE void static_in_force(const Policy& p, int segs, const int* seg_end, const double* a, const double* b,
                               double* pw, double* inf) {
    double start = p.count;
    for (int k = 0, t0 = 0; k < segs; t0 = seg_end[k], ++k) {
        const double d = a[t0] - b[t0];
        const double g = d > 0.0 ? d : 0.0;
        double x = 1.0;
        for (int t = t0; t < seg_end[k]; ++t) {
            pw[t] = x;
            x *= g;
        }
#pragma GCC ivdep
        for (int t = t0; t < seg_end[k]; ++t) inf[t] = start * pw[t];
        start = start * x;
    }
    inf[p.n] = start;
}

// a = 1 - q and b = (1 - q) w: with the lapse factor F the survival factor is max(a - b F, 0).
LC_INLINE void survival_coefficients(int n, const double* __restrict q, const double* __restrict w,
                                     double* __restrict a, double* __restrict b) {
#pragma GCC ivdep
    for (int t = 0; t < n; ++t) {
        a[t] = 1.0 - q[t];
        b[t] = a[t] * w[t];
    }
}

LC_INLINE double level_premium_step(const Settings& s, const Policy& p) {
    return p.premium * s.mult_premium / double(s.steps_per_year);
}

LC_INLINE const double* timing_table(const double* D, const double* Dmid, Timing t) {
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

LC_INLINE double acquisition(const Settings& s, const Policy& p) {
    return p.duration == 0 ? s.mult_expense * (s.acquisition * p.count) : 0.0;
}

// Undiscounted cash flows of one policy from its in-force if(0..n) (under one scenario, or
// the mean over scenarios). deaths = if q, lapses = if - deaths - if(t+1).
struct Flows {
    AlignedVec deaths, prem, claims, exp, comm;
    void reserve(int n) {
        for (auto* v : {&deaths, &prem, &claims, &exp, &comm}) v->assign(size_t(n) + kLanes, 0.0);
    }
};

LC_INLINE void policy_flows(const Settings& s, const double* __restrict infl, const Policy& p,
                            const double* __restrict inf, const double* __restrict q, Flows& f) {
    const double P = p.premium_step;
    const double pctP = s.premium_rate * P;
    const double maint = s.maintenance / double(s.steps_per_year);
    const double xm = s.mult_expense, pc = s.per_claim, sa = p.sum_assured;
    double* __restrict deaths = f.deaths.data();
    double* __restrict prem = f.prem.data();
    double* __restrict claims = f.claims.data();
    double* __restrict exp = f.exp.data();
    double* __restrict comm = f.comm.data();
#pragma GCC ivdep
    for (int t = 0; t < p.n; ++t) {
        deaths[t] = inf[t] * q[t];
        prem[t] = P * inf[t];
        claims[t] = sa * deaths[t];
        exp[t] = xm * ((maint * infl[t] + pctP) * inf[t] + pc * deaths[t]);
    }
    const int n1 = std::min(p.n_first, p.n);
#pragma GCC ivdep
    for (int t = 0; t < n1; ++t) comm[t] = s.commission_first * prem[t];
#pragma GCC ivdep
    for (int t = n1; t < p.n; ++t) comm[t] = s.commission_renewal * prem[t];
}

// The chunk's cash flows by step: sums over its policies in policy order.
struct ChunkFlows {
    std::array<AlignedVec, kCfCols> cf;
    double acq = 0.0;
    void reset(int n) {
        for (auto& v : cf) v.assign(size_t(n) + kLanes, 0.0);
        acq = 0.0;
    }
    LC_INLINE void add(const Policy& p, const double* __restrict inf, const Flows& f, double acq_p, bool detail) {
        double* __restrict cp = cf[kCfPrem].data();
        double* __restrict cc = cf[kCfClaims].data();
        double* __restrict ce = cf[kCfExp].data();
        double* __restrict ck = cf[kCfComm].data();
        const double* __restrict fp = f.prem.data();
        const double* __restrict fc = f.claims.data();
        const double* __restrict fe = f.exp.data();
        const double* __restrict fk = f.comm.data();
#pragma GCC ivdep
        for (int t = 0; t < p.n; ++t) {
            cp[t] += fp[t];
            cc[t] += fc[t];
            ce[t] += fe[t];
            ck[t] += fk[t];
        }
        if (p.product == Product::Endowment) cf[kCfMat][p.n - 1] += p.sum_assured * inf[p.n];
        acq += acq_p;
        if (!detail) return;
        double* __restrict ci = cf[kCfInForce].data();
        double* __restrict cd = cf[kCfDeaths].data();
        double* __restrict cl = cf[kCfLapses].data();
        const double* __restrict fd = f.deaths.data();
#pragma GCC ivdep
        for (int t = 0; t < p.n; ++t) {
            ci[t] += inf[t];
            cd[t] += fd[t];
            cl[t] += (inf[t] - fd[t]) - inf[t + 1];
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
    const double* R;     // D(t+1) / D(t) at R + 8 t
    const double* at(Timing t) const { return t == Timing::Start ? D : t == Timing::Mid ? Dmid : D + kLanes; }
};

LC_INLINE BlockTables block_tables(const ScenarioTables& sc, int blk) {
    BlockTables b;
    b.D = sc.D.data() + size_t(blk) * size_t(sc.T + 1) * kLanes;
    b.Dmid = sc.Dmid.empty() ? nullptr : sc.Dmid.data() + size_t(blk) * size_t(sc.T) * kLanes;
    b.F = sc.F.empty() ? nullptr : sc.F.data() + size_t(blk) * size_t(sc.T) * kLanes;
    b.R = sc.R.empty() ? nullptr : sc.R.data() + size_t(blk) * size_t(sc.T) * kLanes;
    return b;
}

template <int W> LC_INLINE Pack<W> net_of(const Pack<W>* c) {
    return (((c[kPrem] - c[kClaims]) - c[kExp]) - c[kComm]) - c[kMat];
}

LC_INLINE double net_of(const double* c) {
    return (((c[kPrem] - c[kClaims]) - c[kExp]) - c[kComm]) - c[kMat];
}

// Sum over t of coef[t] D(block, t): the discounting of one cash-flow vector in one block.
template <int W> LC_INLINE Pack<W> discount(const double* coef, const double* Dt, int n) {
    Pack<W> acc = zero<W>();
    for (int t = 0; t < n; ++t) acc += splat<W>(coef[t]) * load<W>(Dt + size_t(t) * kLanes);
    return acc;
}

// ---- static decrements ------------------------------------------------------------------------

template <int W>
LC_INLINE void project_static(ChunkJob& job) {
    const Settings& s = *job.settings;
    const ScenarioTables& sc = *job.scen;
    const OutputTargets& out = job.out;
    std::vector<Policy>& pols = *job.policies;
    const int N = job.n_max, S = sc.S, h = s.months_per_step;

    AlignedVec q(size_t(N) + kLanes), w(size_t(N) + kLanes), a(size_t(N) + kLanes), b(size_t(N) + kLanes);
    AlignedVec inf(size_t(N) + 1 + kLanes), pw(size_t(N) + 1 + kLanes);
    std::vector<int> seg_end(size_t(N) + 1);
    Flows f;
    f.reserve(N);
    ChunkFlows chunk;
    const bool need_chunk = out.any_per_scenario() || out.any_cashflows();
    if (need_chunk) chunk.reset(N);

    const double* mD[3] = {sc.meanD.data(), sc.meanDmid.data(), sc.meanD.data() + 1};
    const Timing tim[kComps] = {Timing::Start, s.t_prem, s.t_claims, s.t_exp, s.t_comm, Timing::End};

    // policy x scenario: net coefficient of each timing, per requested component.
    AlignedVec coef[3];
    if (out.any_policy_scenario()) for (auto& c : coef) c.assign(size_t(N) + kLanes, 0.0);

    for (size_t i = 0; i < pols.size(); ++i) {
        Policy& p = pols[i];
        const int segs = fill_rates(p, *job.rates, h, q.data(), w.data(), seg_end.data());
        survival_coefficients(p.n, q.data(), w.data(), a.data(), b.data());
        static_in_force(p, segs, seg_end.data(), a.data(), b.data(), pw.data(), inf.data());
        p.premium_step = s.basis == PremiumBasis::Given
                             ? level_premium_step(s, p)
                             : equivalence_premium(s, *job.pricing, p, q.data(), a.data(), b.data());
        policy_flows(s, job.inflation->data(), p, inf.data(), q.data(), f);
        const double acq = acquisition(s, p);
        const double mat = p.product == Product::Endowment ? p.sum_assured * inf[p.n] : 0.0;

        if (out.any_per_policy()) {
            double pv[kComps];
            pv[kPrem] = dot<W>(f.prem.data(), mD[int(s.t_prem)], p.n);
            pv[kClaims] = dot<W>(f.claims.data(), mD[int(s.t_claims)], p.n);
            pv[kExp] = acq + dot<W>(f.exp.data(), mD[int(s.t_exp)], p.n);
            pv[kComm] = dot<W>(f.comm.data(), mD[int(s.t_comm)], p.n);
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
                // Component c as signed sums of cash-flow types (net: + premiums, - the rest).
                for (int k = kPrem; k <= kComm; ++k) {
                    if (c != kNet && c != k) continue;
                    const double sign = (c == kNet && k != kPrem) ? -1.0 : 1.0;
                    const int ti = int(tim[k]);
                    used[ti] = true;
                    for (int t = 0; t < p.n; ++t) coef[ti][t] += sign * (*flow[k])[t];
                }
                const double constant = c == kExp ? acq : c == kNet ? -acq : 0.0;
                const double mat_sign = c == kMat ? 1.0 : c == kNet ? -1.0 : 0.0;
                for (int blk = 0; blk < sc.blocks; ++blk) {
                    const BlockTables bt = block_tables(sc, blk);
                    Pack<W> acc = splat<W>(constant);
                    for (int ti = 0; ti < 3; ++ti) {
                        if (used[ti]) acc += discount<W>(coef[ti].data(), bt.at(Timing(ti)), p.n);
                    }
                    if (mat_sign != 0.0) acc += splat<W>(mat_sign * mat) * load<W>(bt.D + size_t(p.n) * kLanes);
                    const int lanes = std::min(kLanes, S - blk * kLanes);
                    for (int j = 0; j < lanes; ++j) dst[i * size_t(S) + size_t(blk * kLanes + j)] = acc.lane(j);
                }
            }
        }
    }

    if (out.any_per_scenario()) {
        const int cfcol[kComps] = {-1, kCfPrem, kCfClaims, kCfExp, kCfComm, kCfMat};
        for (int blk = 0; blk < sc.blocks; ++blk) {
            const BlockTables bt = block_tables(sc, blk);
            Pack<W> pv[kComps];
            for (int c = kPrem; c <= kMat; ++c) pv[c] = discount<W>(chunk.cf[size_t(cfcol[c])].data(), bt.at(tim[c]), N);
            pv[kExp] = splat<W>(chunk.acq) + pv[kExp];
            pv[kNet] = net_of(pv);
            const int lanes = std::min(kLanes, S - blk * kLanes);
            for (int c = 0; c < kComps; ++c) {
                double* dst = out.per_scenario[size_t(c)];
                if (!dst) continue;
                for (int j = 0; j < lanes; ++j) dst[blk * kLanes + j] = pv[c].lane(j);
            }
        }
    }
    if (out.any_cashflows()) chunk.write(out, N);
}

// ---- dynamic lapse ----------------------------------------------------------------------------

// What a policy brings to the dynamic kernel: its per-step coefficients.
struct PolicySteps {
    int n, n_first;
    const double *a, *b, *q, *e;
};

// Where a scenario block's tables are, for each cash-flow timing.
struct BlockPtrs {
    BlockTables bt;
    const double *Dp, *Dk, *Dc, *De;
};

// One step of one policy under B blocks of 8 scenarios. The policy's coefficients are
// broadcast once for all blocks; each block is an independent chain of in-force. `cf8`, when
// given, collects the in-force of every lane by step (blocks added in block order).
template <int W, int B, bool KS, bool ES, bool CF, bool CL>
LC_INLINE void lanes_step(const PolicySteps& k, const BlockPtrs* bp, int t, Pack<W>* inf, Pack<W>* ap, Pack<W>* ak,
                          Pack<W>* ac, Pack<W>* ae, double* cf8) {
    const size_t o = size_t(t) * kLanes;
    const Pack<W> e = splat<W>(k.e[t]), q = splat<W>(k.q[t]), a = splat<W>(k.a[t]), b = splat<W>(k.b[t]);
    for (int j = 0; j < B; ++j) {
        const Pack<W> yp = inf[j] * load<W>(bp[j].Dp + o);
        ap[j] += yp;
        if constexpr (!KS) ak[j] += inf[j] * load<W>(bp[j].Dk + o);
        if constexpr (ES) {
            ae[j] += e * yp;
        } else {
            ae[j] += e * (inf[j] * load<W>(bp[j].De + o));
        }
        ac[j] += q * (inf[j] * load<W>(bp[j].Dc + o));
    }
    if constexpr (CF) {
        Pack<W> sum = load<W>(cf8 + o);
        for (int j = 0; j < B; ++j) sum = sum + inf[j];
        store<W>(cf8 + o, sum);
    }
    for (int j = 0; j < B; ++j) {
        const Pack<W> g = a - b * load<W>(bp[j].bt.F + o);
        if constexpr (CL) {
            inf[j] = inf[j] * max0(g);
        } else {
            inf[j] = inf[j] * g;
        }
    }
}

// One policy under B scenario blocks: the PV components of every lane into pv[j][component].
template <int W, int B, bool KS, bool ES, bool CF, bool CL>
LC_INLINE void lanes_policy(const Settings& s, const Policy& p, const PolicySteps& k, const BlockPtrs* bp,
                            const Pack<W>* inf0, Pack<W> (*pv)[kComps], double* cf8) {
    Pack<W> inf[B], ap1[B], ap2[B], ak1[B], ak2[B], ac[B], ae[B];
    for (int j = 0; j < B; ++j) {
        inf[j] = inf0[j];
        ap1[j] = ap2[j] = ak1[j] = ak2[j] = ac[j] = ae[j] = zero<W>();
    }
    for (int t = 0; t < k.n_first; ++t) lanes_step<W, B, KS, ES, CF, CL>(k, bp, t, inf, ap1, ak1, ac, ae, cf8);
    for (int t = k.n_first; t < k.n; ++t) lanes_step<W, B, KS, ES, CF, CL>(k, bp, t, inf, ap2, ak2, ac, ae, cf8);
    if constexpr (CF) {
        Pack<W> sum = load<W>(cf8 + size_t(k.n) * kLanes);
        for (int j = 0; j < B; ++j) sum = sum + inf[j];
        store<W>(cf8 + size_t(k.n) * kLanes, sum);
    }
    const Pack<W> P = splat<W>(p.premium_step);
    const Pack<W> c1 = splat<W>(s.commission_first), cr = splat<W>(s.commission_renewal);
    const Pack<W> sa = splat<W>(p.sum_assured), acq = splat<W>(acquisition(s, p));
    for (int j = 0; j < B; ++j) {
        Pack<W>* out = pv[j];
        out[kPrem] = P * (ap1[j] + ap2[j]);
        if constexpr (KS) {
            out[kComm] = P * (c1 * ap1[j] + cr * ap2[j]);
        } else {
            out[kComm] = P * (c1 * ak1[j] + cr * ak2[j]);
        }
        out[kClaims] = sa * ac[j];
        out[kExp] = acq + ae[j];
        out[kMat] = p.product == Product::Endowment ? sa * inf[j] * load<W>(bp[j].bt.D + size_t(k.n) * kLanes) : zero<W>();
        out[kNet] = net_of(out);
    }
}

// The same projection for the default timings (premiums, commissions and expenses at the
// start of the step, claims at the end) with the discounted in-force y(t) = if(t) D(t) as the
// state: y(t+1) = y(t) R(t) g(t) with R = D(t+1)/D(t). Premiums then accumulate y itself, claims
// reuse z = y R that the recursion needs anyway, and the maturity is SA y(n): five multiplies a
// step instead of six, two scenario loads instead of three.
template <int W, int B, bool CL>
LC_INLINE void lanes_policy_discounted(const Settings& s, const Policy& p, const PolicySteps& k, const BlockPtrs* bp,
                                       const Pack<W>* inf0, Pack<W> (*pv)[kComps]) {
    Pack<W> y[B], ap1[B], ap2[B], ac[B], ae[B];
    for (int j = 0; j < B; ++j) {
        y[j] = inf0[j] * load<W>(bp[j].bt.D);
        ap1[j] = ap2[j] = ac[j] = ae[j] = zero<W>();
    }
    auto step = [&](int t, Pack<W>* ap) __attribute__((always_inline)) {
        const size_t o = size_t(t) * kLanes;
        const Pack<W> e = splat<W>(k.e[t]), q = splat<W>(k.q[t]), a = splat<W>(k.a[t]), b = splat<W>(k.b[t]);
        for (int j = 0; j < B; ++j) {
            ap[j] += y[j];
            ae[j] += e * y[j];
            const Pack<W> z = y[j] * load<W>(bp[j].bt.R + o);
            ac[j] += q * z;
            const Pack<W> g = a - b * load<W>(bp[j].bt.F + o);
            if constexpr (CL) {
                y[j] = z * max0(g);
            } else {
                y[j] = z * g;
            }
        }
    };
    for (int t = 0; t < k.n_first; ++t) step(t, ap1);
    for (int t = k.n_first; t < k.n; ++t) step(t, ap2);
    const Pack<W> P = splat<W>(p.premium_step);
    const Pack<W> c1 = splat<W>(s.commission_first), cr = splat<W>(s.commission_renewal);
    const Pack<W> sa = splat<W>(p.sum_assured), acq = splat<W>(acquisition(s, p));
    for (int j = 0; j < B; ++j) {
        Pack<W>* out = pv[j];
        out[kPrem] = P * (ap1[j] + ap2[j]);
        out[kComm] = P * (c1 * ap1[j] + cr * ap2[j]);
        out[kClaims] = sa * ac[j];
        out[kExp] = acq + ae[j];
        out[kMat] = p.product == Product::Endowment ? sa * y[j] : zero<W>();
        out[kNet] = net_of(out);
    }
}

// Policies per block: their per-step rates (4 arrays) stay in L2 while the block's scenario
// tables cycle through L1.
inline constexpr int kPolicyBlock = 32;

template <int W, bool KS, bool ES, bool CF, bool CL, bool FAST = false>
LC_INLINE void project_dynamic(ChunkJob& job) {
    // Scenario blocks per pass, so that enough independent in-force chains are in flight to
    // cover the multiply latency: with AVX-512's 32 registers four for the discounted kernel
    // (two multiplies on its chain) and two for the general one; one with 16 registers.
    constexpr int B = W == 8 ? (FAST ? 4 : 2) : 1;
    const Settings& s = *job.settings;
    const ScenarioTables& sc = *job.scen;
    const OutputTargets& out = job.out;
    std::vector<Policy>& pols = *job.policies;
    const int N = job.n_max, S = sc.S, h = s.months_per_step;
    const size_t stride = size_t(N) + kLanes;
    const double maint = s.maintenance / double(s.steps_per_year);
    const double* infl = job.inflation->data();

    AlignedVec a(kPolicyBlock * stride), b(kPolicyBlock * stride), q(kPolicyBlock * stride), e(kPolicyBlock * stride);
    AlignedVec w(stride);
    AlignedVec cf8(CF ? kPolicyBlock * (size_t(N) + 1) * kLanes : 0);
    AlignedVec ps(out.any_per_scenario() ? size_t(kComps) * size_t(sc.blocks) * kLanes : 0, 0.0);
    // Per-policy sums over scenarios, lane-wise: lane j adds scenarios j, j+8, ...; the lanes
    // are combined in order at the end.
    AlignedVec psum(size_t(kPolicyBlock) * kComps * kLanes);
    const bool per_policy = out.any_per_policy(), policy_scenario = out.any_policy_scenario();
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
            for (int t = 0; t < p.n; ++t) ei[t] = s.mult_expense * ((maint * infl[t] + pctP) + s.per_claim * qi[t]);
        }
        std::fill(psum.begin(), psum.end(), 0.0);
        if (CF) std::fill(cf8.begin(), cf8.end(), 0.0);

        for (int blk0 = 0; blk0 < sc.blocks; blk0 += B) {
            // B blocks per pass; past the last block, a pass repeats block blk0 with no lane
            // alive and its results are dropped.
            BlockPtrs bp[B];
            int lanes[B];
            bool real[B];
            Pack<W> live[B], block_sum[B][kComps];
            for (int j = 0; j < B; ++j) {
                real[j] = blk0 + j < sc.blocks;
                const int blk = real[j] ? blk0 + j : blk0;
                const BlockTables bt = block_tables(sc, blk);
                bp[j] = BlockPtrs{bt, bt.at(s.t_prem), bt.at(s.t_comm), bt.at(s.t_claims), bt.at(s.t_exp)};
                lanes[j] = real[j] ? std::min(kLanes, S - blk * kLanes) : 0;
                // Padding lanes start with nothing in force so they add nothing anywhere.
                live[j] = zero<W>();
                for (int l = 0; l < lanes[j]; ++l) live[j].set_lane(l, 1.0);
                // This block's per-scenario sums stay in registers over the block's policies
                // (the additions happen in policy order either way).
                for (int c = 0; c < kComps; ++c) {
                    block_sum[j][c] = ps.empty() || !real[j] ? zero<W>()
                                                            : load<W>(&ps[(size_t(c) * size_t(sc.blocks) + size_t(blk)) * kLanes]);
                }
            }
            for (size_t i = 0; i < np; ++i) {
                const Policy& p = pols[p0 + i];
                const PolicySteps k{p.n, p.n_first, &a[i * stride], &b[i * stride], &q[i * stride], &e[i * stride]};
                Pack<W> inf0[B];
                for (int j = 0; j < B; ++j) inf0[j] = live[j] * splat<W>(p.count);
                Pack<W> pv[B][kComps];
                if constexpr (FAST) {
                    lanes_policy_discounted<W, B, CL>(s, p, k, bp, inf0, pv);
                } else {
                    lanes_policy<W, B, KS, ES, CF, CL>(s, p, k, bp, inf0, pv, CF ? &cf8[i * (size_t(N) + 1) * kLanes] : nullptr);
                }
                for (int j = 0; j < B; ++j) {
                    if (!real[j]) continue;
                    const int blk = blk0 + j;
                    if (!ps.empty()) {
                        for (int c = 0; c < kComps; ++c) block_sum[j][c] += pv[j][c];
                    }
                    if (per_policy) {
                        for (int c = 0; c < kComps; ++c) {
                            double* acc = &psum[(i * kComps + size_t(c)) * kLanes];
                            store<W>(acc, load<W>(acc) + (lanes[j] == kLanes ? pv[j][c] : pv[j][c] * live[j]));
                        }
                    }
                    if (policy_scenario) {
                        for (int c = 0; c < kComps; ++c) {
                            double* dst = out.policy_scenario[size_t(c)];
                            if (!dst) continue;
                            for (int l = 0; l < lanes[j]; ++l) dst[(p0 + i) * size_t(S) + size_t(blk * kLanes + l)] = pv[j][c].lane(l);
                        }
                    }
                }
            }
            for (int j = 0; j < B; ++j) {
                if (ps.empty() || !real[j]) continue;
                for (int c = 0; c < kComps; ++c) store<W>(&ps[(size_t(c) * size_t(sc.blocks) + size_t(blk0 + j)) * kLanes], block_sum[j][c]);
            }
        }

        for (size_t i = 0; i < np; ++i) {
            for (int c = 0; c < kComps; ++c) {
                if (!out.per_policy[size_t(c)]) continue;
                out.per_policy[size_t(c)][p0 + i] = hsum(load<W>(&psum[(i * kComps + size_t(c)) * kLanes])) / double(S);
            }
            if constexpr (CF) {
                const Policy& p = pols[p0 + i];
                const double* lanes_inf = &cf8[i * (size_t(N) + 1) * kLanes];
                for (int t = 0; t <= p.n; ++t) mean_inf[size_t(t)] = hsum(load<W>(lanes_inf + size_t(t) * kLanes)) / double(S);
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

template <int W, bool KS, bool ES>
LC_INLINE void project_dynamic_cf(ChunkJob& job, bool cf, bool clamp) {
    if (cf) {
        if (clamp) project_dynamic<W, KS, ES, true, true>(job);
        else project_dynamic<W, KS, ES, true, false>(job);
    } else {
        if (clamp) project_dynamic<W, KS, ES, false, true>(job);
        else project_dynamic<W, KS, ES, false, false>(job);
    }
}

template <int W>
LC_INLINE void compute_impl(ChunkJob& job) {
    const Settings& s = *job.settings;
    if (!s.dyn.on) {
        project_static<W>(job);
        return;
    }
    // The lapse cap min(w F, 1) can only bind if some per-step lapse rate times the largest
    // lapse factor reaches 1; when it cannot, max(g, 0) = g and the kernel skips it (same bits).
    double w_max = 0.0;
    for (double w : job.rates->w) w_max = std::max(w_max, w);
    const bool clamp = !(w_max * job.scen->f_max < 1.0 - 1e-9);
    const bool cf = job.out.any_cashflows();
    const bool ks = s.t_comm == s.t_prem, es = s.t_exp == s.t_prem;
    if (!cf && ks && es && s.t_prem == Timing::Start && s.t_claims == Timing::End) {
        if (clamp) project_dynamic<W, true, true, false, true, true>(job);
        else project_dynamic<W, true, true, false, false, true>(job);
        return;
    }
    if (ks && es) project_dynamic_cf<W, true, true>(job, cf, clamp);
    else if (ks) project_dynamic_cf<W, true, false>(job, cf, clamp);
    else if (es) project_dynamic_cf<W, false, true>(job, cf, clamp);
    else project_dynamic_cf<W, false, false>(job, cf, clamp);
}

__attribute__((target("avx512f"))) void compute_avx512(ChunkJob& job) { compute_impl<8>(job); }
__attribute__((target("avx2"))) void compute_avx2(ChunkJob& job) { compute_impl<4>(job); }
void compute_sse2(ChunkJob& job) { compute_impl<2>(job); }

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
