// A small status type: every error carries its category (what a caller branches on) and a message
// for people (what a log line or a NACK shows). New code returns Status / Result<T> instead of
// bare strings or ad hoc bools.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace kmesh {

enum class Errc {
    kOk = 0,
    kInvalidArgument,    // bad input (config, flag, object); retrying does not help
    kNotFound,           // what was asked for does not exist (file, object, cgroup)
    kAlreadyExists,      // create of something that is there
    kPermissionDenied,   // authenticated but not allowed (HTTP 403, EPERM/EACCES)
    kUnauthenticated,    // credentials missing or refused (HTTP 401)
    kUnavailable,        // transient: peer down, connection dropped, try again later
    kTimeout,            // a deadline passed
    kGone,               // a resumable position expired (HTTP 410: relist)
    kConflict,           // concurrent change (HTTP 409)
    kResourceExhausted,  // a map, a limit or the disk is full
    kDataLoss,           // input that cannot be decoded (JSON, YAML, protobuf)
    kIo,                 // a local system call failed
    kInternal,           // a bug: an invariant does not hold
};

std::string_view errc_name(Errc code);

class [[nodiscard]] Status {
  public:
    Status() = default;
    Status(Errc code, std::string message) : code_(code), message_(std::move(message)) {}
    static Status ok() { return {}; }

    bool is_ok() const { return code_ == Errc::kOk; }
    explicit operator bool() const { return is_ok(); }
    Errc code() const { return code_; }
    const std::string& message() const { return message_; }
    // "<category>: <message>", for logs.
    std::string to_string() const { return std::string(errc_name(code_)) + ": " + message_; }

  private:
    Errc code_ = Errc::kOk;
    std::string message_;
};

// A value or the Status that explains why there is none.
template <class T>
class [[nodiscard]] Result {
  public:
    Result(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
    Result(Status status) : v_(std::move(status)) {}  // NOLINT
    Result(Errc code, std::string message) : v_(Status(code, std::move(message))) {}

    bool is_ok() const { return std::holds_alternative<T>(v_); }
    explicit operator bool() const { return is_ok(); }
    T& value() & { return std::get<T>(v_); }
    const T& value() const& { return std::get<T>(v_); }
    T&& value() && { return std::get<T>(std::move(v_)); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    // Ok when there is a value.
    Status status() const { return is_ok() ? Status::ok() : std::get<Status>(v_); }

  private:
    std::variant<T, Status> v_;
};

inline std::string_view errc_name(Errc code) {
    switch (code) {
        case Errc::kOk:
            return "ok";
        case Errc::kInvalidArgument:
            return "invalid argument";
        case Errc::kNotFound:
            return "not found";
        case Errc::kAlreadyExists:
            return "already exists";
        case Errc::kPermissionDenied:
            return "permission denied";
        case Errc::kUnauthenticated:
            return "unauthenticated";
        case Errc::kUnavailable:
            return "unavailable";
        case Errc::kTimeout:
            return "timeout";
        case Errc::kGone:
            return "gone";
        case Errc::kConflict:
            return "conflict";
        case Errc::kResourceExhausted:
            return "resource exhausted";
        case Errc::kDataLoss:
            return "undecodable";
        case Errc::kIo:
            return "i/o error";
        case Errc::kInternal:
            return "internal error";
    }
    return "unknown";
}

}  // namespace kmesh
