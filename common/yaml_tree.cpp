#include "common/yaml_tree.hpp"

#include <fmt/format.h>
#include <rapidjson/error/en.h>
#include <rapidjson/reader.h>
#include <yaml.h>

#include <algorithm>
#include <cstring>
#include <optional>

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

bool stream_yaml(const std::string& text, YamlStreamHandler& h, std::string* error) {
    EventParser p(text);
    auto failed = [&] {
        *error = p.error();
        return false;
    };
    if (!p.next() || !p.next()) return failed();
    if (p.event().type == YAML_STREAM_END_EVENT) {
        h.root(YamlNode{});
        return true;
    }
    if (!p.next()) return failed();
    if (p.event().type != YAML_MAPPING_START_EVENT) {
        YamlNode root;
        if (!p.node(&root, 0)) return failed();
        h.root(root);
    } else {
        // Depths as parse_yaml counts them: the root 0, its keys and values 1, their items 2.
        YamlNode node;
        for (;;) {
            if (!p.next()) return failed();
            if (p.event().type == YAML_MAPPING_END_EVENT) break;
            node = YamlNode{};
            if (!p.node(&node, 1)) return failed();
            h.key(node);
            if (!p.next()) return failed();
            if (p.event().type != YAML_SEQUENCE_START_EVENT) {
                node = YamlNode{};
                if (!p.node(&node, 1)) return failed();
                h.value(node);
                continue;
            }
            h.sequence_start(static_cast<int>(p.event().start_mark.line) + 1);
            for (;;) {
                if (!p.next()) return failed();
                if (p.event().type == YAML_SEQUENCE_END_EVENT) break;
                node = YamlNode{};
                if (!p.node(&node, 2)) return failed();
                h.item(node);
            }
            h.sequence_end();
        }
        h.root_end();
    }
    if (!p.next() || !p.next()) return failed();  // DOCUMENT-END, then STREAM-END
    if (p.event().type != YAML_STREAM_END_EVENT) {
        *error = fmt::format("line {}: only one YAML document is allowed", p.event().start_mark.line + 1);
        return false;
    }
    return true;
}

namespace {

// Builds the tree from RapidJSON's SAX events. Each node's line is first its byte offset (the
// reader's position when the node ended); lines are filled in once, after parsing.
class JsonTreeBuilder {
  public:
    // depth: that of the root given (nonzero for a subtree of a streamed document), so that the
    // nesting limit counts from the document's root.
    JsonTreeBuilder(YamlNode* root, const rapidjson::StringStream* in, size_t depth = 0)
        : in_(in), depth_(depth) {
        stack_.push_back(root);
    }
    size_t open_count() const { return stack_.size() - 1; }  // containers open in this tree

    bool Null() { return leaf(YamlNode::Kind::kNull, {}); }
    bool Bool(bool b) { return leaf(YamlNode::Kind::kScalar, b ? "true" : "false"); }
    bool Int(int) { return false; }  // numbers arrive as text (kParseNumbersAsStringsFlag)
    bool Uint(unsigned) { return false; }
    bool Int64(int64_t) { return false; }
    bool Uint64(uint64_t) { return false; }
    bool Double(double) { return false; }
    bool RawNumber(const char* s, rapidjson::SizeType n, bool) {
        return leaf(YamlNode::Kind::kScalar, std::string_view(s, n));
    }
    bool String(const char* s, rapidjson::SizeType n, bool) {
        return leaf(YamlNode::Kind::kScalar, std::string_view(s, n));
    }
    bool StartObject() { return open(YamlNode::Kind::kMapping); }
    bool Key(const char* s, rapidjson::SizeType n, bool) {
        YamlNode* m = stack_.back();
        m->entries.emplace_back();
        YamlNode& k = m->entries.back().first;
        k.kind = YamlNode::Kind::kScalar;
        k.scalar.assign(s, n);
        k.line = static_cast<int>(in_->Tell());
        return true;
    }
    bool EndObject(rapidjson::SizeType) { return close(); }
    bool StartArray() { return open(YamlNode::Kind::kSequence); }
    bool EndArray(rapidjson::SizeType) { return close(); }

  private:
    // Where the next value goes: the root, a sequence's new item, or the value of the last key.
    YamlNode* slot() {
        YamlNode* top = stack_.back();
        if (stack_.size() == 1 && !started_) {
            started_ = true;
            return top;
        }
        if (top->kind == YamlNode::Kind::kSequence) return &top->items.emplace_back();
        return &top->entries.back().second;
    }
    bool leaf(YamlNode::Kind kind, std::string_view text) {
        YamlNode* n = slot();
        n->kind = kind;
        n->scalar.assign(text);
        n->line = static_cast<int>(in_->Tell());
        return true;
    }
    bool open(YamlNode::Kind kind) {
        if (stack_.size() + depth_ > 64) return false;  // as parse_yaml: nesting too deep
        YamlNode* n = slot();
        n->kind = kind;
        n->line = static_cast<int>(in_->Tell());
        stack_.push_back(n);
        return true;
    }
    bool close() {
        stack_.pop_back();
        return true;
    }

    const rapidjson::StringStream* in_;
    size_t depth_;
    std::vector<YamlNode*> stack_;
    bool started_ = false;
};

// Byte offsets to 1-based line numbers.
void offsets_to_lines(YamlNode* n, const std::vector<size_t>& newlines) {
    n->line =
        static_cast<int>(std::upper_bound(newlines.begin(), newlines.end(), static_cast<size_t>(n->line)) -
                         newlines.begin()) +
        1;
    for (auto& i : n->items) offsets_to_lines(&i, newlines);
    for (auto& e : n->entries) {
        offsets_to_lines(&e.first, newlines);
        offsets_to_lines(&e.second, newlines);
    }
}

// RapidJSON's events to a YamlStreamHandler: the root object's keys and its arrays' items go out
// one by one; every other value (and an item) is built by a JsonTreeBuilder of its own, handed over
// once it closes, with its offsets turned into lines.
class JsonStreamer {
  public:
    JsonStreamer(YamlStreamHandler& h, const rapidjson::StringStream* in, const std::vector<size_t>& newlines)
        : h_(h), in_(in), newlines_(newlines) {}

    bool Null() {
        return leaf([](JsonTreeBuilder& b) { return b.Null(); });
    }
    bool Bool(bool v) {
        return leaf([v](JsonTreeBuilder& b) { return b.Bool(v); });
    }
    bool Int(int) { return false; }  // numbers arrive as text (kParseNumbersAsStringsFlag)
    bool Uint(unsigned) { return false; }
    bool Int64(int64_t) { return false; }
    bool Uint64(uint64_t) { return false; }
    bool Double(double) { return false; }
    bool RawNumber(const char* s, rapidjson::SizeType n, bool c) {
        return leaf([&](JsonTreeBuilder& b) { return b.RawNumber(s, n, c); });
    }
    bool String(const char* s, rapidjson::SizeType n, bool c) {
        return leaf([&](JsonTreeBuilder& b) { return b.String(s, n, c); });
    }
    bool Key(const char* s, rapidjson::SizeType n, bool c) {
        if (sub_) return sub_->Key(s, n, c);
        YamlNode k;  // only in the root object: Key comes inside an object
        k.kind = YamlNode::Kind::kScalar;
        k.scalar.assign(s, n);
        k.line = line_of(in_->Tell());
        h_.key(k);
        return true;
    }
    bool StartObject() {
        if (sub_) return sub_->StartObject();
        if (level_ == kBeforeRoot) {
            level_ = kInRoot;
            return true;
        }
        begin();
        return sub_->StartObject();
    }
    bool EndObject(rapidjson::SizeType n) {
        if (sub_) {
            if (!sub_->EndObject(n)) return false;
            if (sub_->open_count() == 0) deliver();
            return true;
        }
        h_.root_end();  // only the root object ends outside a subtree
        level_ = kDone;
        return true;
    }
    bool StartArray() {
        if (sub_) return sub_->StartArray();
        if (level_ == kInRoot) {
            h_.sequence_start(line_of(in_->Tell()));
            level_ = kInArray;
            return true;
        }
        begin();
        return sub_->StartArray();
    }
    bool EndArray(rapidjson::SizeType n) {
        if (sub_) {
            if (!sub_->EndArray(n)) return false;
            if (sub_->open_count() == 0) deliver();
            return true;
        }
        h_.sequence_end();
        level_ = kInRoot;
        return true;
    }

  private:
    enum Level { kBeforeRoot, kInRoot, kInArray, kDone };

    int line_of(size_t offset) const {
        return static_cast<int>(std::upper_bound(newlines_.begin(), newlines_.end(), offset) -
                                newlines_.begin()) +
               1;
    }
    // A subtree starts: the root itself (not an object), a value of the root object, or an item.
    void begin() {
        node_ = YamlNode{};
        size_t depth = level_ == kBeforeRoot ? 0 : level_ == kInRoot ? 1 : 2;
        sub_.emplace(&node_, in_, depth);
    }
    template <typename Fn>
    bool leaf(Fn&& fn) {
        if (sub_) return fn(*sub_);
        begin();
        if (!fn(*sub_)) return false;
        deliver();
        return true;
    }
    void deliver() {
        sub_.reset();
        offsets_to_lines(&node_, newlines_);
        if (level_ == kBeforeRoot) {
            h_.root(node_);
            level_ = kDone;
        } else if (level_ == kInRoot) {
            h_.value(node_);
        } else {
            h_.item(node_);
        }
    }

    YamlStreamHandler& h_;
    const rapidjson::StringStream* in_;
    const std::vector<size_t>& newlines_;
    Level level_ = kBeforeRoot;
    std::optional<JsonTreeBuilder> sub_;
    YamlNode node_;
};

}  // namespace

bool looks_like_json(const std::string& text) {
    size_t i = text.find_first_not_of(" \t\r\n");
    return i != std::string::npos && text[i] == '{';
}

bool parse_json_tree(const std::string& text, YamlNode* root, std::string* error) {
    *root = YamlNode{};
    rapidjson::StringStream in(text.c_str());
    JsonTreeBuilder builder(root, &in);
    rapidjson::Reader reader;
    auto ok = reader.Parse<rapidjson::kParseNumbersAsStringsFlag | rapidjson::kParseStopWhenDoneFlag |
                           rapidjson::kParseValidateEncodingFlag>(in, builder);
    std::vector<size_t> newlines;
    for (size_t i = 0; i < text.size(); i++)
        if (text[i] == '\n') newlines.push_back(i);
    auto line_of = [&](size_t off) {
        return std::upper_bound(newlines.begin(), newlines.end(), off) - newlines.begin() + 1;
    };
    if (ok.IsError()) {
        *error = fmt::format("line {}: {}", line_of(ok.Offset()), rapidjson::GetParseError_En(ok.Code()));
        *root = YamlNode{};
        return false;
    }
    // Only blanks may follow the value (kParseStopWhenDoneFlag stops at its end), and a NUL inside
    // the text would have ended RapidJSON's input early.
    size_t end = in.Tell();
    if (text.find_first_not_of(" \t\r\n", end) != std::string::npos) {
        *error = fmt::format("line {}: text after the JSON value", line_of(end));
        *root = YamlNode{};
        return false;
    }
    offsets_to_lines(root, newlines);
    return true;
}

}  // namespace kmesh

namespace kmesh {

bool stream_json(const std::string& text, YamlStreamHandler& handler, std::string* error) {
    std::vector<size_t> newlines;
    for (const char* p = text.data();
         (p = static_cast<const char*>(std::memchr(p, '\n', text.data() + text.size() - p))); p++)
        newlines.push_back(static_cast<size_t>(p - text.data()));
    auto line_of = [&](size_t off) {
        return std::upper_bound(newlines.begin(), newlines.end(), off) - newlines.begin() + 1;
    };
    rapidjson::StringStream in(text.c_str());
    JsonStreamer streamer(handler, &in, newlines);
    rapidjson::Reader reader;
    auto ok = reader.Parse<rapidjson::kParseNumbersAsStringsFlag | rapidjson::kParseStopWhenDoneFlag |
                           rapidjson::kParseValidateEncodingFlag>(in, streamer);
    if (ok.IsError()) {
        *error = fmt::format("line {}: {}", line_of(ok.Offset()), rapidjson::GetParseError_En(ok.Code()));
        return false;
    }
    size_t end = in.Tell();
    if (text.find_first_not_of(" \t\r\n", end) != std::string::npos) {
        *error = fmt::format("line {}: text after the JSON value", line_of(end));
        return false;
    }
    return true;
}

}  // namespace kmesh
