// The seed's "Implementing a New Engine" example, made concrete: gross-up of rated premiums.
//
// Input buffer (input `priced`, one row per policy; produced by the Python hello engine):
//   priced.policy_id  int64
//   priced.premium    float64
// Output buffer:
//   taxed.policy_id      int64    (one row per policy) copied through
//   taxed.gross_premium  float64  premium * required_param
//   totals.gross_premium float64  (one slot per chunk, shape [1]) sum over the chunk's rows;
//                                 the supervisor adds the slots in chunk order
//   totals.policies      float64  (one slot per chunk, shape [1]) rows in the chunk
// Config: required_param (the multiplier, > 0); fail_on_policy_id (optional): throw
// ExecutionError when that policy is met — used by tests of typed error reporting.
#include <chrono>
#include <cstdint>
#include <optional>

#include "livecalc/buffer_view.hpp"
#include "livecalc/engine_interface.hpp"

namespace livecalc {
namespace {

class MyEngine : public ICalcEngine {
public:
    void initialize(const std::map<std::string, std::string>& config,
                    const AMCredentials* credentials) override {
        if (config.find("required_param") == config.end()) {
            throw ConfigurationError("Missing required_param");
        }
        multiplier_ = config_double(config, "required_param");
        if (!(multiplier_ > 0.0)) throw ConfigurationError("required_param must be > 0");
        fail_on_.reset();
        if (config_find(config, "fail_on_policy_id")) {
            fail_on_ = static_cast<int64_t>(config_double(config, "fail_on_policy_id"));
        }
        (void)credentials;  // this engine needs no assumptions manager
        initialized_ = true;
    }

    EngineInfo get_info() const override {
        return EngineInfo("My Engine", "1.0.0", "custom", false);
    }

    ExecutionResult runChunk(const uint8_t* input_buffer, size_t input_size,
                             uint8_t* output_buffer, size_t output_size) override {
        if (!initialized_) throw ExecutionError("engine not initialized");
        auto start = std::chrono::steady_clock::now();
        BufferView in(input_buffer, input_size);
        MutableBufferView out(output_buffer, output_size);

        auto ids = in.column<int64_t>("priced.policy_id");
        auto premium = in.column<double>("priced.premium");
        auto out_ids = out.column<int64_t>("taxed.policy_id");
        auto gross = out.column<double>("taxed.gross_premium");
        if (ids.size() != premium.size() || gross.size() != premium.size() ||
            out_ids.size() != ids.size()) {
            throw ExecutionError("input and output row counts differ");
        }
        double total = 0.0;
        for (size_t i = 0; i < premium.size(); ++i) {
            if (fail_on_ && ids[i] == *fail_on_) {
                throw ExecutionError("policy " + std::to_string(ids[i]) + " is marked to fail");
            }
            out_ids[i] = ids[i];
            gross[i] = premium[i] * multiplier_;
            total += gross[i];
        }
        out.column<double>("totals.gross_premium")[0] = total;
        out.column<double>("totals.policies")[0] = static_cast<double>(premium.size());

        ExecutionResult result;
        result.success = true;
        result.rows_processed = premium.size();
        result.bytes_written = premium.size() * 16 + 16;
        result.execution_time_ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                .count();
        return result;
    }

    void dispose() noexcept override { initialized_ = false; }

    bool is_initialized() const override { return initialized_; }

private:
    bool initialized_ = false;
    double multiplier_ = 1.0;
    std::optional<int64_t> fail_on_;
};

}  // namespace

void register_my_engine(EngineRegistry& registry) {
    registry.add("my_engine", [] { return std::make_unique<MyEngine>(); });
}

}  // namespace livecalc
