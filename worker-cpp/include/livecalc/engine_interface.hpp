// The ICalcEngine contract for C++ engines, as the LiveCalc seed defines it.
//
// An engine is a class deriving from ICalcEngine, registered by name in the EngineRegistry.
// livecalc-worker-cpp creates one instance per worker process and drives its lifecycle:
//
//   NotInit --initialize--> Initialized --runChunk--> Running --> Initialized ... --dispose--> Disposed
//
// Throw ConfigurationError for a bad config (never retried), InitializationError when a resource
// cannot be loaded, ExecutionError from runChunk (or return success = false). The host catches
// every exception at the cxx boundary and reports its class to the supervisor, so no exception
// ever reaches std::terminate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace livecalc {

struct EngineInfo {
    std::string name;          // "C++ Projection Engine"
    std::string version;       // "1.0.0"
    std::string engine_type;   // "projection", "esg", "solver", ...
    bool supports_assumptions_manager = false;
    size_t max_buffer_size = 0;  // 0: no limit

    EngineInfo() = default;
    EngineInfo(std::string n, std::string v, std::string t, bool am, size_t max = 0)
        : name(std::move(n)), version(std::move(v)), engine_type(std::move(t)),
          supports_assumptions_manager(am), max_buffer_size(max) {}
};

struct ExecutionResult {
    bool success = false;
    double execution_time_ms = 0.0;
    size_t rows_processed = 0;
    size_t bytes_written = 0;
    std::vector<std::string> warnings;
    std::string error_message;
};

struct AMCredentials {
    std::string am_url;
    std::string am_token;  // never log this
    std::string cache_dir;

    bool is_valid() const { return !am_url.empty() && !am_token.empty(); }
};

class CalcEngineError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};
class InitializationError : public CalcEngineError {
public:
    using CalcEngineError::CalcEngineError;
};
class ConfigurationError : public CalcEngineError {
public:
    using CalcEngineError::CalcEngineError;
};
class ExecutionError : public CalcEngineError {
public:
    using CalcEngineError::CalcEngineError;
};

class ICalcEngine {
public:
    virtual ~ICalcEngine() = default;

    // Initialize with config and credentials. Config values are strings: JSON strings arrive
    // unquoted, numbers and booleans as their JSON text, arrays and objects as JSON text.
    virtual void initialize(const std::map<std::string, std::string>& config,
                            const AMCredentials* credentials = nullptr) = 0;

    virtual EngineInfo get_info() const = 0;

    // Compute one chunk. input_buffer is a read-only view (directory + named columns, see
    // livecalc/buffer_view.hpp); output_buffer is this chunk's writable output view.
    virtual ExecutionResult runChunk(const uint8_t* input_buffer, size_t input_size,
                                     uint8_t* output_buffer, size_t output_size) = 0;

    virtual void dispose() noexcept = 0;

    virtual bool is_initialized() const = 0;
};

// Name -> factory. The worker looks engines up here by the name used in the DAG
// (`cpp:<name>`, or the built-in aliases such as `cpp_projection`).
class EngineRegistry {
public:
    using Factory = std::function<std::unique_ptr<ICalcEngine>()>;

    static EngineRegistry& instance() {
        static EngineRegistry registry;
        return registry;
    }

    void add(const std::string& name, Factory factory) { factories_[name] = std::move(factory); }

    std::unique_ptr<ICalcEngine> create(const std::string& name) const {
        auto it = factories_.find(name);
        if (it == factories_.end()) {
            throw ConfigurationError("no C++ engine registered as '" + name + "'");
        }
        return it->second();
    }

    std::vector<std::string> names() const {
        std::vector<std::string> out;
        for (const auto& kv : factories_) out.push_back(kv.first);
        return out;
    }

private:
    std::map<std::string, Factory> factories_;
};

// Defined in engines/registry.cpp: adds every engine built into livecalc-worker-cpp. Explicit
// registration rather than static initialisers, which a static library may silently drop.
void register_builtin_engines(EngineRegistry& registry);

// Config helpers shared by engines: typed lookups that throw ConfigurationError naming the key.
inline const std::string* config_find(const std::map<std::string, std::string>& config,
                                      const std::string& key) {
    auto it = config.find(key);
    return it == config.end() ? nullptr : &it->second;
}

inline double config_double(const std::map<std::string, std::string>& config,
                            const std::string& key) {
    const std::string* v = config_find(config, key);
    if (!v) throw ConfigurationError("missing config key '" + key + "'");
    try {
        size_t used = 0;
        double d = std::stod(*v, &used);
        if (used != v->size()) throw std::invalid_argument(*v);
        return d;
    } catch (const std::exception&) {
        throw ConfigurationError("config key '" + key + "' must be a number, got '" + *v + "'");
    }
}

inline double config_double(const std::map<std::string, std::string>& config,
                            const std::string& key, double fallback) {
    return config_find(config, key) ? config_double(config, key) : fallback;
}

}  // namespace livecalc
