// Just enough JSON to read the projection engine's config sections.
//
// The host hands an engine its config as std::map<string, string> in which nested objects
// arrive as JSON text ("expenses" -> "{\"maintenance\":60}"). Rather than teaching every lookup
// about nesting, the engine flattens each object into dotted keys ("expenses.maintenance" ->
// "60") once, so the rest of the code sees one flat namespace whichever way the DAG author wrote
// it. Scalars keep their JSON text (numbers as written, strings unquoted, booleans as
// true/false) exactly like the host's top-level convention; arrays stay JSON text.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "livecalc/engine_interface.hpp"

namespace livecalc::projection::json {

class Flattener {
public:
    Flattener(std::string_view text, std::string context) : s_(text), ctx_(std::move(context)) {}

    // Parse one JSON value and add every scalar leaf under `prefix` to `out`.
    void flatten_into(const std::string& prefix, std::map<std::string, std::string>& out) {
        value(prefix, out);
        ws();
        if (i_ != s_.size()) fail("unexpected text after the value");
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        throw ConfigurationError("config key '" + ctx_ + "': invalid JSON at character " +
                                 std::to_string(i_) + ": " + what);
    }

    void ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
    }

    void put(const std::string& key, std::string v, std::map<std::string, std::string>& out) {
        if (!out.emplace(key, std::move(v)).second) {
            throw ConfigurationError("config key '" + key + "' is given twice");
        }
    }

    void value(const std::string& key, std::map<std::string, std::string>& out) {
        ws();
        if (i_ >= s_.size()) fail("value expected");
        char c = s_[i_];
        if (c == '{') {
            ++i_;
            ws();
            if (i_ < s_.size() && s_[i_] == '}') { ++i_; return; }
            for (;;) {
                ws();
                if (i_ >= s_.size() || s_[i_] != '"') fail("object key expected");
                std::string k = string();
                ws();
                if (i_ >= s_.size() || s_[i_] != ':') fail("':' expected");
                ++i_;
                value(key.empty() ? k : key + "." + k, out);
                ws();
                if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
                if (i_ < s_.size() && s_[i_] == '}') { ++i_; return; }
                fail("',' or '}' expected");
            }
        }
        if (c == '[') {
            // Arrays are kept whole: no projection setting is a list today.
            size_t start = i_;
            skip_array();
            put(key, std::string(s_.substr(start, i_ - start)), out);
            return;
        }
        if (c == '"') { put(key, string(), out); return; }
        size_t start = i_;
        while (i_ < s_.size() && std::string_view(",}] \t\r\n").find(s_[i_]) == std::string_view::npos) ++i_;
        std::string_view tok = s_.substr(start, i_ - start);
        if (tok.empty()) fail("value expected");
        put(key, std::string(tok), out);
    }

    void skip_array() {
        int depth = 0;
        bool in_str = false;
        for (; i_ < s_.size(); ++i_) {
            char c = s_[i_];
            if (in_str) {
                if (c == '\\') ++i_;
                else if (c == '"') in_str = false;
            } else if (c == '"') in_str = true;
            else if (c == '[' || c == '{') ++depth;
            else if (c == ']' || c == '}') {
                if (--depth == 0) { ++i_; return; }
            }
        }
        fail("unterminated array");
    }

    std::string string() {
        ++i_;  // opening quote
        std::string out;
        while (i_ < s_.size() && s_[i_] != '"') {
            char c = s_[i_++];
            if (c != '\\') { out += c; continue; }
            if (i_ >= s_.size()) break;
            char e = s_[i_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    if (i_ + 4 > s_.size()) fail("bad \\u escape");
                    uint32_t cp = std::stoul(std::string(s_.substr(i_, 4)), nullptr, 16);
                    i_ += 4;
                    // Paths and enum words are ASCII in practice; encode the BMP faithfully anyway.
                    if (cp < 0x80) out += char(cp);
                    else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
                    else { out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F)); }
                    break;
                }
                default: fail(std::string("bad escape \\") + e);
            }
        }
        if (i_ >= s_.size()) fail("unterminated string");
        ++i_;
        return out;
    }

    std::string_view s_;
    std::string ctx_;
    size_t i_ = 0;
};

// Flatten a config map: every value under a key listed in `object_keys` that holds a JSON object
// is expanded into dotted keys; everything else is copied as is. Dotted keys written directly
// ("expenses.maintenance": 60) are equally accepted, and giving a setting both ways is an error.
inline std::map<std::string, std::string> flatten_config(
    const std::map<std::string, std::string>& config,
    std::initializer_list<std::string_view> object_keys) {
    std::map<std::string, std::string> out;
    for (const auto& [k, v] : config) {
        bool is_section = false;
        for (auto s : object_keys) is_section = is_section || k == s;
        size_t first = v.find_first_not_of(" \t\r\n");
        if (is_section && first != std::string::npos && v[first] == '{') {
            Flattener(v, k).flatten_into(k, out);
        } else if (!out.emplace(k, v).second) {
            throw ConfigurationError("config key '" + k + "' is given twice");
        }
    }
    return out;
}

}  // namespace livecalc::projection::json
