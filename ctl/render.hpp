// Output of kmeshctl: aligned tables for people, JSON for scripts (-o json|table).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kmesh::ctl {

enum class Output { kTable, kJson };
// "table" or "json"; nullopt for anything else.
std::optional<Output> parse_output(std::string_view s);

struct Table {
    std::vector<std::string> headers;  // printed upper-case
    std::vector<std::vector<std::string>> rows;
};
// Columns separated by two spaces, each padded to its widest cell (counted in UTF-8 code points);
// the last column is not padded, so lines carry no trailing blanks. A row shorter than the header
// leaves its missing cells empty.
std::string render_table(const Table& t);

// A JSON string literal of s (quotes and escapes included).
std::string json_quote(std::string_view s);
// The JSON document `json` indented (2 spaces) with a trailing newline, or nullopt when it is not
// JSON.
std::optional<std::string> json_pretty(std::string_view json);

}  // namespace kmesh::ctl
