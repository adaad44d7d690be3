#include "common/yaml_tree.hpp"

#include <fmt/format.h>
#include <yaml.h>

namespace kmesh {

namespace {

class EventParser {
  public:
    explicit EventParser(const std::string& text) {
        yaml_parser_initialize(&parser_);
        yaml_parser_set_input_string(&parser_, reinterpret_cast<const unsigned char*>(text.data()),
                                     text.size());
    }
    ~EventParser() {
        if (has_event_) yaml_event_delete(&event_);
        yaml_parser_delete(&parser_);
    }

    bool next() {
        if (has_event_) yaml_event_delete(&event_);
        has_event_ = yaml_parser_parse(&parser_, &event_) == 1;
        if (!has_event_)
            error_ = fmt::format("line {}: {}", parser_.problem_mark.line + 1,
                                 parser_.problem ? parser_.problem : "YAML syntax error");
        return has_event_;
    }
    const yaml_event_t& event() const { return event_; }
    std::string& error() { return error_; }

    // Builds the node that starts at the current event.
    bool node(YamlNode* out, int depth) {
        if (depth > 64) return fail("nesting too deep");
        out->line = static_cast<int>(event_.start_mark.line) + 1;
        switch (event_.type) {
            case YAML_SCALAR_EVENT: {
                std::string value(reinterpret_cast<const char*>(event_.data.scalar.value),
                                  event_.data.scalar.length);
                bool plain = event_.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
                if (plain && (value.empty() || value == "~" || value == "null" || value == "Null" ||
                              value == "NULL")) {
                    out->kind = YamlNode::Kind::kNull;
                } else {
                    out->kind = YamlNode::Kind::kScalar;
                    out->scalar = std::move(value);
                }
                return true;
            }
            case YAML_SEQUENCE_START_EVENT:
                out->kind = YamlNode::Kind::kSequence;
                for (;;) {
                    if (!next()) return false;
                    if (event_.type == YAML_SEQUENCE_END_EVENT) return true;
                    out->items.emplace_back();
                    if (!node(&out->items.back(), depth + 1)) return false;
                }
            case YAML_MAPPING_START_EVENT:
                out->kind = YamlNode::Kind::kMapping;
                for (;;) {
                    if (!next()) return false;
                    if (event_.type == YAML_MAPPING_END_EVENT) return true;
                    out->entries.emplace_back();
                    if (!node(&out->entries.back().first, depth + 1) || !next() ||
                        !node(&out->entries.back().second, depth + 1))
                        return false;
                }
            case YAML_ALIAS_EVENT:
                return fail("anchors and aliases are not supported");
            default:
                return fail("unexpected YAML event");
        }
    }

    bool fail(const std::string& what) {
        error_ = fmt::format("line {}: {}", event_.start_mark.line + 1, what);
        return false;
    }

  private:
    yaml_parser_t parser_{};
    yaml_event_t event_{};
    bool has_event_ = false;
    std::string error_;
};

}  // namespace

bool parse_yaml(const std::string& text, YamlNode* root, std::string* error) {
    EventParser p(text);
    *root = YamlNode{};
    // STREAM-START, then DOCUMENT-START or STREAM-END (an empty stream is a null document).
    if (!p.next() || !p.next()) {
        *error = p.error();
        return false;
    }
    if (p.event().type == YAML_STREAM_END_EVENT) return true;
    if (!p.next() || !p.node(root, 0) || !p.next()) {  // the node, then DOCUMENT-END
        *error = p.error();
        return false;
    }
    if (!p.next()) {
        *error = p.error();
        return false;
    }
    if (p.event().type != YAML_STREAM_END_EVENT) {
        *error = fmt::format("line {}: only one YAML document is allowed", p.event().start_mark.line + 1);
        return false;
    }
    return true;
}

}  // namespace kmesh
