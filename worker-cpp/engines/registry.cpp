// Every C++ engine built into livecalc-worker-cpp, by the name a DAG uses after `cpp:`.
// To add an engine: write engines/<name>.cpp with a register_<name>(EngineRegistry&) function,
// declare it below and call it from register_builtin_engines.
#include "livecalc/engine_interface.hpp"

namespace livecalc {

void register_my_engine(EngineRegistry& registry);
void register_checksum(EngineRegistry& registry);
void register_projection(EngineRegistry& registry);
void register_pv_statistics(EngineRegistry& registry);

void register_builtin_engines(EngineRegistry& registry) {
    register_my_engine(registry);
    register_checksum(registry);
    register_projection(registry);
    register_pv_statistics(registry);
}

}  // namespace livecalc
