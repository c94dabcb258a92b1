// The C++ side of the one FFI boundary of livecalc-worker-cpp (see src/ffi.rs).
//
// EngineHandle owns one ICalcEngine. Every function cxx exposes returns Result on the Rust side,
// so an exception thrown by an engine is caught by the trycatch below — never std::terminate —
// and reaches Rust as "<ClassName>\x1f<what()>", which ffi.rs splits back into a typed error.
#pragma once

#include <cxxabi.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <typeinfo>

#include "livecalc/engine_interface.hpp"
#include "rust/cxx.h"

namespace rust::behavior {

inline std::string livecalc_class_name(const std::exception& e) {
    int status = 0;
    char* demangled = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status);
    std::string name = (status == 0 && demangled) ? demangled : typeid(e).name();
    std::free(demangled);
    // Report the class as engines spell it, without the namespace.
    auto pos = name.rfind("::");
    return pos == std::string::npos ? name : name.substr(pos + 2);
}

template <typename Try, typename Fail>
static void trycatch(Try&& func, Fail&& fail) noexcept try {
    func();
} catch (const std::exception& e) {
    fail(livecalc_class_name(e) + "\x1f" + e.what());
} catch (...) {
    fail(std::string("UnknownException\x1f") + "a non-std::exception was thrown");
}

}  // namespace rust::behavior

namespace livecalc::bridge {

struct BridgeInfo;
struct BridgeResult;
struct ConfigEntry;

class EngineHandle {
public:
    explicit EngineHandle(std::unique_ptr<ICalcEngine> engine) : engine_(std::move(engine)) {}

    BridgeInfo info() const;
    void initialize(rust::Slice<const ConfigEntry> config, bool has_credentials, rust::Str am_url,
                    rust::Str am_token, rust::Str cache_dir);
    BridgeResult run_chunk(const uint8_t* input, size_t input_size, uint8_t* output,
                           size_t output_size);
    void dispose() noexcept;
    bool is_initialized() const;

private:
    std::unique_ptr<ICalcEngine> engine_;
};

std::unique_ptr<EngineHandle> create_engine(rust::Str name);
rust::Vec<rust::String> registered_engines();

}  // namespace livecalc::bridge
