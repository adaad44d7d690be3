// Prometheus text exposition format 0.0.4: the few pieces telemetry writes with.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>

namespace kmesh::telemetry {

// A label value as the format wants it: backslash, double quote and newline escaped.
inline void append_label_value(std::string& out, std::string_view v) {
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
}

// `name="value"`, with a comma before it unless it is the first.
inline void append_label(std::string& out, std::string_view name, std::string_view value) {
    if (!out.empty()) out += ',';
    out += name;
    out += "=\"";
    append_label_value(out, value);
    out += '"';
}

inline void append_header(std::string& out, std::string_view name, std::string_view help,
                          std::string_view type) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

}  // namespace kmesh::telemetry
