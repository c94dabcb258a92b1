#include "livecalc-worker-cpp/src/bridge.hpp"

#include <map>
#include <mutex>

#include "livecalc-worker-cpp/src/ffi.rs.h"

namespace livecalc::bridge {

namespace {
EngineRegistry& registry() {
    static std::once_flag once;
    std::call_once(once, [] { register_builtin_engines(EngineRegistry::instance()); });
    return EngineRegistry::instance();
}
}  // namespace

std::unique_ptr<EngineHandle> create_engine(rust::Str name) {
    return std::make_unique<EngineHandle>(registry().create(std::string(name)));
}

rust::Vec<rust::String> registered_engines() {
    rust::Vec<rust::String> out;
    for (const auto& n : registry().names()) out.push_back(rust::String(n));
    return out;
}

BridgeInfo EngineHandle::info() const {
    EngineInfo i = engine_->get_info();
    return BridgeInfo{rust::String(i.name), rust::String(i.version), rust::String(i.engine_type),
                      i.supports_assumptions_manager, static_cast<uint64_t>(i.max_buffer_size)};
}

void EngineHandle::initialize(rust::Slice<const ConfigEntry> config, bool has_credentials,
                              rust::Str am_url, rust::Str am_token, rust::Str cache_dir) {
    std::map<std::string, std::string> cfg;
    for (const auto& e : config) cfg[std::string(e.key)] = std::string(e.value);
    AMCredentials creds{std::string(am_url), std::string(am_token), std::string(cache_dir)};
    engine_->initialize(cfg, has_credentials ? &creds : nullptr);
}

BridgeResult EngineHandle::run_chunk(const uint8_t* input, size_t input_size, uint8_t* output,
                                     size_t output_size) {
    ExecutionResult r = engine_->runChunk(input, input_size, output, output_size);
    rust::Vec<rust::String> warnings;
    for (const auto& w : r.warnings) warnings.push_back(rust::String(w));
    return BridgeResult{r.success,
                        r.execution_time_ms,
                        static_cast<uint64_t>(r.rows_processed),
                        static_cast<uint64_t>(r.bytes_written),
                        std::move(warnings),
                        rust::String(r.error_message)};
}

void EngineHandle::dispose() noexcept { engine_->dispose(); }

bool EngineHandle::is_initialized() const { return engine_->is_initialized(); }

}  // namespace livecalc::bridge
