// A strict little CSV reader for assumption tables.
//
// Assumption tables are small (hundreds of rows) and hand-edited, so the reader's job is not
// speed but blame: every complaint names the file, the line (1-based, header = line 1) and the
// column, so an actuary can open the file and fix the cell. Numbers are parsed with
// std::from_chars, which ignores the process locale (strtod would read "0,5" in some locales).
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "livecalc/engine_interface.hpp"

namespace livecalc::projection {

class CsvTable {
public:
    // `role` says what the table is for ("mortality", "lapse", ...) in messages.
    static CsvTable read(const std::string& path, const std::string& role) {
        std::ifstream in(path, std::ios::binary);
        if (!in) throw InitializationError(role + " table '" + path + "' cannot be opened");
        std::stringstream buf;
        buf << in.rdbuf();
        CsvTable t;
        t.path_ = path;
        t.role_ = role;
        std::string text = buf.str();
        size_t pos = 0;
        size_t line = 0;
        bool header_done = false;
        while (pos <= text.size()) {
            size_t end = text.find('\n', pos);
            if (end == std::string::npos) end = text.size();
            std::string_view raw(text.data() + pos, end - pos);
            ++line;
            pos = end + 1;
            if (!raw.empty() && raw.back() == '\r') raw.remove_suffix(1);
            if (line == 1 && raw.size() >= 3 && raw.substr(0, 3) == "\xEF\xBB\xBF") raw.remove_prefix(3);
            if (trim(raw).empty()) {
                if (end == text.size()) break;
                continue;
            }
            std::vector<std::string> cells = split(raw);
            if (!header_done) {
                t.header_ = std::move(cells);
                header_done = true;
                for (size_t i = 0; i < t.header_.size(); ++i) {
                    for (size_t j = 0; j < i; ++j) {
                        if (t.header_[i] == t.header_[j]) {
                            throw InitializationError(t.where(line) + ": column '" + t.header_[i] + "' appears twice");
                        }
                    }
                }
            } else {
                if (cells.size() != t.header_.size()) {
                    throw InitializationError(t.where(line) + ": " + std::to_string(cells.size()) +
                                              " fields, the header has " + std::to_string(t.header_.size()));
                }
                t.rows_.push_back(std::move(cells));
                t.lines_.push_back(line);
            }
            if (end == text.size()) break;
        }
        if (!header_done) throw InitializationError(role + " table '" + path + "' is empty");
        if (t.rows_.empty()) throw InitializationError(role + " table '" + path + "' has a header but no rows");
        return t;
    }

    const std::vector<std::string>& header() const { return header_; }
    size_t rows() const { return rows_.size(); }
    size_t line(size_t row) const { return lines_[row]; }
    const std::string& path() const { return path_; }

    int column(std::string_view name) const {
        for (size_t i = 0; i < header_.size(); ++i) if (header_[i] == name) return int(i);
        return -1;
    }

    int require(std::string_view name) const {
        int c = column(name);
        if (c < 0) throw InitializationError(role_ + " table '" + path_ + "' has no column '" + std::string(name) + "'");
        return c;
    }

    const std::string& cell(size_t row, int col) const { return rows_[row][size_t(col)]; }

    std::string where(size_t line) const { return role_ + " table '" + path_ + "' line " + std::to_string(line); }
    std::string where(size_t row, int col) const {
        return where(lines_[row]) + ", column '" + header_[size_t(col)] + "'";
    }

    double number(size_t row, int col) const {
        const std::string& s = cell(row, col);
        double v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec != std::errc() || p != s.data() + s.size() || s.empty()) {
            throw InitializationError(where(row, col) + ": '" + s + "' is not a number");
        }
        if (!std::isfinite(v)) throw InitializationError(where(row, col) + ": '" + s + "' is not finite");
        return v;
    }

    int64_t integer(size_t row, int col) const {
        const std::string& s = cell(row, col);
        int64_t v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec != std::errc() || p != s.data() + s.size() || s.empty()) {
            throw InitializationError(where(row, col) + ": '" + s + "' is not an integer");
        }
        return v;
    }

private:
    static std::string_view trim(std::string_view s) {
        while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
        while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
        return s;
    }

    // Fields are comma-separated; a field may be double-quoted (with "" for a quote) because
    // spreadsheet exports quote freely. Embedded newlines are not supported.
    static std::vector<std::string> split(std::string_view line) {
        std::vector<std::string> out;
        size_t i = 0;
        for (;;) {
            std::string field;
            while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
            if (i < line.size() && line[i] == '"') {
                ++i;
                while (i < line.size()) {
                    if (line[i] == '"') {
                        if (i + 1 < line.size() && line[i + 1] == '"') { field += '"'; i += 2; continue; }
                        ++i;
                        break;
                    }
                    field += line[i++];
                }
                while (i < line.size() && line[i] != ',') ++i;
            } else {
                size_t start = i;
                while (i < line.size() && line[i] != ',') ++i;
                field = std::string(trim(line.substr(start, i - start)));
            }
            out.push_back(std::move(field));
            if (i >= line.size()) break;
            ++i;  // the comma
        }
        return out;
    }

    std::string path_, role_;
    std::vector<std::string> header_;
    std::vector<std::vector<std::string>> rows_;
    std::vector<size_t> lines_;
};

}  // namespace livecalc::projection
