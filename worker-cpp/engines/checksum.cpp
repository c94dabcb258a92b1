// A diagnostic engine for the data bus: it proves what a worker sees without copying anything.
//
// Input: any columns; every int64 column is summed over the chunk's rows, and the first element
// of each column is read (mode "touch" reads only that, so the cost of a chunk is independent
// of its size — what the bus benchmarks need).
// Output (per chunk): checksum.total int64 [1], checksum.rows int64 [1].
// Config: mode = "sum" (default) or "touch".
#include <chrono>
#include <cstdint>
#include <cstring>

#include "livecalc/buffer_view.hpp"
#include "livecalc/engine_interface.hpp"

namespace livecalc {
namespace {

class ChecksumEngine : public ICalcEngine {
public:
    void initialize(const std::map<std::string, std::string>& config,
                    const AMCredentials*) override {
        const std::string* mode = config_find(config, "mode");
        if (mode && *mode != "sum" && *mode != "touch") {
            throw ConfigurationError("config key 'mode' must be \"sum\" or \"touch\", got '" + *mode + "'");
        }
        touch_only_ = mode && *mode == "touch";
        initialized_ = true;
    }

    EngineInfo get_info() const override {
        return EngineInfo("Bus Checksum", "1.0.0", "diagnostic", false);
    }

    ExecutionResult runChunk(const uint8_t* input, size_t input_size, uint8_t* output,
                             size_t output_size) override {
        auto start = std::chrono::steady_clock::now();
        MutableBufferView out(output, output_size);
        int64_t total = 0;
        if (input != nullptr) {
            BufferView in(input, input_size);
            for (const auto& c : in.columns()) {
                if (c.dtype != DType::Int64 || c.nbytes == 0) continue;
                auto v = in.column<int64_t>(c.name);
                if (touch_only_) {
                    total += v[0];
                } else {
                    for (int64_t x : v) total += x;
                }
            }
        }
        out.column<int64_t>("checksum.total")[0] = total;
        out.column<int64_t>("checksum.rows")[0] = static_cast<int64_t>(out.row_count());
        ExecutionResult r;
        r.success = true;
        r.rows_processed = out.row_count();
        r.bytes_written = 16;
        r.execution_time_ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        return r;
    }

    void dispose() noexcept override { initialized_ = false; }
    bool is_initialized() const override { return initialized_; }

private:
    bool initialized_ = false;
    bool touch_only_ = false;
};

}  // namespace

void register_checksum(EngineRegistry& registry) {
    registry.add("checksum", [] { return std::make_unique<ChecksumEngine>(); });
}

}  // namespace livecalc
