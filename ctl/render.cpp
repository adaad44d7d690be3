#include "ctl/render.hpp"

#include <rapidjson/document.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cctype>

namespace kmesh::ctl {

std::optional<Output> parse_output(std::string_view s) {
    if (s == "table") return Output::kTable;
    if (s == "json") return Output::kJson;
    return std::nullopt;
}

namespace {

size_t width(std::string_view s) {  // code points: continuation bytes do not count
    return static_cast<size_t>(std::count_if(
        s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

std::string upper(std::string s) {
    for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
}

}  // namespace

std::string render_table(const Table& t) {
    size_t cols = t.headers.size();
    for (const auto& r : t.rows) cols = std::max(cols, r.size());
    std::vector<size_t> w(cols, 0);
    auto cell = [&](const std::vector<std::string>& row, size_t i) -> std::string {
        return i < row.size() ? row[i] : std::string();
    };
    std::vector<std::string> head;
    for (const auto& h : t.headers) head.push_back(upper(h));
    for (size_t i = 0; i < cols; i++) {
        w[i] = width(cell(head, i));
        for (const auto& r : t.rows) w[i] = std::max(w[i], width(cell(r, i)));
    }
    std::string out;
    auto line = [&](const std::vector<std::string>& row) {
        std::string l;
        for (size_t i = 0; i < cols; i++) {
            std::string c = cell(row, i);
            l += c;
            if (i + 1 < cols) l += std::string(w[i] - width(c) + 2, ' ');
        }
        while (!l.empty() && l.back() == ' ') l.pop_back();
        out += l + "\n";
    };
    if (!head.empty()) line(head);
    for (const auto& r : t.rows) line(r);
    return out;
}

std::string json_quote(std::string_view s) {
    rapidjson::StringBuffer b;
    rapidjson::Writer<rapidjson::StringBuffer> w(b);
    w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
    return std::string(b.GetString(), b.GetSize());
}

std::optional<std::string> json_pretty(std::string_view json) {
    rapidjson::Document d;
    d.Parse(json.data(), json.size());
    if (d.HasParseError()) return std::nullopt;
    rapidjson::StringBuffer b;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(b);
    w.SetIndent(' ', 2);
    d.Accept(w);
    return std::string(b.GetString(), b.GetSize()) + "\n";
}

}  // namespace kmesh::ctl
