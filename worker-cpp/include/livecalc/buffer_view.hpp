// Typed, zero-copy access to the columns of an input or output view.
//
// A view starts with a directory (docs/bus.md): magic "LCVIEW01", layout version, column count,
// the chunk's index and row range, the view size, then one 128-byte entry per column
// (name, dtype, shape, offset). Column data lives further in the same view, 64-byte aligned;
// BufferView hands out std::span over it without copying.
//
//   livecalc::BufferView in(input_buffer, input_size);
//   auto age = in.column<int32_t>("policies.age");          // std::span<const int32_t>
//   livecalc::MutableBufferView out(output_buffer, output_size);
//   auto premium = out.column<double>("priced.premium");     // std::span<double>
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "livecalc/engine_interface.hpp"

namespace livecalc {

enum class DType : uint32_t { Float64 = 1, Float32 = 2, Int64 = 3, Int32 = 4, Uint8 = 5 };

template <typename T> struct dtype_of;
template <> struct dtype_of<double> { static constexpr DType value = DType::Float64; };
template <> struct dtype_of<float> { static constexpr DType value = DType::Float32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::Int64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::Int32; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::Uint8; };

inline const char* dtype_name(DType d) {
    switch (d) {
        case DType::Float64: return "float64";
        case DType::Float32: return "float32";
        case DType::Int64: return "int64";
        case DType::Int32: return "int32";
        case DType::Uint8: return "uint8";
    }
    return "unknown";
}

struct ColumnInfo {
    std::string name;
    DType dtype;
    uint32_t ndim;
    uint64_t rows;   // shape[0]
    uint64_t width;  // shape[1], 1 for a 1-D column
    uint64_t offset;
    uint64_t nbytes;
};

namespace detail {
inline uint32_t rd32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t rd64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }

template <typename Byte>
class ViewBase {
public:
    ViewBase(Byte* data, size_t size) : data_(data), size_(size) {
        if (data == nullptr || size < 64 || std::memcmp(data, "LCVIEW01", 8) != 0) {
            throw ExecutionError("buffer is not a livecalc view (bad magic)");
        }
        if (rd32(data + 8) != 1) throw ExecutionError("unsupported view layout version");
        uint32_t n = rd32(data + 12);
        if (64 + size_t(n) * 128 > size) throw ExecutionError("view directory is truncated");
        chunk_index_ = rd64(data + 16);
        row_start_ = rd64(data + 24);
        row_count_ = rd64(data + 32);
        total_rows_ = rd64(data + 40);
        columns_.reserve(n);
        for (uint32_t i = 0; i < n; ++i) {
            const uint8_t* e = data + 64 + size_t(i) * 128;
            ColumnInfo c;
            c.name.assign(reinterpret_cast<const char*>(e), strnlen(reinterpret_cast<const char*>(e), 64));
            c.dtype = static_cast<DType>(rd32(e + 64));
            c.ndim = rd32(e + 68);
            c.rows = rd64(e + 72);
            c.width = c.ndim == 2 ? rd64(e + 80) : 1;
            c.offset = rd64(e + 88);
            c.nbytes = rd64(e + 96);
            if (c.offset + c.nbytes > size) throw ExecutionError("column '" + c.name + "' lies outside the view");
            columns_.push_back(std::move(c));
        }
    }

    uint64_t chunk_index() const { return chunk_index_; }
    uint64_t row_start() const { return row_start_; }
    uint64_t row_count() const { return row_count_; }
    uint64_t total_rows() const { return total_rows_; }
    const std::vector<ColumnInfo>& columns() const { return columns_; }

    const ColumnInfo* find(std::string_view name) const {
        for (const auto& c : columns_) if (c.name == name) return &c;
        return nullptr;
    }
    bool has(std::string_view name) const { return find(name) != nullptr; }

    const ColumnInfo& info(std::string_view name) const {
        const ColumnInfo* c = find(name);
        if (!c) throw ExecutionError("view has no column '" + std::string(name) + "'");
        return *c;
    }

protected:
    template <typename T, typename Out>
    std::span<Out> typed(std::string_view name) const {
        const ColumnInfo& c = info(name);
        if (c.dtype != dtype_of<T>::value) {
            throw ExecutionError("column '" + c.name + "' is " + dtype_name(c.dtype) +
                                 ", not " + dtype_name(dtype_of<T>::value));
        }
        return std::span<Out>(reinterpret_cast<Out*>(data_ + c.offset), c.nbytes / sizeof(T));
    }

    Byte* data_;
    size_t size_;

private:
    uint64_t chunk_index_ = 0, row_start_ = 0, row_count_ = 0, total_rows_ = 0;
    std::vector<ColumnInfo> columns_;
};
}  // namespace detail

// Read-only view over an input buffer.
class BufferView : public detail::ViewBase<const uint8_t> {
public:
    using ViewBase::ViewBase;
    // All elements of a column, row-major (rows x width for a 2-D column).
    template <typename T> std::span<const T> column(std::string_view name) const {
        return typed<T, const T>(name);
    }
};

// Writable view over an output buffer.
class MutableBufferView : public detail::ViewBase<uint8_t> {
public:
    using ViewBase::ViewBase;
    template <typename T> std::span<T> column(std::string_view name) const {
        return typed<T, T>(name);
    }
};

}  // namespace livecalc
