// A YAML document as a plain tree, built by libyaml's event parser. yaml-cpp took 1.6 s and 200 MB
// for a 10k-service config; libyaml with this tree takes a small fraction of that.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kmesh {

struct YamlEntry;

class YamlNode {
  public:
    enum class Kind { kNull, kScalar, kSequence, kMapping };

    Kind kind = Kind::kNull;
    std::string scalar;
    int line = 0;                    // 1-based
    std::vector<YamlNode> items;     // kSequence
    std::vector<YamlEntry> entries;  // kMapping, in document order

    bool is_null() const { return kind == Kind::kNull; }
    bool is_scalar() const { return kind == Kind::kScalar; }
    bool is_sequence() const { return kind == Kind::kSequence; }
    bool is_mapping() const { return kind == Kind::kMapping; }
};

// A mapping entry. Not std::pair<YamlNode, YamlNode>: a pair needs YamlNode complete where the
// member is declared, which libstdc++ under clang enforces.
struct YamlEntry {
    YamlNode first, second;
};

// Parses one document. Returns false with *error ("line N: ...") on a syntax error or an
// unsupported feature (aliases, several documents).
bool parse_yaml(const std::string& text, YamlNode* root, std::string* error);

// JSON, which YAML 1.2 contains, into the same tree (RapidJSON's SAX reader):
// objects are mappings, arrays sequences, null is null, and strings, numbers (their text as written)
// and booleans ("true"/"false") are scalars, as libyaml would give them. Returns false with *error
// ("line N: ...") when the text is not one JSON value.
bool parse_json_tree(const std::string& text, YamlNode* root, std::string* error);

// A document streamed by its top level, so that a large config never exists as one tree: when the
// root is a mapping, each key arrives (key), then its value: a sequence arrives item by item, each
// item built as its own small tree, handed over, and dropped (sequence_start, item..., sequence_end);
// any other value arrives whole (value). A root that is not a mapping (or an empty document: a null
// root, line 0) arrives whole (root). Trees, lines and limits (nesting depth, aliases, one
// document) are exactly those parse_yaml / parse_json_tree give. After a syntax error the handler
// has seen a prefix of the document; the caller discards what it built.
class YamlStreamHandler {
  public:
    virtual ~YamlStreamHandler() = default;
    virtual void root(const YamlNode& root) = 0;
    virtual void key(const YamlNode& key) = 0;
    virtual void value(const YamlNode& value) = 0;
    virtual void sequence_start(int line) = 0;
    virtual void item(const YamlNode& item) = 0;
    virtual void sequence_end() = 0;
    virtual void root_end() = 0;  // the root mapping closed
};

bool stream_yaml(const std::string& text, YamlStreamHandler& handler, std::string* error);
bool stream_json(const std::string& text, YamlStreamHandler& handler, std::string* error);

// Whether the text looks like JSON (its first non-blank character opens an object): the caller
// then tries parse_json_tree first and falls back to parse_yaml, so a YAML flow mapping that is not
// JSON still parses as before.
bool looks_like_json(const std::string& text);

}  // namespace kmesh
